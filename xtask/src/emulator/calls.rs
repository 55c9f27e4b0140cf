//! What sync runs and queue submits share: auth, input parsing, and recording the new request.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::directives::Directives;
use super::outputs::{MediaSpec, model_output};
use super::replies::{auth_ok, json_status, scripted_status, unauthorized};
use super::state::{AppState, Mode, RequestRecord, Status};
use super::webhook::{Signing, WebhookJob, webhook_body};

/// A model call that passed the gate and is now recorded.
pub struct Accepted {
    pub request_id: String,
    pub gateway_request_id: String,
    pub directives: Directives,
    /// The input's `prompt` when it is a string (keys `#run-fail-first` counters).
    pub prompt: Option<String>,
    pub output: Value,
    /// Present when the submit named a webhook URL.
    pub webhook_job: Option<WebhookJob>,
}

/// Why a model call was not accepted; each maps to fal's answer in one place.
#[derive(Debug)]
pub enum Refusal {
    /// Wrong or missing key; the call is still recorded under this id for inspection.
    Unauthorized {
        request_id: String,
    },
    BadJson,
    /// `#queue-status=N`.
    Scripted(u16),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized { request_id } => with_request_id(unauthorized(), &request_id),
            Refusal::BadJson => {
                let detail = json!({"detail": [{"loc": ["body"], "msg": "Input is not valid JSON", "type": "value_error.jsondecode"}]});
                json_status(StatusCode::UNPROCESSABLE_ENTITY, detail)
            }
            Refusal::Scripted(code) => scripted_status(code),
        }
    }
}

/// The 401 for status/result/cancel calls without the configured key; `None` lets the call through.
pub fn auth_denial(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    match &state.settings.key {
        Some(key) if !auth_ok(headers, Some(key)) => Some(unauthorized()),
        _ => None,
    }
}

/// Checks auth, parses the input and records the request.
pub fn accept_call(
    state: &AppState,
    mode: Mode,
    model_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    webhook_url: Option<String>,
) -> Result<Accepted, Refusal> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let authorized = auth_ok(headers, state.settings.key.as_deref());
    if state.settings.key.is_some() && !authorized {
        // Recorded anyway, so a test can see that its call arrived without the right key.
        let input = parsed.unwrap_or(Value::Null);
        state.insert(rejected_record(&request_id, mode, model_id, input));
        return Err(Refusal::Unauthorized { request_id });
    }
    let Ok(input) = parsed else {
        return Err(Refusal::BadJson);
    };
    let directives = Directives::from_input(&input);
    if mode == Mode::Queue
        && let Some(code) = directives.queue_status
    {
        return Err(Refusal::Scripted(code));
    }
    let gateway_request_id = uuid::Uuid::new_v4().to_string();
    let media = MediaSpec::new(model_id, &directives);
    let own_url = format!(
        "{}/media/{request_id}/{}",
        state.public_base, media.file_name
    );
    let media_url = directives.media_url.clone().unwrap_or(own_url);
    let output = model_output(&request_id, &media_url, &media, &directives, &input);
    let webhook_job = webhook_url.clone().map(|url| WebhookJob {
        request_id: request_id.clone(),
        url,
        body: serialize(&webhook_body(
            &request_id,
            &gateway_request_id,
            &directives,
            &output,
        )),
        deliveries: directives.deliveries,
        concurrent: directives.concurrent,
        signing: Signing::Fal,
    });
    let prompt = input
        .get("prompt")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let record = RequestRecord {
        request_id: request_id.clone(),
        gateway_request_id: gateway_request_id.clone(),
        mode,
        model_id: model_id.to_owned(),
        input,
        status: match mode {
            Mode::Queue => Status::InQueue,
            Mode::Sync => Status::InProgress,
        },
        failed: false,
        auth_ok: authorized,
        rejected: false,
        directives: directives.clone(),
        media,
        output: output.clone(),
        webhook_url,
        deliveries: Vec::new(),
        media_fetches: 0,
        cancel_calls: 0,
    };
    state.insert(record);
    Ok(Accepted {
        request_id,
        gateway_request_id,
        directives,
        prompt,
        output,
        webhook_job,
    })
}

fn serialize(body: &Value) -> bytes::Bytes {
    // Serializing a `Value` cannot fail (its keys are strings); an empty body would only fail the receiver's check.
    serde_json::to_vec(body).unwrap_or_default().into()
}

fn rejected_record(request_id: &str, mode: Mode, model_id: &str, input: Value) -> RequestRecord {
    RequestRecord {
        request_id: request_id.to_owned(),
        gateway_request_id: request_id.to_owned(),
        mode,
        model_id: model_id.to_owned(),
        input,
        status: Status::Completed,
        failed: true,
        auth_ok: false,
        rejected: true,
        directives: Directives::default(),
        media: MediaSpec::new(model_id, &Directives::default()),
        output: Value::Null,
        webhook_url: None,
        deliveries: Vec::new(),
        media_fetches: 0,
        cancel_calls: 0,
    }
}

/// fal names every call's request id in `x-fal-request-id`.
pub fn with_request_id(mut resp: Response, request_id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-fal-request-id", v);
    }
    resp
}
