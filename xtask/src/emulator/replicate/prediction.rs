//! One prediction: its life (`starting` → `processing` → `succeeded` | `failed` | `canceled`), its JSON as the
//! API answers it, what inspection adds, and the webhook a finished one sends.

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::emulator::directives::{Directives, OutputShape};
use crate::emulator::outputs::MediaSpec;
use crate::emulator::replies::MODEL_FAILURE_MSG;
use crate::emulator::state::{DeliveryAttempt, MediaFetch, unix_ms};
use crate::emulator::webhook::{Signing, WebhookJob};

/// What `logs` reads once the run has started.
const LOG: &str = "emulated run\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
}

impl Status {
    fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Canceled)
    }
}

/// What a create call asks for, from its path and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// `owner/name`.
    pub model: String,
    /// `hidden` for an official model, as Replicate reports it.
    pub version: String,
    pub input: Value,
    pub webhook: Option<String>,
    /// `webhook_events_filter`; `None`: every event (only `completed` is emulated).
    pub events: Option<Vec<String>>,
}

pub struct Prediction {
    pub id: String,
    pub order: Order,
    pub directives: Directives,
    status: Status,
    created_at_ms: u64,
    started_at_ms: Option<u64>,
    completed_at_ms: Option<u64>,
    media: MediaSpec,
    /// The output it delivers when it succeeds (`null` for `#error` and `#payload-null`).
    output: Value,
    urls: Value,
    /// The Standard Webhooks message id: the same on every attempt and every `#deliveries` copy.
    webhook_id: String,
    pub deliveries: Vec<DeliveryAttempt>,
    media_fetches: u64,
    finished: watch::Sender<bool>,
}

impl Prediction {
    pub fn new(order: Order, public_base: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let directives = Directives::from_input(&order.input);
        let media = MediaSpec::new(&order.model, &directives);
        let own_url = format!("{public_base}/replicate/delivery/{id}/{}", media.file_name);
        let media_url = directives.media_url.clone().unwrap_or(own_url);
        let get = format!("{public_base}/replicate/v1/predictions/{id}");
        let urls = json!({
            "get": get,
            "cancel": format!("{get}/cancel"),
            "web": format!("{public_base}/replicate/v1/_emulator/predictions/{id}"),
        });
        Prediction {
            output: output_for(&media_url, &directives),
            webhook_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            id,
            order,
            directives,
            status: Status::Starting,
            created_at_ms: unix_ms(),
            started_at_ms: None,
            completed_at_ms: None,
            media,
            urls,
            deliveries: Vec::new(),
            media_fetches: 0,
            finished: watch::channel(false).0,
        }
    }

    /// Turns true once the prediction is over.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.finished.subscribe()
    }

    /// `starting` -> `processing`; false when it was cancelled meanwhile.
    pub fn start(&mut self) -> bool {
        if self.status == Status::Starting {
            self.status = Status::Processing;
            self.started_at_ms = Some(unix_ms());
        }
        self.status == Status::Processing
    }

    /// Ends the run as the directives script it; the webhook to deliver, if any.
    pub fn finish(&mut self) -> Option<WebhookJob> {
        let status = if self.directives.error {
            Status::Failed
        } else {
            Status::Succeeded
        };
        self.settle(status)
    }

    pub fn cancel(&mut self) -> Option<WebhookJob> {
        self.settle(Status::Canceled)
    }

    /// -> a terminal status, unless it has one already (a finished prediction stays as it is).
    fn settle(&mut self, status: Status) -> Option<WebhookJob> {
        if self.status.is_terminal() {
            return None;
        }
        self.status = status;
        self.completed_at_ms = Some(unix_ms());
        self.finished.send_replace(true);
        self.webhook_job()
    }

    /// The `completed` event, unless there is no webhook, `#no-webhook`, or a filter without that event.
    fn webhook_job(&self) -> Option<WebhookJob> {
        let url = self
            .order
            .webhook
            .clone()
            .filter(|_| !self.directives.no_webhook)?;
        if let Some(events) = &self.order.events
            && !events.iter().any(|e| e == "completed")
        {
            return None;
        }
        // Serializing a `Value` cannot fail; the exact bytes signed are the bytes sent.
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        Some(WebhookJob {
            request_id: self.id.clone(),
            url,
            body: body.into(),
            deliveries: self.directives.deliveries,
            concurrent: self.directives.concurrent,
            signing: Signing::Standard {
                webhook_id: self.webhook_id.clone(),
            },
        })
    }

    /// The prediction as `GET urls.get` answers it.
    pub fn to_json(&self) -> Value {
        let output = match self.status {
            Status::Succeeded => self.output.clone(),
            _ => Value::Null,
        };
        json!({
            "id": self.id,
            "model": self.order.model,
            "version": self.order.version,
            "input": self.order.input,
            "output": output,
            "error": (self.status == Status::Failed).then_some(MODEL_FAILURE_MSG),
            "logs": if self.started_at_ms.is_some() { LOG } else { "" },
            "status": self.status,
            "source": "api",
            "data_removed": false,
            "created_at": rfc3339(Some(self.created_at_ms)),
            "started_at": rfc3339(self.started_at_ms),
            "completed_at": rfc3339(self.completed_at_ms),
            "metrics": self.metrics(),
            "urls": self.urls,
        })
    }

    fn metrics(&self) -> Value {
        let Some(done) = self.completed_at_ms else {
            return json!({});
        };
        let seconds_since = |from: u64| done.saturating_sub(from) as f64 / 1000.0;
        json!({
            "predict_time": self.started_at_ms.map(seconds_since),
            "total_time": seconds_since(self.created_at_ms),
        })
    }

    /// [`Self::to_json`] with the output it delivers, the webhook it was given and what became of it, so that a
    /// delivery can be made and signed by hand.
    pub fn inspection(&self) -> Value {
        let mut view = self.to_json();
        view["output"] = self.output.clone();
        view["webhook"] = json!(self.order.webhook);
        view["webhook_events_filter"] = json!(self.order.events);
        view["webhook_id"] = json!(self.webhook_id);
        view["deliveries"] = json!(self.deliveries);
        view["media_fetches"] = json!(self.media_fetches);
        view
    }

    /// Counts one fetch of its result file; `None` when `file_name` is not that file.
    pub fn media_fetch(&mut self, file_name: &str) -> Option<MediaFetch> {
        if self.media.file_name != file_name {
            return None;
        }
        self.media_fetches += 1;
        Some(MediaFetch {
            media: self.media.clone(),
            directives: self.directives.clone(),
            fetch_number: self.media_fetches,
            // `#queue-media-status` is fal's: a prediction is served as a sync run's file.
            queued: false,
        })
    }
}

