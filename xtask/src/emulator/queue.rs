//! `<base>/queue/...`, playing `https://queue.fal.run`: submit, status, result, cancel, and each request's life.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::calls::{Accepted, accept_call, auth_denial};
use super::replies::{
    MODEL_FAILURE_MSG, RESULT_FAILURE_MSG, infra_error, json_status, validation_detail,
};
use super::state::{AppState, CancelOutcome, Mode, Status};
use super::webhook;

/// How long an `#early` submit waits for the receiver's first answer before answering anyway.
const EARLY_WAIT: Duration = Duration::from_secs(10);

/// What a path under `/queue/` addresses. Model ids contain slashes, so the shape decides.
#[derive(Debug, PartialEq, Eq)]
enum QueuePath<'a> {
    /// `{owner}/{app}/requests/{id}`
    Result(&'a str),
    /// `{owner}/{app}/requests/{id}/status`
    Status(&'a str),
    /// `{owner}/{app}/requests/{id}/cancel`
    Cancel(&'a str),
    /// Anything else: a model id.
    Model(&'a str),
}

fn classify(rest: &str) -> QueuePath<'_> {
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [_, _, "requests", id] => QueuePath::Result(id),
        [_, _, "requests", id, "status"] => QueuePath::Status(id),
        [_, _, "requests", id, "cancel"] => QueuePath::Cancel(id),
        _ => QueuePath::Model(rest),
    }
}

fn not_found_path() -> Response {
    json_status(StatusCode::NOT_FOUND, json!({"detail": "Not found"}))
}

/// `POST /queue/{*rest}`: a submit, unless the path is a request URL (those take GET/PUT only).
pub async fn queue_post(
    State(state): State<Arc<AppState>>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match classify(&rest) {
        QueuePath::Model(model_id) => {
            submit(state, model_id, query.as_deref(), &headers, &body).await
        }
        _ => infra_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "Method not allowed",
        ),
    }
}

/// `GET /queue/{*rest}`: status or result.
pub async fn queue_get(
    State(state): State<Arc<AppState>>,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let target = classify(&rest);
    if matches!(target, QueuePath::Model(_) | QueuePath::Cancel(_)) {
        return not_found_path();
    }
    if let Some(denied) = auth_denial(&state, &headers) {
        return denied;
    }
    match target {
        QueuePath::Status(id) => status(&state, id, query.as_deref()),
        QueuePath::Result(id) => result(&state, id),
        _ => not_found_path(),
    }
}

/// `PUT /queue/{*rest}`: cancel.
pub async fn queue_put(
    State(state): State<Arc<AppState>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let QueuePath::Cancel(id) = classify(&rest) else {
        return not_found_path();
    };
    if let Some(denied) = auth_denial(&state, &headers) {
        return denied;
    }
    cancel(&state, id)
}

fn webhook_url(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "fal_webhook")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

async fn submit(
    state: Arc<AppState>,
    model_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let webhook = webhook_url(query);
    let call = match accept_call(&state, Mode::Queue, model_id, headers, body, webhook) {
        Ok(call) => call,
        Err(refusal) => return refusal.into_response(),
    };
    let Accepted {
        request_id,
        gateway_request_id,
        directives,
        webhook_job,
        ..
    } = call;
    let urls = super::outputs::QueueUrls::new(&state.public_base, model_id, &request_id);
    let answer = json!({
        "request_id": request_id,
        "gateway_request_id": gateway_request_id,
        "status": "IN_QUEUE",
        "queue_position": 0,
        "status_url": urls.status_url,
        "response_url": urls.response_url,
        "cancel_url": urls.cancel_url,
    });
    let delay = Duration::from_millis(directives.delay_ms);
    let job = webhook_job.filter(|_| !directives.no_webhook);
    // Spawned even for `#early`, so a client hanging up mid-submit cannot strand the request IN_QUEUE.
    let (first_answered, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if run_to_completion(&state, &request_id, delay).await
            && let Some(job) = job
        {
            let _ = webhook::start(state, job).await;
        }
        let _ = first_answered.send(());
    });
    if directives.early {
        // The receiver sees the webhook before the client knows the request id: the race fal allows.
        let _ = tokio::time::timeout(delay + EARLY_WAIT, first_rx).await;
    }
    // A slow answer to a request fal already runs: the submitter's window between the two.
    tokio::time::sleep(Duration::from_millis(directives.submit_delay_ms)).await;
    if directives.queue_unreadable {
        // Accepted (it runs, and is delivered) but answered without its id and URLs.
        return json_status(StatusCode::OK, json!({"status": "IN_QUEUE"}));
    }
    json_status(StatusCode::OK, answer)
}

