//! HTTP glue of fal-image: routes, CORS, body checks, the caller's identity, then one use case per route.

use std::sync::Arc;
use std::time::Duration;

use gen_pipeline::after_response::Background;
use gen_pipeline::input::GenerationRequest;
use gen_pipeline::submission::{self, CancelResult, Submitted};
use gen_pipeline::{AppState, Settings, auth};
use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use percent_encoding::percent_decode_str;
use url::Url;

use crate::errors::ApiError;
use crate::storage;

enum Route {
    Preflight,
    Health,
    Submit,
    Status(Uuid),
    Cancel(Uuid),
    /// `POST /storage/v1/object/sign/{bucket}/{path}` (`createSignedUrl`).
    SignOne {
        bucket: String,
        path: String,
    },
    /// `POST /storage/v1/object/sign/{bucket}` (`createSignedUrls`).
    SignMany {
        bucket: String,
    },
    /// `GET /storage/v1/object/sign/{bucket}/{path}?token=…` (a signed link followed; no `Authorization`).
    Follow {
        bucket: String,
        path: String,
    },
    NotFound,
    MethodNotAllowed,
}

/// The route of a request. `/functions/v1/fal-image` is `/fal-image` as `functions.invoke` calls it; storage paths
/// are percent-decoded segment by segment.
fn route(method: &Method, path: &str) -> Route {
    if method == Method::OPTIONS {
        return Route::Preflight;
    }
    let mut segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // A trailing slash is dropped from the functions' own routes (`/fal-image/`), not from a storage path, where it
    // is part of the key asked for: `<key>/` is not `<key>`.
    if segments.len() > 1 && segments.last() == Some(&"") && segments.first() != Some(&"storage") {
        segments.pop();
    }
    let job = |s: &str| Uuid::parse_str(s).ok();
    match (method, segments.as_slice()) {
        (&Method::GET, ["health"]) => Route::Health,
        (&Method::POST, ["fal-image"] | ["functions", "v1", "fal-image"]) => Route::Submit,
        (_, ["fal-image"] | ["functions", "v1", "fal-image"]) => Route::MethodNotAllowed,
        (&Method::GET, ["jobs", id]) => job(id).map_or(Route::NotFound, Route::Status),
        (&Method::POST, ["jobs", id, "cancel"]) => job(id).map_or(Route::NotFound, Route::Cancel),
        (_, ["storage", "v1", "object", "sign", bucket, rest @ ..]) => {
            storage_route(method, bucket, rest)
        }
        _ => Route::NotFound,
    }
}

fn storage_route(method: &Method, bucket: &str, rest: &[&str]) -> Route {
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .ok()
    };
    let Some(bucket) = decode(bucket) else {
        return Route::NotFound;
    };
    let path = rest
        .iter()
        .map(|s| decode(s))
        .collect::<Option<Vec<String>>>()
        .map(|p| p.join("/"));
    match (method, path) {
        (_, None) => Route::NotFound,
        (&Method::POST, Some(p)) if p.is_empty() => Route::SignMany { bucket },
        (&Method::POST, Some(path)) => Route::SignOne { bucket, path },
        (&Method::GET, Some(path)) if !path.is_empty() => Route::Follow { bucket, path },
        _ => Route::MethodNotAllowed,
    }
}

pub async fn handle(
    state: Arc<AppState>,
    req: Request,
    background: Background,
) -> Result<Response<Body>, Error> {
    let result = match route(req.method(), req.uri().path()) {
        Route::Preflight => {
            return Ok(cors(Response::builder().status(StatusCode::OK)).body(Body::from("ok"))?);
        }
        Route::Health => Ok(json!({ "ok": true })),
        Route::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "Not found")),
        Route::MethodNotAllowed => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
        )),
        Route::Submit => submit(&state, &req, background).await,
        Route::Status(id) => status(&state, &req, id).await,
        Route::Cancel(id) => cancel(&state, &req, id).await,
        Route::SignOne { bucket, path } => storage::sign_one(&state, &req, &bucket, &path).await,
        Route::SignMany { bucket } => storage::sign_many(&state, &req, &bucket).await,
        Route::Follow { bucket, path } => {
            return storage::follow(&state, &req, &bucket, &path).await;
        }
    };
    // storage-js reads Supabase Storage's error shape on every answer of its routes.
    let storage_route = req
        .uri()
        .path()
        .trim_start_matches('/')
        .starts_with("storage/v1/");
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => {
            let e = if storage_route { e.into_storage() } else { e };
            if e.status.is_server_error() {
                tracing::error!(status = e.status.as_u16(), error = %e.body["error"], cause = e.cause.as_deref(), "request failed");
            } else {
                tracing::info!(status = e.status.as_u16(), error = %e.body["error"], "request refused");
            }
            error_response(e)
        }
    }
}

