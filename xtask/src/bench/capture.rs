//! Real queued jobs and their real signed deliveries: jobs are submitted through `submit_generation` by a state
//! whose `FAL_WEBHOOK_URL` is a listener of the bench, so the emulator delivers each job's signed webhook (with
//! `?job_id=…&token=…`, the job's own token) there; the bench keeps it and replays it wherever a figure needs it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use gen_pipeline::fal::signature::{
    HEADER_REQUEST_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_USER_ID, SignatureHeaders,
};
use gen_pipeline::submission::{self, Submitted};
use gen_pipeline::{AppState, Settings};
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

/// One webhook delivery as fal sends it: the query of the URL it was sent to, headers (names lower-cased), body.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    pub fn signature_headers(&self) -> Option<SignatureHeaders<'_>> {
        Some(SignatureHeaders {
            request_id: self.header(HEADER_REQUEST_ID)?,
            user_id: self.header(HEADER_USER_ID)?,
            timestamp: self.header(HEADER_TIMESTAMP)?,
            signature_hex: self.header(HEADER_SIGNATURE)?,
        })
    }

    /// The result file's URL named by the body (`payload.video.url` or `payload.images[0].url`).
    pub fn media_url(&self) -> Option<String> {
        let body: Value = serde_json::from_slice(&self.body).ok()?;
        let payload = body.get("payload")?;
        payload
            .pointer("/video/url")
            .or_else(|| payload.pointer("/images/0/url"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

#[derive(Default)]
struct Received {
    by_request: Mutex<HashMap<String, Delivery>>,
    arrived: Notify,
}

/// The listener the emulator delivers to.
pub struct Capture {
    received: Arc<Received>,
    server: tokio::task::JoinHandle<()>,
}

impl Capture {
    /// Listens on `addr` (the address `FAL_WEBHOOK_URL` of this process names).
    pub async fn start(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the webhook capture listener to {addr}"))?;
        let received = Arc::new(Received::default());
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(received.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Capture { received, server })
    }

    /// The delivery for fal request `request_id`, waiting for it up to `timeout`.
    pub async fn wait(&self, request_id: &str, timeout: Duration) -> anyhow::Result<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.received.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(d) = self
                .received
                .by_request
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(request_id)
            {
                return Ok(d);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "the emulator did not deliver the webhook of {request_id} within {timeout:?}"
                );
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(received): State<Arc<Received>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned())))
        .collect();
    let delivery = Delivery {
        query: query.unwrap_or_default(),
        headers,
        body,
    };
    if let Some(request_id) = delivery.header(HEADER_REQUEST_ID).map(str::to_owned) {
        received
            .by_request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, delivery);
        received.arrived.notify_waiters();
    }
    (StatusCode::OK, r#"{"ok":true}"#)
}

/// A generation request for the seeded async (queue) model.
pub fn queue_request(
    model_id: &str,
    text: &str,
    directives: &str,
) -> anyhow::Result<gen_pipeline::input::GenerationRequest> {
    serde_json::from_value(json!({
        "prompt": format!("{text} {} {directives}", Uuid::new_v4().simple()),
        "apiModelId": model_id,
    }))
    .context("bench generation request")
}

/// Submits an async generation through the use case and returns (job id, fal request id).
pub async fn submit_queued(
    state: &AppState,
    settings: &Settings,
    user: Uuid,
    model_id: &str,
    directives: &str,
) -> anyhow::Result<(Uuid, String)> {
    let req = queue_request(model_id, "bench", directives)?;
    let result = submission::submit_generation(state, settings, user, req, None, None)
        .await
        .map_err(|e| anyhow::anyhow!("submit_generation failed: {e}"))?;
    match result.answer {
        Submitted::Queued { job_id, request_id } => Ok((job_id, request_id)),
        other => bail!("the async model did not queue: {other:?}"),
    }
}
