//! fal-shaped answers: infrastructure errors, validation errors, auth.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The message of an `#error` request, in the webhook payload, the result and the sync answer.
pub const MODEL_FAILURE_MSG: &str = "emulated model failure";

/// The `detail` of a `#result-status=N` request's result.
pub const RESULT_FAILURE_MSG: &str = "emulated failed request";

/// fal's validation error body (`422`).
pub fn validation_detail(msg: &str) -> Value {
    json!({"detail": [{"loc": ["body", "prompt"], "msg": msg, "type": "value_error"}]})
}

pub fn validation_error(msg: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(validation_detail(msg)),
    )
        .into_response()
}

/// fal's `error_type` for an infrastructure status code.
fn error_type(code: u16) -> &'static str {
    match code {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        429 => "concurrency_limit",
        502 => "runner_incomplete_response",
        503 => "runner_scheduling_failure",
        504 => "request_timeout",
        c if (400..500).contains(&c) => "bad_request",
        _ => "internal_error",
    }
}

/// The answer a scripted `#queue-status=N` / `#run-status=N` produces.
pub fn scripted_status(code: u16) -> Response {
    if code == 422 {
        return validation_error(MODEL_FAILURE_MSG);
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = error_type(status.as_u16());
    infra_error(
        status,
        kind,
        &format!("emulated {kind} ({})", status.as_u16()),
    )
}

/// `{"detail", "error_type"}` plus the `X-Fal-Error-Type` header.
pub fn infra_error(status: StatusCode, kind: &str, detail: &str) -> Response {
    let mut resp = (status, Json(json!({"detail": detail, "error_type": kind}))).into_response();
    if let Ok(value) = HeaderValue::from_str(kind) {
        resp.headers_mut().insert("x-fal-error-type", value);
    }
    resp
}

pub fn unauthorized() -> Response {
    infra_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Invalid authorization",
    )
}

pub fn json_status(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Whether the call carries the right key. Without a configured key any `Key <something>` counts,
/// so inspection still shows whether the client sent credentials at all.
pub fn auth_ok(headers: &HeaderMap, key: Option<&str>) -> bool {
    credential_ok(headers, "Key ", key)
}

/// [`auth_ok`] for any scheme: whether `Authorization: <scheme><credential>` carries `key`.
pub fn credential_ok(headers: &HeaderMap, scheme: &str, key: Option<&str>) -> bool {
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(scheme))
        .map(str::trim);
    match (key, sent) {
        (Some(expected), Some(sent)) => sent == expected,
        (None, Some(sent)) => !sent.is_empty(),
        (_, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_statuses_carry_fal_error_types() {
        for (code, kind) in [
            (429, "concurrency_limit"),
            (500, "internal_error"),
            (502, "runner_incomplete_response"),
            (503, "runner_scheduling_failure"),
            (504, "request_timeout"),
            (400, "bad_request"),
            (418, "bad_request"),
        ] {
            let r = scripted_status(code);
            assert_eq!(r.status().as_u16(), code);
            assert_eq!(r.headers()["x-fal-error-type"], kind);
        }
        assert_eq!(
            scripted_status(422).status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            scripted_status(1).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn auth_checks_the_key_when_configured() {
        let mut h = HeaderMap::new();
        assert!(!auth_ok(&h, None));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Key abc"));
        assert!(auth_ok(&h, None));
        assert!(auth_ok(&h, Some("abc")));
        assert!(!auth_ok(&h, Some("abd")));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert!(!auth_ok(&h, Some("abc")));
    }
}