pub(crate) fn error_response(e: ApiError) -> Result<Response<Body>, Error> {
    let mut response = json_response(e.status, &e.body)?;
    if let Some(secs) = e.retry_after {
        response
            .headers_mut()
            .insert("retry-after", lambda_http::http::HeaderValue::from(secs));
    }
    Ok(response)
}

pub(crate) async fn settings(state: &AppState) -> Result<Settings, ApiError> {
    state.settings().await.map_err(|e| {
        tracing::error!(error = %e, "settings unavailable");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Temporarily unavailable")
    })
}

/// The caller: claims of an API Gateway JWT authorizer when present, else the bearer token verified here.
pub(crate) async fn caller(
    state: &AppState,
    req: &Request,
    settings: &Settings,
) -> Result<Uuid, ApiError> {
    if let RequestContext::ApiGatewayV2(ctx) = req.request_context()
        && let Some(jwt) = ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref())
    {
        // The authorizer checked the signature, issuer and audience; the role is ours to check, as below.
        let claim = |name: &str| jwt.claims.get(name).map(String::as_str);
        if claim("role") != Some(auth::AUTHENTICATED) {
            return Err(auth::AuthError::Invalid.into());
        }
        return Ok(auth::user_id(
            claim("sub").ok_or(auth::AuthError::Invalid)?,
        )?);
    }
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let legacy = settings.secrets.jwt_secret.as_ref();
    Ok(state.user_tokens.verify(header, legacy).await?)
}

/// The API's public base URL: `PUBLIC_API_URL` (the template always sets it), else the one this request came in at
/// (API Gateway's domain and stage, or `cargo lambda watch`'s address).
pub(crate) fn api_base(req: &Request, settings: &Settings) -> Option<Url> {
    if let Some(url) = &settings.config.public_api_url {
        return Some(url.clone());
    }
    let RequestContext::ApiGatewayV2(ctx) = req.request_context() else {
        return None;
    };
    let domain = ctx.domain_name.as_deref()?;
    let stage = ctx.stage.as_deref().filter(|s| *s != "$default");
    let base = match stage {
        Some(stage) => format!("https://{domain}/{stage}"),
        None => format!("https://{domain}"),
    };
    Url::parse(&base).ok()
}

/// Size, type and syntax of the body, before anything else.
fn parse_body(state: &AppState, req: &Request) -> Result<GenerationRequest, ApiError> {
    let body: &[u8] = req.body().as_ref();
    if body.len() > state.config.max_body_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
        ));
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if content_type != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::with_details(StatusCode::BAD_REQUEST, "Invalid JSON body", e.to_string())
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Request body must be a JSON object",
        ));
    }
    // Postgres cannot store U+0000; such a request can never succeed, so it is the caller's error.
    if gen_pipeline::json::has_nul(&value) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Request contains NUL characters",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::with_details(
            StatusCode::BAD_REQUEST,
            "Invalid request body",
            e.to_string(),
        )
    })
}

async fn submit(
    state: &Arc<AppState>,
    req: &Request,
    background: Background,
) -> Result<Value, ApiError> {
    // The caller first: a request without a valid token is 401 whatever its body.
    let settings = settings(state).await?;
    let user = caller(state, req, &settings).await?;
    let body = parse_body(state, req)?;
    let base = api_base(req, &settings);
    let deadline = req
        .lambda_context_ref()
        .and_then(|c| gen_pipeline::deadline::of_invocation(c.deadline, Duration::ZERO));
    let result =
        submission::submit_generation(state, &settings, user, body, base.as_ref(), deadline)
            .await?;
    if let Some(job_id) = result.post_process {
        let state = state.clone();
        let settings = with_api_base(settings, base);
        background.defer(Box::pin(async move {
            gen_pipeline::postprocess::run(&state, &settings, job_id).await;
        }));
    }
    Ok(match result.answer {
        Submitted::Queued { job_id, request_id } => json!({
            "jobId": job_id,
            "requestId": request_id,
            "status": "queued",
            "message": "Generation queued — results delivered via webhook",
        }),
        Submitted::Completed {
            job_id,
            asset_id,
            result_url,
            result_type,
            original_url,
        } => json!({
            "jobId": job_id,
            "status": "completed",
            "resultUrl": result_url,
            "resultType": result_type,
            "assetId": asset_id,
            "originalUrl": original_url,
        }),
    })
}

async fn status(state: &AppState, req: &Request, job_id: Uuid) -> Result<Value, ApiError> {
    let settings = settings(state).await?;
    let user = caller(state, req, &settings).await?;
    let base = api_base(req, &settings);
    let view = submission::job_status(state, &settings, user, job_id, base.as_ref())
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Job not found"))?;
    let job = &view.job;
    let result = view.asset.as_ref().map(|(a, url)| {
        json!({
            "assetId": a.id,
            "assetType": a.asset_type,
            "storagePath": a.temp_storage_path,
            "thumbnailPath": a.thumbnail_path,
            "mimeType": a.mime_type,
            "url": url,
        })
    });
    Ok(json!({
        "jobId": job.id,
        "status": job.status.as_str(),
        "errorMessage": job.error_message,
        "createdAt": job.created_at,
        "startedAt": job.started_at,
        "completedAt": job.completed_at,
        "result": result,
    }))
}

