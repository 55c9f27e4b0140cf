//! HTTP glue of fal-webhook: size limit, authentication (secret + fal signature), then `complete_from_webhook`.
//! The URL's query string carries the secret: nothing here logs the URL.

use std::sync::Arc;

use gen_pipeline::AppState;
use gen_pipeline::after_response::Background;
use gen_pipeline::fal::signature::{
    HEADER_REQUEST_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_USER_ID, SignatureHeaders,
};
use gen_pipeline::standard_webhooks;
use gen_pipeline::webhook::{self, Delivery};
use gen_pipeline::webhook_auth::{self, ProviderSignature, UrlCredential};

use crate::errors::{self, Refusal};
use lambda_http::http::{HeaderMap, Method, StatusCode};
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde_json::{Value, json};

pub async fn handle(
    state: Arc<AppState>,
    req: Request,
    background: Background,
) -> Result<Response<Body>, Error> {
    if req.method() == Method::OPTIONS {
        return text(StatusCode::OK, "ok");
    }
    match deliver(&state, &req, background).await {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(refusal) => refuse(refusal),
    }
}

/// Size limit, authentication, then the use case; post-processing is left to run after the answer.
async fn deliver(
    state: &Arc<AppState>,
    req: &Request,
    background: Background,
) -> Result<Value, Refusal> {
    if req.method() != Method::POST {
        return Err(Refusal::json(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
        ));
    }
    let body: &[u8] = req.body().as_ref();
    if body.len() > state.config.webhook_max_body_bytes {
        tracing::warn!(bytes = body.len(), "webhook body over the limit");
        return Err(Refusal::json(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Body too large",
        ));
    }
    let settings = state.settings().await.map_err(|e| {
        tracing::error!(error = %e, "settings unavailable");
        errors::unavailable()
    })?;
    let query = req
        .query_string_parameters_ref()
        .cloned()
        .unwrap_or_default();
    let credential = UrlCredential {
        job_id: query.first("job_id"),
        token: query.first("token"),
        secret: query.first("secret"),
    };
    let signature = provider_signature(req.headers());
    let authenticated = webhook_auth::authenticate(state, &settings, credential, signature, body)
        .await
        .map_err(|e| {
            // One line, without the secret, the token or the URL.
            tracing::warn!(error = %e, "webhook delivery refused");
            Refusal::from(&e)
        })?;
    let header_request_id = req
        .headers()
        .get(HEADER_REQUEST_ID)
        .and_then(|v| v.to_str().ok());
    let url = webhook::DeliveryUrl::from_query(|name| query.first(name));
    let (delivery, post_process) =
        webhook::complete_from_webhook(state, &settings, authenticated, url, header_request_id, body)
            .await
            .map_err(|e| {
                let refusal = Refusal::from(&e);
                if refusal.status.is_server_error() {
                    tracing::warn!(error = %e, "webhook delivery not finished; fal will retry");
                } else {
                    tracing::info!(error = %e, status = refusal.status.as_u16(), "webhook delivery refused");
                }
                refusal
            })?;
    if let Some(job_id) = post_process {
        let state = state.clone();
        background.defer(Box::pin(async move {
            gen_pipeline::postprocess::run(&state, &settings, job_id).await;
        }));
    }
    Ok(match delivery {
        Delivery::Completed { job_id } => {
            json!({ "ok": true, "job_id": job_id, "status": "completed" })
        }
        Delivery::Failed { job_id } => json!({ "ok": true, "job_id": job_id, "status": "failed" }),
        Delivery::Skipped => json!({ "ok": true, "skipped": true }),
    })
}

fn refuse(r: Refusal) -> Result<Response<Body>, Error> {
    match r.body {
        errors::Body::Text(t) => text(r.status, t),
        errors::Body::Json(v) => json_response(r.status, &v),
    }
}

/// Replicate's Standard Webhooks headers when the delivery has them, else fal's.
fn provider_signature(headers: &HeaderMap) -> ProviderSignature<'_> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match get("webhook-signature") {
        Some(signature) => ProviderSignature::Replicate(standard_webhooks::Headers {
            id: get("webhook-id").unwrap_or_default(),
            timestamp: get("webhook-timestamp").unwrap_or_default(),
            signature,
        }),
        None => ProviderSignature::Fal(signature_headers(headers)),
    }
}

fn signature_headers(headers: &HeaderMap) -> Option<SignatureHeaders<'_>> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Some(SignatureHeaders {
        request_id: get(HEADER_REQUEST_ID)?,
        user_id: get(HEADER_USER_ID)?,
        timestamp: get(HEADER_TIMESTAMP)?,
        signature_hex: get(HEADER_SIGNATURE)?,
    })
}

fn text(status: StatusCode, body: &str) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Body::from(body.to_owned()))?)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))?)
}
