//! The storage routes `@supabase/storage-js` calls for `createSignedUrl(s)`, and following a signed link.

use std::time::Duration;

use gen_pipeline::storage_links::{self, Bucket, LinkError, Signing};
use gen_pipeline::{AppState, Settings};
use lambda_http::http::StatusCode;
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::errors::ApiError;
use crate::http::{caller, cors, error_response, settings};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignOne {
    expires_in: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignMany {
    expires_in: f64,
    paths: Vec<String>,
}

/// Most paths one `createSignedUrls` call signs: each is an HMAC and an entry of the answer, which Lambda caps at
/// 6 MB.
const MAX_PATHS: usize = 1000;

/// The body, within the functions' `MAX_BODY_BYTES` like every other route's.
fn body_of<T: serde::de::DeserializeOwned>(state: &AppState, req: &Request) -> Result<T, ApiError> {
    let body: &[u8] = req.body().as_ref();
    if body.len() > state.config.max_body_bytes {
        let message = format!("The body exceeds {} bytes", state.config.max_body_bytes);
        return Err(ApiError::storage(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload too large",
            &message,
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::storage(StatusCode::BAD_REQUEST, "InvalidRequest", &e.to_string()))
}

fn bucket(name: &str) -> Result<Bucket, ApiError> {
    Bucket::parse(name).ok_or_else(|| ApiError::from(LinkError::UnknownBucket))
}

/// Whole seconds, as storage-js sends them (`expiresIn`); anything else cannot be a lifetime.
fn lifetime(seconds: f64) -> Result<Duration, ApiError> {
    if seconds.is_finite() && seconds >= 1.0 && seconds.fract() == 0.0 {
        Ok(Duration::from_secs(seconds as u64))
    } else {
        Err(ApiError::from(LinkError::BadExpiry))
    }
}

/// The caller's signing of `bucket` for `expires_in` seconds. A lifetime past the bound or no signing key refuses
/// the whole call, before any path is looked at.
fn signing<'a>(
    state: &'a AppState,
    settings: &'a Settings,
    user_id: Uuid,
    bucket: Bucket,
    expires_in: f64,
) -> Result<Signing<'a>, ApiError> {
    let ttl = lifetime(expires_in)?;
    storage_links::check_signing(settings, ttl)?;
    Ok(Signing {
        state,
        settings,
        user_id,
        bucket,
        ttl,
    })
}

/// `createSignedUrl`: `{signedURL}` for one of the caller's own paths.
pub async fn sign_one(
    state: &AppState,
    req: &Request,
    bucket_name: &str,
    path: &str,
) -> Result<Value, ApiError> {
    let settings = settings(state).await?;
    let user = caller(state, req, &settings).await?;
    let bucket = bucket(bucket_name)?;
    let body = body_of::<SignOne>(state, req)?;
    let signing = signing(state, &settings, user, bucket, body.expires_in)?;
    let signed = signing.present(path).await?;
    Ok(json!({ "signedURL": signed }))
}

/// `createSignedUrls`: `[{path, signedURL, error}]`, a path the caller may not sign getting its `error`.
pub async fn sign_many(
    state: &AppState,
    req: &Request,
    bucket_name: &str,
) -> Result<Value, ApiError> {
    let settings = settings(state).await?;
    let user = caller(state, req, &settings).await?;
    let bucket = bucket(bucket_name)?;
    let body = body_of::<SignMany>(state, req)?;
    if body.paths.len() > MAX_PATHS {
        let message = format!("At most {MAX_PATHS} paths are signed at once");
        return Err(ApiError::storage(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            &message,
        ));
    }
    let signing = signing(state, &settings, user, bucket, body.expires_in)?;
    let signed = signing.many(&body.paths).await;
    // Faults of ours fail the whole call; a path's own reason goes in its entry.
    for fault in [LinkError::NotConfigured, LinkError::StorageUnavailable] {
        if signed.iter().any(|(_, r)| r.as_ref().err() == Some(&fault)) {
            return Err(ApiError::from(fault));
        }
    }
    Ok(Value::Array(
        signed
            .into_iter()
            .map(|(path, result)| match result {
                Ok(url) => json!({ "path": path, "signedURL": url, "error": null }),
                // Supabase's one wording for a path that is missing or not the caller's.
                Err(LinkError::NotFound) => {
                    let error = LinkError::NotYours.to_string();
                    json!({ "path": path, "signedURL": null, "error": error })
                }
                Err(e) => json!({ "path": path, "signedURL": null, "error": e.to_string() }),
            })
            .collect(),
    ))
}

/// A signed link followed: 302 to an S3 presigned GET of a few minutes, or Supabase's error.
pub async fn follow(
    state: &AppState,
    req: &Request,
    bucket_name: &str,
    path: &str,
) -> Result<Response<Body>, Error> {
    let query = req
        .query_string_parameters_ref()
        .cloned()
        .unwrap_or_default();
    let redirect = async {
        let settings = settings(state).await?;
        let bucket = bucket(bucket_name)?;
        let token = query.first("token").ok_or_else(|| {
            ApiError::storage(StatusCode::BAD_REQUEST, "InvalidJWT", "Missing token")
        })?;
        let download = query.first("download");
        storage_links::redirect(state, &settings, bucket, path, token, download)
            .await?
            .map_err(|e| {
                tracing::error!(error = %e, "presigning a followed link failed");
                ApiError::storage(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "Temporarily unavailable",
                )
            })
    };
    match redirect.await {
        Ok(location) => Ok(cors(Response::builder().status(StatusCode::FOUND))
            .header("location", location)
            // The target expires within minutes: a cached redirect must not outlive it.
            .header("cache-control", "private, max-age=60")
            .body(Body::Empty)?),
        Err(e) => {
            let e = e.into_storage();
            tracing::info!(status = e.status.as_u16(), error = %e.body["error"], "signed link refused");
            error_response(e)
        }
    }
}
