//! Webhook deliveries: fal's body shapes, Ed25519-signed (or Standard Webhooks for Replicate), retried with a
//! fixed backoff, every attempt recorded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ed25519_dalek::Signer as _;
use gen_pipeline::fal::signature::{self, signed_message};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::directives::Directives;
use super::replies::{MODEL_FAILURE_MSG, validation_detail};
use super::state::{AppState, DeliveryAttempt, unix_ms};

/// Tries per delivery, as fal does (faster: the pause is `FAL_EMULATOR_RETRY_MS`).
const MAX_ATTEMPTS: u32 = 10;

/// One request's webhook, ready to send as many times as scripted.
#[derive(Debug, Clone)]
pub struct WebhookJob {
    pub request_id: String,
    pub url: String,
    /// Serialized once: the exact bytes that are signed are the bytes that are sent.
    pub body: Bytes,
    pub deliveries: u32,
    pub concurrent: bool,
    pub signing: Signing,
}

/// How a delivery is signed, and whose record keeps its attempts.
#[derive(Debug, Clone)]
pub enum Signing {
    /// fal's `X-Fal-Webhook-*` headers, Ed25519 with the emulator's key; attempts go to the fal request.
    Fal,
    /// Standard Webhooks as Replicate sends them, the same `webhook-id` on every attempt; attempts go to the
    /// Replicate prediction.
    Standard { webhook_id: String },
}

/// The webhook body fal sends for a finished request.
pub fn webhook_body(
    request_id: &str,
    gateway_request_id: &str,
    directives: &Directives,
    output: &Value,
) -> Value {
    if directives.error || directives.queue_error {
        return json!({
            "request_id": request_id,
            "gateway_request_id": gateway_request_id,
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": validation_detail(MODEL_FAILURE_MSG),
        });
    }
    if directives.payload_null {
        return json!({
            "request_id": request_id,
            "gateway_request_id": gateway_request_id,
            "status": "OK",
            "payload": null,
            "payload_error": "Output could not be serialized",
            "error": null,
        });
    }
    json!({
        "request_id": request_id,
        "gateway_request_id": gateway_request_id,
        "status": "OK",
        "payload": output,
        "error": null,
    })
}