/// IN_QUEUE for half the delay, IN_PROGRESS for the rest, then COMPLETED; false if cancelled meanwhile.
async fn run_to_completion(state: &AppState, request_id: &str, delay: Duration) -> bool {
    tokio::time::sleep(delay / 2).await;
    if !state.start(request_id) {
        return false;
    }
    tokio::time::sleep(delay - delay / 2).await;
    state.complete(request_id)
}

fn status(state: &AppState, id: &str, query: Option<&str>) -> Response {
    let Some(view) = state.queue_view(id) else {
        return json_status(
            StatusCode::NOT_FOUND,
            json!({"detail": "Request not found"}),
        );
    };
    let with_logs = query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "logs" && v == "1")
    });
    let mut body = match view.status {
        Status::InQueue => json!({"status": "IN_QUEUE", "queue_position": 0}),
        Status::InProgress => json!({"status": "IN_PROGRESS"}),
        // fal has no FAILED or CANCELLED status: a finished request is COMPLETED either way.
        Status::Completed | Status::Cancelled => json!({"status": "COMPLETED"}),
    };
    if with_logs {
        body["logs"] = json!([]);
    }
    let code = if body["status"] == "COMPLETED" {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    json_status(code, body)
}

fn result(state: &AppState, id: &str) -> Response {
    let Some(view) = state.queue_view(id) else {
        return json_status(
            StatusCode::NOT_FOUND,
            json!({"detail": "Request not found"}),
        );
    };
    if let (Status::Completed, Some((code, error_type))) = (view.status, view.result_failure) {
        return result_failure(code, error_type);
    }
    match view.status {
        Status::Completed if view.failed => json_status(
            StatusCode::UNPROCESSABLE_ENTITY,
            validation_detail(MODEL_FAILURE_MSG),
        ),
        Status::Completed => json_status(StatusCode::OK, view.output),
        Status::Cancelled => json_status(
            StatusCode::BAD_REQUEST,
            json!({"detail": "Request was cancelled"}),
        ),
        Status::InQueue | Status::InProgress => json_status(
            StatusCode::BAD_REQUEST,
            json!({"detail": "Request is still in progress"}),
        ),
    }
}

/// A completed request's result answered as fal answers a failed one: the status, `{"detail", "error_type"}` and
/// the `X-Fal-Error-Type` header (both only when a type is given).
fn result_failure(code: u16, error_type: Option<String>) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match error_type {
        Some(kind) => infra_error(code, &kind, RESULT_FAILURE_MSG),
        None => json_status(code, json!({"detail": RESULT_FAILURE_MSG})),
    }
}

fn cancel(state: &AppState, id: &str) -> Response {
    match state.cancel(id) {
        CancelOutcome::Requested => json_status(
            StatusCode::ACCEPTED,
            json!({"status": "CANCELLATION_REQUESTED"}),
        ),
        CancelOutcome::AlreadyCompleted => json_status(
            StatusCode::BAD_REQUEST,
            json!({"status": "ALREADY_COMPLETED"}),
        ),
        CancelOutcome::NotFound => {
            json_status(StatusCode::NOT_FOUND, json!({"status": "NOT_FOUND"}))
        }
        CancelOutcome::Unavailable => json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"detail": "emulated cancel outage"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths_are_not_model_ids() {
        assert_eq!(
            classify("fal-ai/bytedance/requests/abc"),
            QueuePath::Result("abc")
        );
        assert_eq!(
            classify("fal-ai/bytedance/requests/abc/status"),
            QueuePath::Status("abc")
        );
        assert_eq!(
            classify("fal-ai/bytedance/requests/abc/cancel"),
            QueuePath::Cancel("abc")
        );
        assert_eq!(
            classify("fal-ai/bytedance/seedream/v4/text-to-image"),
            QueuePath::Model("fal-ai/bytedance/seedream/v4/text-to-image")
        );
        assert_eq!(
            classify("fal-ai/wan/i2v"),
            QueuePath::Model("fal-ai/wan/i2v")
        );
    }

    #[test]
    fn webhook_url_is_decoded_from_the_query() {
        let q = "a=1&fal_webhook=http%3A%2F%2F127.0.0.1%3A9%2Fhook%3Fjob_id%3Dj%26token%3Dx";
        assert_eq!(
            webhook_url(Some(q)).as_deref(),
            Some("http://127.0.0.1:9/hook?job_id=j&token=x")
        );
        assert_eq!(webhook_url(Some("fal_webhook=")), None);
        assert_eq!(webhook_url(None), None);
    }
}
