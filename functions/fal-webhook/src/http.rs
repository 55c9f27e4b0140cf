//! HTTP glue of fal-webhook: size limit, authentication (secret + fal signature), then `complete_from_webhook`.
//! The URL's query string carries the secret: nothing here logs the URL.

use std::sync::Arc;

use gen_pipeline::AppState;
use gen_pipeline::after_response::Ticket;
use gen_pipeline::fal::signature::{
    HEADER_REQUEST_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_USER_ID, SignatureHeaders,
};
use gen_pipeline::webhook::{self, AuthError, Delivery, DeliveryError};
use lambda_http::http::{HeaderMap, Method, StatusCode};
use lambda_http::{Body, Error, Request, RequestExt, Response};
use serde_json::json;

pub async fn handle(
    state: Arc<AppState>,
    req: Request,
    ticket: Ticket,
) -> Result<Response<Body>, Error> {
    if req.method() == Method::OPTIONS {
        return text(StatusCode::OK, "ok");
    }
    if req.method() != Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": "Method not allowed" }),
        );
    }
    let body: &[u8] = req.body().as_ref();
    if body.len() > state.config.max_body_bytes {
        tracing::warn!(bytes = body.len(), "webhook body over the limit");
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({ "error": "Body too large" }),
        );
    }
    let settings = match state.settings().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "settings unavailable");
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": "Temporarily unavailable" }),
            );
        }
    };
    let query = req
        .query_string_parameters_ref()
        .cloned()
        .unwrap_or_default();
    let headers = signature_headers(req.headers());
    if let Err(e) =
        webhook::authenticate(&state, &settings, query.first("secret"), headers, body).await
    {
        // One line, without the secret or the URL.
        tracing::warn!(error = %e, "webhook delivery refused");
        return match e {
            AuthError::NotConfigured => {
                text(StatusCode::INTERNAL_SERVER_ERROR, "Server misconfigured")
            }
            AuthError::KeysUnavailable(_) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": "Temporarily unavailable" }),
            ),
            AuthError::BadSecret | AuthError::BadSignature(_) => {
                text(StatusCode::UNAUTHORIZED, "Unauthorized")
            }
        };
    }
    let header_request_id = req
        .headers()
        .get(HEADER_REQUEST_ID)
        .and_then(|v| v.to_str().ok());
    match webhook::complete_from_webhook(
        &state,
        &settings,
        query.first("job_id"),
        header_request_id,
        body,
    )
    .await
    {
        Ok((delivery, post_process)) => {
            if let Some(job_id) = post_process {
                let state = state.clone();
                ticket.finish(Some(Box::pin(async move {
                    gen_pipeline::postprocess::run(&state, &settings, job_id).await;
                })));
            }
            match delivery {
                Delivery::Completed { job_id } => json_response(
                    StatusCode::OK,
                    &json!({ "ok": true, "job_id": job_id, "status": "completed" }),
                ),
                Delivery::Failed { job_id } => json_response(
                    StatusCode::OK,
                    &json!({ "ok": true, "job_id": job_id, "status": "failed" }),
                ),
                Delivery::Skipped => {
                    json_response(StatusCode::OK, &json!({ "ok": true, "skipped": true }))
                }
            }
        }
        Err(e) => {
            let status = match &e {
                DeliveryError::BadJson | DeliveryError::MissingRequestId => StatusCode::BAD_REQUEST,
                DeliveryError::JobNotFound => StatusCode::NOT_FOUND,
                DeliveryError::RequestMismatch => StatusCode::CONFLICT,
                DeliveryError::Busy | DeliveryError::Transient(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            if status.is_server_error() {
                tracing::warn!(error = %e, "webhook delivery not finished; fal will retry");
            } else {
                tracing::info!(error = %e, status = status.as_u16(), "webhook delivery refused");
            }
            json_response(status, &json!({ "error": e.to_string() }))
        }
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
