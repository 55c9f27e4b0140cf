//! `POST <base>/run/{model_id}`, playing `https://fal.run`: the model answers on the same connection, never queued.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::calls::{Accepted, accept_call, with_request_id};
use super::replies::{
    MODEL_FAILURE_MSG, infra_error, json_status, scripted_status, validation_error,
};
use super::state::{AppState, Mode};

pub async fn run(
    State(state): State<Arc<AppState>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match accept_call(&state, Mode::Sync, &model_id, &headers, &body, None) {
        Ok(call) => call,
        Err(refusal) => return refusal.into_response(),
    };
    let (resp, failed) = answer(&state, &call, &headers).await;
    state.set_sync_outcome(&call.request_id, failed);
    with_request_id(resp, &call.request_id)
}

/// The scripted answer and whether it counts as a failed request.
async fn answer(state: &AppState, call: &Accepted, headers: &HeaderMap) -> (Response, bool) {
    let d = &call.directives;
    // `X-Fal-Request-Timeout` is a time-to-start deadline: a run that would start later is answered 504 then; one
    // that started runs to its end, however long that takes.
    if d.start_delay_ms > 0 {
        let delay = Duration::from_millis(d.start_delay_ms);
        if let Some(limit) = request_timeout(headers).filter(|limit| delay > *limit) {
            tokio::time::sleep(limit).await;
            return (timed_out(), true);
        }
        tokio::time::sleep(delay).await;
    }
    tokio::time::sleep(Duration::from_millis(d.run_delay_ms)).await;
    if d.run_fail_first > 0 {
        let prompt = call.prompt.as_deref().unwrap_or_default();
        if state.count_run(prompt) <= d.run_fail_first {
            return (
                scripted_status(StatusCode::SERVICE_UNAVAILABLE.as_u16()),
                true,
            );
        }
    }
    if let Some(code) = d.run_status {
        return (scripted_status(code), true);
    }
    if d.error {
        return (validation_error(MODEL_FAILURE_MSG), true);
    }
    (json_status(StatusCode::OK, call.output.clone()), false)
}

/// `X-Fal-Request-Timeout: <seconds>`, the caller's deadline.
fn request_timeout(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get("x-fal-request-timeout")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

fn timed_out() -> Response {
    let mut resp = infra_error(
        StatusCode::GATEWAY_TIMEOUT,
        "request_timeout",
        "Request timed out",
    );
    resp.headers_mut().insert(
        "x-fal-request-timeout-type",
        HeaderValue::from_static("user"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_timeout_header_is_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(request_timeout(&h), None);
        h.insert("x-fal-request-timeout", HeaderValue::from_static("1.5"));
        assert_eq!(request_timeout(&h), Some(Duration::from_millis(1500)));
        h.insert("x-fal-request-timeout", HeaderValue::from_static("-3"));
        assert_eq!(request_timeout(&h), None);
    }
}
