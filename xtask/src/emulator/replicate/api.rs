//! The HTTP side of Replicate: the bearer token, parsing a create, `Prefer: wait`, each prediction's run in the
//! background, and Replicate's problem-shaped errors.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::prediction::{Order, Prediction};
use crate::emulator::media;
use crate::emulator::replies::{credential_ok, json_status};
use crate::emulator::state::AppState;
use crate::emulator::webhook;

/// The longest `Prefer: wait=N` Replicate honours, and what a bare `Prefer: wait` means.
const MAX_WAIT_SECS: u64 = 60;
/// How long an `#early` create waits for the receiver's first answer before answering anyway.
const EARLY_WAIT: Duration = Duration::from_secs(10);

/// A call carrying the configured token as `Bearer` (any call when none is configured); else Replicate's 401.
pub struct Authorized;

impl FromRequestParts<Arc<AppState>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        let Some(token) = state.settings.replicate.token.as_ref() else {
            return Ok(Authorized);
        };
        if credential_ok(&parts.headers, "Bearer ", Some(token.expose_secret())) {
            return Ok(Authorized);
        }
        let detail = "You did not pass a valid authentication token";
        Err(problem(StatusCode::UNAUTHORIZED, "Unauthenticated", detail))
    }
}

#[derive(Deserialize)]
struct CreateBody {
    input: Map<String, Value>,
    version: Option<String>,
    webhook: Option<String>,
    webhook_events_filter: Option<Vec<String>>,
}

/// `POST /v1/models/{owner}/{name}/predictions`: an official model.
pub async fn create_for_model(
    _: Authorized,
    State(state): State<Arc<AppState>>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create(state, Some(format!("{owner}/{name}")), &headers, &body).await
}

/// `POST /v1/predictions` with a `version`.
pub async fn create_for_version(
    _: Authorized,
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create(state, None, &headers, &body).await
}

async fn create(
    state: Arc<AppState>,
    model: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let order = match parse_order(model, body) {
        Ok(order) => order,
        Err(detail) => {
            let status = StatusCode::UNPROCESSABLE_ENTITY;
            return problem(status, "Input validation failed", &detail);
        }
    };
    let prediction = Prediction::new(order, &state.public_base);
    let wait = prefer_wait(headers);
    // A create that waits plays fal's sync run, one that does not its queue submit.
    let d = &prediction.directives;
    let scripted = if wait.is_some() {
        d.run_status
    } else {
        d.queue_status
    };
    if let Some(code) = scripted {
        return scripted_problem(code);
    }
    let (id, early, submit_delay_ms) = (prediction.id.clone(), d.early, d.submit_delay_ms);
    let unreadable = if wait.is_some() {
        d.run_unreadable
    } else {
        d.queue_unreadable
    };
    let delay = Duration::from_millis(d.delay_ms);
    let mut finished = state.replicate.insert(prediction);
    let first_answered = run(state.clone(), id.clone(), delay);
    if early {
        // The receiver sees the webhook before the client knows the prediction: the race Replicate allows.
        let _ = tokio::time::timeout(delay + EARLY_WAIT, first_answered).await;
    }
    if let Some(wait) = wait {
        let _ = tokio::time::timeout(wait, finished.wait_for(|done| *done)).await;
    } else {
        // `#submit-delay-ms`: a slow answer to a prediction that already runs, as the fal queue plays it.
        tokio::time::sleep(Duration::from_millis(submit_delay_ms)).await;
    }
    if unreadable {
        return match state.replicate.with(&id, |p| p.to_json()) {
            Some(mut view) => {
                view["status"] = json!("teleporting");
                json_status(StatusCode::CREATED, view)
            }
            None => not_found(),
        };
    }
    prediction_answer(&state, &id, StatusCode::CREATED)
}

/// `starting` for half the delay, `processing` for the rest, then over and delivered; spawned, so a client hanging
/// up cannot strand it. The receiver fires once the first delivery was answered or there is none (`#early`).
fn run(state: Arc<AppState>, id: String, delay: Duration) -> oneshot::Receiver<()> {
    let (first_answered, first_rx) = oneshot::channel();
    tokio::spawn(async move {
        tokio::time::sleep(delay / 2).await;
        if state.replicate.with(&id, Prediction::start) == Some(true) {
            tokio::time::sleep(delay - delay / 2).await;
            if let Some(job) = state.replicate.with(&id, Prediction::finish).flatten() {
                let _ = webhook::start(state, job).await;
            }
        }
        let _ = first_answered.send(());
    });
    first_rx
}

/// `GET /v1/predictions/{id}`.
pub async fn get(
    _: Authorized,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    prediction_answer(&state, &id, StatusCode::OK)
}

/// `POST /v1/predictions/{id}/cancel`: a running prediction ends `canceled` (and its `completed` webhook goes
/// out); a finished one stays as it is.
pub async fn cancel(
    _: Authorized,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    match state.replicate.with(&id, Prediction::cancel) {
        None => return not_found(),
        Some(Some(job)) => drop(webhook::start(state.clone(), job)),
        Some(None) => {}
    }
    prediction_answer(&state, &id, StatusCode::OK)
}

