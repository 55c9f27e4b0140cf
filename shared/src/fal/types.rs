//! fal's wire types (`fal-api.md`): queue answers, statuses, cancel outcomes and error bodies.

use serde::Deserialize;
use serde_json::Value;

/// The queue's answer to a submit. The three URLs are stored and used as given, never rebuilt; only the request
/// id is required (an answer without it is the one a request cannot be followed from), and a URL fal leaves out
/// is recorded absent, not a reason to treat a request fal is running as refused.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct QueueSubmitted {
    pub request_id: String,
    #[serde(default)]
    pub gateway_request_id: Option<String>,
    #[serde(default)]
    pub status_url: Option<String>,
    #[serde(default)]
    pub response_url: Option<String>,
    #[serde(default)]
    pub cancel_url: Option<String>,
    #[serde(default)]
    pub queue_position: Option<i64>,
}

/// Where a queued request stands. fal has no FAILED status: a failed request is `Completed` and its result fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueState {
    InQueue { position: Option<i64> },
    InProgress,
    Completed,
}

impl QueueState {
    pub(crate) fn from_body(body: &Value) -> Option<Self> {
        match body.get("status")?.as_str()? {
            "IN_QUEUE" => Some(QueueState::InQueue {
                position: body.get("queue_position").and_then(Value::as_i64),
            }),
            "IN_PROGRESS" => Some(QueueState::InProgress),
            "COMPLETED" => Some(QueueState::Completed),
            _ => None,
        }
    }
}

/// fal's answer to a cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The request was still queued and will not run.
    Cancelled,
    /// The request was running; fal will try to stop it.
    CancellationRequested,
    AlreadyCompleted,
    NotFound,
}

impl CancelOutcome {
    pub(crate) fn from_status(status: &str) -> Option<Self> {
        match status {
            "OK" => Some(CancelOutcome::Cancelled),
            "CANCELLATION_REQUESTED" => Some(CancelOutcome::CancellationRequested),
            "ALREADY_COMPLETED" => Some(CancelOutcome::AlreadyCompleted),
            "NOT_FOUND" => Some(CancelOutcome::NotFound),
            _ => None,
        }
    }
}

/// fal's error body: `{"detail": "..." | [{loc, msg, type}], "error_type": "..."}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub detail: Option<Value>,
    #[serde(default)]
    pub error_type: Option<String>,
}

impl ErrorBody {
    /// A one-line message: the string detail, or the validation messages joined.
    pub fn message(&self) -> Option<String> {
        match self.detail.as_ref()? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => {
                let msgs: Vec<String> = items
                    .iter()
                    .map(|item| {
                        let msg = item
                            .get("msg")
                            .and_then(Value::as_str)
                            .unwrap_or("invalid input");
                        let loc = item
                            .get("loc")
                            .and_then(Value::as_array)
                            .map(|l| {
                                l.iter()
                                    .filter_map(|p| match p {
                                        Value::String(s) if s != "body" => Some(s.clone()),
                                        Value::Number(n) => Some(n.to_string()),
                                        _ => None,
                                    })
                                    .collect::<Vec<_>>()
                                    .join(".")
                            })
                            .unwrap_or_default();
                        if loc.is_empty() {
                            msg.to_owned()
                        } else {
                            format!("{loc}: {msg}")
                        }
                    })
                    .collect();
                (!msgs.is_empty()).then(|| msgs.join("; "))
            }
            other => Some(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_messages_from_string_and_validation_details() {
        let b: ErrorBody = serde_json::from_value(
            json!({"detail":"Runner down","error_type":"runner_scheduling_failure"}),
        )
        .unwrap();
        assert_eq!(b.message().as_deref(), Some("Runner down"));
        assert_eq!(b.error_type.as_deref(), Some("runner_scheduling_failure"));
        let b: ErrorBody = serde_json::from_value(json!({"detail":[
            {"loc":["body","image_size"],"msg":"bad size","type":"value_error"},
            {"loc":["body","num_images",0],"msg":"too many","type":"value_error"}]}))
        .unwrap();
        assert_eq!(
            b.message().as_deref(),
            Some("image_size: bad size; num_images.0: too many")
        );
        assert_eq!(ErrorBody::default().message(), None);
    }

    #[test]
    fn a_submit_answer_needs_only_its_request_id() {
        let full: QueueSubmitted = serde_json::from_value(json!({
            "request_id": "r1", "status": "IN_QUEUE", "queue_position": 0,
            "status_url": "https://queue.fal.run/a/b/requests/r1/status",
            "response_url": "https://queue.fal.run/a/b/requests/r1",
            "cancel_url": "https://queue.fal.run/a/b/requests/r1/cancel",
        }))
        .unwrap();
        assert_eq!(
            full.cancel_url.as_deref(),
            Some("https://queue.fal.run/a/b/requests/r1/cancel")
        );
        let bare: QueueSubmitted = serde_json::from_value(json!({"request_id": "r2"})).unwrap();
        assert_eq!(
            (bare.request_id.as_str(), bare.status_url, bare.cancel_url),
            ("r2", None, None)
        );
        assert!(
            serde_json::from_value::<QueueSubmitted>(json!({"status_url": "https://x"})).is_err()
        );
    }

    #[test]
    fn queue_states_and_cancel_outcomes_parse() {
        assert_eq!(
            QueueState::from_body(&json!({"status":"IN_QUEUE","queue_position":3})),
            Some(QueueState::InQueue { position: Some(3) })
        );
        assert_eq!(
            QueueState::from_body(&json!({"status":"COMPLETED"})),
            Some(QueueState::Completed)
        );
        assert_eq!(QueueState::from_body(&json!({"status":"FAILED"})), None);
        assert_eq!(
            CancelOutcome::from_status("ALREADY_COMPLETED"),
            Some(CancelOutcome::AlreadyCompleted)
        );
    }
}
