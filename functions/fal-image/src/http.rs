//! HTTP glue of fal-image: routes, CORS, body checks, the caller's identity, then one use case per route.

use std::sync::Arc;

use gen_pipeline::after_response::Ticket;
use gen_pipeline::input::GenerationRequest;
use gen_pipeline::submission::{self, CancelResult, Submitted};
use gen_pipeline::{AppState, Settings, auth};
use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::errors::ApiError;

enum Route {
    Preflight,
    Health,
    Submit,
    Status(Uuid),
    Cancel(Uuid),
    NotFound,
    MethodNotAllowed,
}

fn route(method: &Method, path: &str) -> Route {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == Method::OPTIONS {
        return Route::Preflight;
    }
    let job = |s: &str| Uuid::parse_str(s).ok();
    match (method, segments.as_slice()) {
        (&Method::GET, ["health"]) => Route::Health,
        (&Method::POST, ["fal-image"]) => Route::Submit,
        (_, ["fal-image"]) => Route::MethodNotAllowed,
        (&Method::GET, ["jobs", id]) => job(id).map_or(Route::NotFound, Route::Status),
        (&Method::POST, ["jobs", id, "cancel"]) => job(id).map_or(Route::NotFound, Route::Cancel),
        _ => Route::NotFound,
    }
}

pub async fn handle(
    state: Arc<AppState>,
    req: Request,
    ticket: Ticket,
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
        Route::Submit => submit(&state, &req, ticket).await,
        Route::Status(id) => status(&state, &req, id).await,
        Route::Cancel(id) => cancel(&state, &req, id).await,
    };
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(status = e.status.as_u16(), error = %e.body["error"], "request failed");
            } else {
                tracing::info!(status = e.status.as_u16(), error = %e.body["error"], "request refused");
            }
            let mut response = json_response(e.status, &e.body)?;
            if let Some(secs) = e.retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", lambda_http::http::HeaderValue::from(secs));
            }
            Ok(response)
        }
    }
}

async fn settings(state: &AppState) -> Result<Settings, ApiError> {
    state.settings().await.map_err(|e| {
        tracing::error!(error = %e, "settings unavailable");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Temporarily unavailable")
    })
}

/// The caller: claims of an API Gateway JWT authorizer when present, else the bearer token verified here.
fn caller(req: &Request, settings: &Settings) -> Result<Uuid, ApiError> {
    if let RequestContext::ApiGatewayV2(ctx) = req.request_context()
        && let Some(sub) = ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .and_then(|jwt| jwt.claims.get("sub"))
    {
        return Ok(auth::user_id(sub)?);
    }
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    Ok(auth::user_from_bearer(
        header,
        &settings.secrets.jwt_secret,
    )?)
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

async fn submit(state: &Arc<AppState>, req: &Request, ticket: Ticket) -> Result<Value, ApiError> {
    let body = parse_body(state, req)?;
    let settings = settings(state).await?;
    let user = caller(req, &settings)?;
    let result = submission::submit_generation(state, &settings, user, body).await?;
    if let Some(job_id) = result.post_process {
        let state = state.clone();
        ticket.finish(Some(Box::pin(async move {
            gen_pipeline::postprocess::run(&state, &settings, job_id).await;
        })));
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
    let user = caller(req, &settings)?;
    let view = submission::job_status(state, &settings, user, job_id)
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
    let user = caller(req, &settings)?;
    match submission::cancel_job(state, &settings, user, job_id).await? {
        CancelResult::Cancelled => Ok(json!({ "jobId": job_id, "status": "cancelled" })),
        CancelResult::NotFound => Err(ApiError::new(StatusCode::NOT_FOUND, "Job not found")),
        CancelResult::AlreadyTerminal(s) => Err(ApiError {
            status: StatusCode::CONFLICT,
            body: json!({ "error": format!("Job already {s}"), "jobId": job_id, "status": s.as_str() }),
            retry_after: None,
        }),
    }
}

fn cors(builder: lambda_http::http::response::Builder) -> lambda_http::http::response::Builder {
    builder.header("access-control-allow-origin", "*").header(
        "access-control-allow-headers",
        "authorization, x-client-info, apikey, content-type",
    )
}

fn json_response(status: StatusCode, body: &Value) -> Result<Response<Body>, Error> {
    Ok(cors(Response::builder().status(status))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

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