/// `GET /v1/webhooks/default/secret`.
pub async fn secret(_: Authorized, State(state): State<Arc<AppState>>) -> Response {
    let key = state.replicate.secret().expose_secret();
    json_status(StatusCode::OK, json!({ "key": key }))
}

/// `GET /replicate/delivery/{id}/{file_name}`: a result file, as `replicate.delivery` serves it (no token).
pub async fn delivery(
    State(state): State<Arc<AppState>>,
    Path((id, file_name)): Path<(String, String)>,
) -> Response {
    match state.replicate.with(&id, |p| p.media_fetch(&file_name)) {
        Some(Some(fetch)) => media::respond(id, fetch).await,
        _ => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `GET /replicate/v1/_emulator/predictions/{id}` (`<REPLICATE_EMULATOR_URL>/_emulator/predictions/{id}`): [`Prediction::inspection`], without a token like fal's.
pub async fn inspect(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.replicate.with(&id, |p| p.inspection()) {
        Some(view) => json_status(StatusCode::OK, view),
        None => not_found(),
    }
}

fn prediction_answer(state: &AppState, id: &str, status: StatusCode) -> Response {
    match state.replicate.with(id, |p| p.to_json()) {
        Some(view) => json_status(status, view),
        None => not_found(),
    }
}

/// The create's model and version: `owner/name` from the path (version `hidden`, as Replicate shows official
/// models), else the body's `version`: `owner/name:id`, `owner/name`, or a bare id that also stands as the model.
fn parse_order(path_model: Option<String>, body: &[u8]) -> Result<Order, String> {
    let body: CreateBody = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let (model, version) = match (path_model, body.version) {
        (Some(model), _) => (model, "hidden".to_owned()),
        (None, Some(version)) => match version.split_once(':') {
            Some((model, id)) => (model.to_owned(), id.to_owned()),
            None if version.contains('/') => (version, "hidden".to_owned()),
            None => (version.clone(), version),
        },
        (None, None) => return Err("version is required".into()),
    };
    Ok(Order {
        model,
        version,
        input: Value::Object(body.input),
        webhook: body.webhook.filter(|url| !url.is_empty()),
        events: body.webhook_events_filter,
    })
}

/// `Prefer: wait` (the longest wait) or `wait=N` seconds, among comma-separated preferences; else no wait.
fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    let prefer = headers.get("prefer")?.to_str().ok()?;
    let seconds = prefer
        .split(',')
        .map(str::trim)
        .find_map(|p| match p.split_once('=') {
            None if p.eq_ignore_ascii_case("wait") => Some(MAX_WAIT_SECS),
            Some((key, n)) if key.trim().eq_ignore_ascii_case("wait") => n.trim().parse().ok(),
            _ => None,
        })?;
    Some(Duration::from_secs(seconds.clamp(1, MAX_WAIT_SECS)))
}

/// Replicate's error body (problem details).
fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({"title": title, "detail": detail, "status": status.as_u16()});
    json_status(status, body)
}

fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "Not found", "Not found.")
}

/// The answer a scripted `#queue-status=N` / `#run-status=N` produces.
fn scripted_problem(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let title = match status.as_u16() {
        429 => "Request was throttled",
        422 => "Input validation failed",
        s if s < 500 => "Invalid request",
        _ => "Internal server error",
    };
    problem(
        status,
        title,
        &format!("emulated error ({})", status.as_u16()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn waits(prefer: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("prefer", HeaderValue::from_str(prefer).unwrap());
        prefer_wait(&headers)
    }

    #[test]
    fn prefer_wait_is_capped_at_sixty_seconds() {
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
        assert_eq!(waits("wait"), Some(Duration::from_secs(60)));
        assert_eq!(waits("wait=5"), Some(Duration::from_secs(5)));
        assert_eq!(
            waits("respond-async, Wait = 7"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(waits("wait=600"), Some(Duration::from_secs(60)));
        assert_eq!(waits("wait=soon"), None);
        assert_eq!(waits("return=minimal"), None);
    }

    #[test]
    fn versions_name_their_model() {
        let order = |model: Option<&str>, body: Value| {
            let body = serde_json::to_vec(&body).unwrap();
            parse_order(model.map(str::to_owned), &body).map(|o| (o.model, o.version))
        };
        let input = json!({"prompt": "x"});
        let named = order(None, json!({"version": "acme/wan:abc", "input": input}));
        assert_eq!(named.unwrap(), ("acme/wan".into(), "abc".into()));
        let bare = order(None, json!({"version": "abc", "input": input}));
        assert_eq!(bare.unwrap(), ("abc".into(), "abc".into()));
        let official = order(Some("acme/flux"), json!({"version": "x", "input": input}));
        assert_eq!(official.unwrap(), ("acme/flux".into(), "hidden".into()));
        let missing = order(None, json!({"input": input})).unwrap_err();
        assert_eq!(missing, "version is required");
        assert!(order(Some("a/b"), json!({"input": "x"})).is_err());
    }
}