/// A URL string for one file, an array of them for `#output-shape=array`.
fn output_for(media_url: &str, directives: &Directives) -> Value {
    if directives.error || directives.payload_null {
        return Value::Null;
    }
    match directives.output_shape {
        OutputShape::Array => json!([media_url]),
        OutputShape::Media | OutputShape::Output => json!(media_url),
    }
}

fn rfc3339(unix_ms: Option<u64>) -> Option<String> {
    let ms = i64::try_from(unix_ms?).ok()?;
    let at = chrono::DateTime::from_timestamp_millis(ms)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(prompt: &str) -> Order {
        Order {
            model: "black-forest-labs/flux-schnell".into(),
            version: "hidden".into(),
            input: json!({"prompt": prompt}),
            webhook: Some("http://127.0.0.1:9/hook".into()),
            events: Some(vec!["completed".into()]),
        }
    }

    #[test]
    fn a_run_goes_starting_processing_succeeded() {
        let mut p = Prediction::new(order("cat"), "http://e");
        let finished = p.subscribe();
        let json = p.to_json();
        assert_eq!(
            (json["status"].as_str(), json["logs"].as_str()),
            (Some("starting"), Some(""))
        );
        assert!(json["output"].is_null() && json["started_at"].is_null());
        assert_eq!(json["metrics"], json!({}));
        assert!(p.start());
        assert_eq!(p.to_json()["status"], "processing");
        let job = p.finish().expect("a webhook job");
        assert!(*finished.borrow());
        let json = p.to_json();
        assert_eq!(json["status"], "succeeded");
        assert_eq!(
            json["output"],
            format!("http://e/replicate/delivery/{}/output.png", p.id)
        );
        assert!(json["metrics"]["predict_time"].is_f64());
        assert!(json["completed_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(serde_json::from_slice::<Value>(&job.body).unwrap(), json);
        assert!(matches!(job.signing, Signing::Standard { .. }));
        assert!(p.cancel().is_none(), "a finished prediction stays as it is");
        assert_eq!(p.to_json()["status"], "succeeded");
    }

    #[test]
    fn cancel_before_start_and_error_runs() {
        let mut p = Prediction::new(order("cat"), "http://e");
        assert!(p.cancel().is_some(), "completed covers canceled");
        assert!(!p.start());
        assert!(p.finish().is_none());
        let json = p.to_json();
        assert_eq!(json["status"], "canceled");
        assert!(json["metrics"]["predict_time"].is_null());

        let mut p = Prediction::new(order("#error"), "http://e");
        p.finish();
        let json = p.to_json();
        assert_eq!(
            (json["status"].as_str(), json["error"].as_str()),
            (Some("failed"), Some(MODEL_FAILURE_MSG))
        );
        assert!(json["output"].is_null());
    }

    #[test]
    fn output_shapes_and_webhook_conditions() {
        let p = Prediction::new(
            order("#output-shape=array #media-type=video/mp4"),
            "http://e",
        );
        assert_eq!(
            p.inspection()["output"],
            json!([format!("http://e/replicate/delivery/{}/output.mp4", p.id)])
        );
        let p = Prediction::new(order("#media-url=http://x/y.png #payload-null"), "http://e");
        assert!(p.inspection()["output"].is_null());
        let mut p = Prediction::new(order("#no-webhook"), "http://e");
        assert!(p.finish().is_none());
        let mut filtered = order("x");
        filtered.events = Some(vec!["start".into()]);
        assert!(Prediction::new(filtered, "http://e").finish().is_none());
        let mut unfiltered = order("x");
        unfiltered.events = None;
        assert!(Prediction::new(unfiltered, "http://e").finish().is_some());
    }
}