async fn cancel(state: &AppState, req: &Request, job_id: Uuid) -> Result<Value, ApiError> {
    let settings = settings(state).await?;
    let user = caller(state, req, &settings).await?;
    match submission::cancel_job(state, &settings, user, job_id).await? {
        CancelResult::Cancelled => Ok(json!({ "jobId": job_id, "status": "cancelled" })),
        CancelResult::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "Job not found")),
        CancelResult::AlreadyTerminal(s) => Err(ApiError {
            status: StatusCode::CONFLICT,
            body: json!({ "error": format!("Job already {s}"), "jobId": job_id, "status": s.as_str() }),
            retry_after: None,
            cause: None,
        }),
    }
}

/// Post-processing after the answer writes links too (storyboard clips): it gets the base this request knew.
fn with_api_base(settings: Settings, base: Option<Url>) -> Settings {
    if settings.config.public_api_url.is_some() || base.is_none() {
        return settings;
    }
    let mut config = (*settings.config).clone();
    config.public_api_url = base;
    Settings {
        config: Arc::new(config),
        ..settings
    }
}

/// CORS as the original's functions answered, with what supabase-js sends (`x-client-info`, `apikey`, `x-region`).
pub(crate) fn cors(
    builder: lambda_http::http::response::Builder,
) -> lambda_http::http::response::Builder {
    builder
        .header("access-control-allow-origin", "*")
        .header(
            "access-control-allow-headers",
            "authorization, x-client-info, apikey, content-type, x-region",
        )
        .header("access-control-allow-methods", "GET, POST, OPTIONS")
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Result<Response<Body>, Error> {
    Ok(cors(Response::builder().status(status))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supabase_client_routes() {
        assert!(matches!(
            route(&Method::POST, "/functions/v1/fal-image"),
            Route::Submit
        ));
        assert!(matches!(
            route(&Method::GET, "/functions/v1/fal-image"),
            Route::MethodNotAllowed
        ));
        let u = Uuid::new_v4();
        assert!(matches!(
            route(&Method::POST, &format!("/storage/v1/object/sign/workspace-temp/{u}/a%20b.png")),
            Route::SignOne { bucket, path } if bucket == "workspace-temp" && path == format!("{u}/a b.png")
        ));
        assert!(matches!(
            route(&Method::POST, "/storage/v1/object/sign/user-library"),
            Route::SignMany { bucket } if bucket == "user-library"
        ));
        assert!(matches!(
            route(&Method::GET, &format!("/storage/v1/object/sign/user-library/{u}/x.mp4")),
            Route::Follow { path, .. } if path == format!("{u}/x.mp4")
        ));
        assert!(matches!(
            route(&Method::GET, "/storage/v1/object/sign/user-library"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(
            route(&Method::GET, "/storage/v1/object/sign/b/%FF"),
            Route::NotFound
        ));
        // A trailing slash names another key (which no owner check lets through: its last segment is empty).
        assert!(matches!(
            route(&Method::POST, &format!("/storage/v1/object/sign/workspace-temp/{u}/a.png/")),
            Route::SignOne { path, .. } if path == format!("{u}/a.png/")
        ));
        assert!(matches!(
            route(&Method::POST, "/storage/v1/object/sign/user-library/"),
            Route::SignMany { bucket } if bucket == "user-library"
        ));
        assert!(matches!(
            route(&Method::POST, "/functions/v1/fal-image/"),
            Route::Submit
        ));
    }

    #[test]
    fn routes_of_the_contract() {
        let id = Uuid::new_v4();
        assert!(matches!(route(&Method::POST, "/fal-image"), Route::Submit));
        assert!(matches!(
            route(&Method::GET, "/fal-image"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(route(&Method::GET, &format!("/jobs/{id}")), Route::Status(j) if j == id));
        assert!(
            matches!(route(&Method::POST, &format!("/jobs/{id}/cancel")), Route::Cancel(j) if j == id)
        );
        assert!(matches!(
            route(&Method::GET, "/jobs/not-a-uuid"),
            Route::NotFound
        ));
        assert!(matches!(
            route(&Method::OPTIONS, "/anything"),
            Route::Preflight
        ));
        assert!(matches!(route(&Method::GET, "/health"), Route::Health));
        assert!(matches!(
            route(&Method::DELETE, &format!("/jobs/{id}")),
            Route::NotFound
        ));
    }
}