/// Only loopback receivers are ever contacted: the emulator must not become an SSRF or traffic source.
pub fn is_loopback_url(raw: &str) -> bool {
    let Ok(url) = url::Url::parse(raw) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Starts all scripted deliveries in the background. The receiver fires once the first attempt of
/// the first delivery has been answered (or immediately when there is nothing to send), for `#early`.
pub fn start(state: Arc<AppState>, job: WebhookJob) -> oneshot::Receiver<()> {
    let (first_tx, first_rx) = oneshot::channel();
    tokio::spawn(deliver_all(state, Arc::new(job), first_tx));
    first_rx
}

async fn deliver_all(state: Arc<AppState>, job: Arc<WebhookJob>, first_tx: oneshot::Sender<()>) {
    let mut first = Some(first_tx);
    let mut handles = Vec::new();
    for n in 1..=job.deliveries {
        let handle = tokio::spawn(deliver_one(state.clone(), job.clone(), n, first.take()));
        if job.concurrent {
            handles.push(handle);
        } else {
            // Sequential: the next delivery starts only after this one, retries included, is over.
            let _ = handle.await;
        }
    }
    for handle in handles {
        let _ = handle.await;
    }
}

/// One full delivery: up to [`MAX_ATTEMPTS`] tries until the receiver answers 2xx.
async fn deliver_one(
    state: Arc<AppState>,
    job: Arc<WebhookJob>,
    delivery: u32,
    mut first: Option<oneshot::Sender<()>>,
) {
    if !is_loopback_url(&job.url) {
        tracing::warn!(request_id = %job.request_id, "webhook refused: host is not loopback");
        let refused = DeliveryAttempt {
            delivery,
            attempt: 1,
            started_at_ms: unix_ms(),
            http_status: None,
            error: Some("refused: webhook host is not a loopback address".into()),
            duration_ms: 0,
        };
        record_attempt(&state, &job, refused);
        notify(&mut first);
        return;
    }
    for attempt in 1..=MAX_ATTEMPTS {
        let record = attempt_once(&state, &job, delivery, attempt).await;
        let delivered = record.http_status.is_some_and(|s| (200..300).contains(&s));
        record_attempt(&state, &job, record);
        notify(&mut first);
        if delivered {
            return;
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(state.settings.retry).await;
        }
    }
}

fn record_attempt(state: &AppState, job: &WebhookJob, attempt: DeliveryAttempt) {
    match job.signing {
        Signing::Fal => state.record_attempt(&job.request_id, attempt),
        Signing::Standard { .. } => state.replicate.record_attempt(&job.request_id, attempt),
    }
}

fn notify(first: &mut Option<oneshot::Sender<()>>) {
    if let Some(tx) = first.take() {
        let _ = tx.send(());
    }
}

async fn attempt_once(
    state: &AppState,
    job: &WebhookJob,
    delivery: u32,
    attempt: u32,
) -> DeliveryAttempt {
    let started_at_ms = unix_ms();
    let clock = Instant::now();
    let mut request = state
        .http
        .post(&job.url)
        .header("content-type", "application/json");
    for (name, value) in signed_headers(state, job, started_at_ms / 1000) {
        request = request.header(name, value);
    }
    let result = request.body(job.body.clone()).send().await;
    let (http_status, error) = match result {
        Ok(resp) => (Some(resp.status().as_u16()), None),
        Err(e) => (None, Some(describe(e))),
    };
    tracing::info!(request_id = %job.request_id, delivery, attempt, ?http_status, error = error.as_deref(), "webhook attempt");
    DeliveryAttempt {
        delivery,
        attempt,
        started_at_ms,
        http_status,
        error,
        duration_ms: clock.elapsed().as_millis() as u64,
    }
}

/// The signature headers of one attempt made at `timestamp` (unix seconds).
fn signed_headers(
    state: &AppState,
    job: &WebhookJob,
    timestamp: u64,
) -> Vec<(&'static str, String)> {
    match &job.signing {
        Signing::Fal => {
            let user_id = &state.settings.user_id;
            let timestamp = timestamp.to_string();
            let message = signed_message(&job.request_id, user_id, &timestamp, &job.body);
            let signature_hex = hex::encode(state.signing_key.sign(&message).to_bytes());
            vec![
                (signature::HEADER_REQUEST_ID, job.request_id.clone()),
                (signature::HEADER_USER_ID, user_id.clone()),
                (signature::HEADER_TIMESTAMP, timestamp),
                (signature::HEADER_SIGNATURE, signature_hex),
            ]
        }
        Signing::Standard { webhook_id } => state
            .replicate
            .signed_headers(webhook_id, timestamp, &job.body),
    }
}

/// The error and its causes, without the URL (its query carries the receiver's secret).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = if e.is_timeout() {
        format!("timeout: {e}")
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_allowed() {
        for ok in [
            "http://127.0.0.1:9/h?s=1",
            "http://127.8.0.1/h",
            "http://[::1]:80/",
            "http://localhost:3000/x",
            "https://LOCALHOST/",
        ] {
            assert!(is_loopback_url(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/",
            "http://example.com/",
            "http://localhost.example.com/",
            "ftp://127.0.0.1/",
            "not a url",
            "http://[::2]/",
            "http://0.0.0.0/",
        ] {
            assert!(!is_loopback_url(bad), "{bad}");
        }
    }

    #[test]
    fn body_shapes_follow_fal() {
        let out = json!({"images": []});
        let ok = webhook_body("r", "g", &Directives::default(), &out);
        assert_eq!(ok["status"], "OK");
        assert_eq!(ok["payload"], out);
        assert!(ok["error"].is_null());
        let err = webhook_body("r", "g", &Directives::parse("#error"), &out);
        assert_eq!(err["status"], "ERROR");
        assert_eq!(err["error"], "Invalid status code: 422");
        assert_eq!(err["payload"]["detail"][0]["msg"], MODEL_FAILURE_MSG);
        let null = webhook_body("r", "g", &Directives::parse("#payload-null"), &out);
        assert_eq!(null["status"], "OK");
        assert!(null["payload"].is_null());
        assert_eq!(null["payload_error"], "Output could not be serialized");
    }
}
