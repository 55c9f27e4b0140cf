//! Replicate's wire types: a prediction as create, get, cancel and the `completed` webhook show it, read
//! leniently (unknown fields ignored, missing optional ones null), and its output in the shape completion reads.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use url::Url;

/// Where a prediction stands: `starting` → `processing` → `succeeded` | `failed` | `canceled`, or `aborted` (its
/// deadline passed before it started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictionStatus {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    Aborted,
}

impl PredictionStatus {
    /// Over: it will not change again, and its webhook's `completed` event is (or was) on its way.
    pub fn is_terminal(self) -> bool {
        self == PredictionStatus::Succeeded || self.is_failure()
    }

    /// Over without an output: failed, cancelled, or aborted before it started. Every status is named, so a new
    /// one has to be placed here.
    pub fn is_failure(self) -> bool {
        match self {
            PredictionStatus::Failed | PredictionStatus::Canceled | PredictionStatus::Aborted => {
                true
            }
            PredictionStatus::Starting
            | PredictionStatus::Processing
            | PredictionStatus::Succeeded => false,
        }
    }
}

/// The URLs a prediction answered with. Used as given, never rebuilt, and only once checked to be on
/// Replicate's hosts ([`crate::fal::ProviderUrl::on_provider_hosts`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PredictionUrls {
    pub get: String,
    /// Absent from some answers; then the prediction cannot be cancelled through us.
    #[serde(default)]
    pub cancel: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub status: PredictionStatus,
    /// The input as Replicate recorded it (`null` when not shown).
    #[serde(default)]
    pub input: Value,
    /// The model's output: a URL, an array of URLs, an object, or `null` until it succeeds.
    #[serde(default)]
    pub output: Value,
    /// Why it failed: Replicate's error is a string or JSON; JSON is kept as its text.
    #[serde(default, deserialize_with = "error_text")]
    pub error: Option<String>,
    #[serde(default)]
    pub logs: Option<String>,
    #[serde(default)]
    pub metrics: Value,
    pub urls: PredictionUrls,
}

impl Prediction {
    /// Why a prediction that ended without output did: Replicate's error, else its status (`replicate prediction
    /// canceled`); `None` while it runs or once it succeeded.
    pub fn failure(&self) -> Option<String> {
        self.status.is_failure().then(|| {
            self.error
                .clone()
                .unwrap_or_else(|| format!("Replicate prediction {:?}", self.status).to_lowercase())
        })
    }

    /// The output in the shape completion's `result_media` reads: a URL (or an array's first URL) becomes
    /// `{"output": {"url": …}}`, an object with a `url` stays `{"output": {…}}`, anything else `{"output": null}`;
    /// plus the input's `seed`, when it had one, at the top.
    pub fn canonical_output(&self) -> Value {
        let as_url = |v: &Value| v.as_str().and_then(url_text).map(|u| json!({ "url": u }));
        let output = match &self.output {
            Value::String(_) => as_url(&self.output),
            Value::Array(items) => items.iter().find_map(as_url),
            Value::Object(obj)
                if obj
                    .get("url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| !u.trim().is_empty()) =>
            {
                Some(self.output.clone())
            }
            _ => None,
        };
        let mut canonical = json!({ "output": output });
        if let Some(seed) = self.input.get("seed").filter(|s| !s.is_null()) {
            canonical["seed"] = seed.clone();
        }
        canonical
    }
}

/// A string that is an absolute URL (any scheme: the media policy decides which it fetches), trimmed; text that is
/// not one (a language model's tokens) is no result.
fn url_text(s: &str) -> Option<String> {
    let s = s.trim();
    Url::parse(s).ok().map(|_| s.to_owned())
}

fn error_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s).filter(|s| !s.trim().is_empty()),
        Some(other) => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prediction as Replicate documents it (`GET /v1/predictions/{id}`), with `status`, `output` and `error`
    /// swapped in.
    fn documented(status: &str, output: Value, error: Value) -> Value {
        json!({
            "id": "gm3qorzdhgbfurvjtvhg6dckhu",
            "model": "replicate/hello-world",
            "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
            "input": {"text": "Alice", "seed": 42},
            "logs": "",
            "output": output,
            "data_removed": false,
            "error": error,
            "status": status,
            "created_at": "2023-09-08T16:19:34.765994Z",
            "started_at": "2023-09-08T16:19:34.779176Z",
            "completed_at": "2023-09-08T16:19:34.791859Z",
            "metrics": {"predict_time": 0.012683, "total_time": 0.025865},
            "urls": {
                "web": "https://replicate.com/p/gm3qorzdhgbfurvjtvhg6dckhu",
                "get": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu",
                "cancel": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel",
                "stream": "https://stream.replicate.com/v1/files/abc"
            }
        })
    }

    fn parse(v: Value) -> Prediction {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_status_parses_and_only_the_last_three_are_terminal() {
        for (text, status, terminal) in [
            ("starting", PredictionStatus::Starting, false),
            ("processing", PredictionStatus::Processing, false),
            ("succeeded", PredictionStatus::Succeeded, true),
            ("failed", PredictionStatus::Failed, true),
            ("canceled", PredictionStatus::Canceled, true),
            ("aborted", PredictionStatus::Aborted, true),
        ] {
            let p = parse(documented(text, Value::Null, Value::Null));
            assert_eq!(p.status, status);
            assert_eq!(status.is_terminal(), terminal, "{text}");
        }
        let unknown = documented("exploded", Value::Null, Value::Null);
        assert!(serde_json::from_value::<Prediction>(unknown).is_err());
    }

    #[test]
    fn a_documented_prediction_keeps_its_fields() {
        let p = parse(documented(
            "succeeded",
            json!("https://replicate.delivery/x/out.png"),
            Value::Null,
        ));
        assert_eq!(p.id, "gm3qorzdhgbfurvjtvhg6dckhu");
        assert_eq!(p.error, None);
        assert_eq!(p.logs.as_deref(), Some(""));
        assert_eq!(p.metrics["predict_time"], json!(0.012683));
        assert_eq!(
            p.urls,
            PredictionUrls {
                get: "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu".into(),
                cancel: Some(
                    "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel"
                        .into()
                ),
            }
        );
    }

    #[test]
    fn a_minimal_prediction_reads_missing_fields_as_null() {
        let p = parse(json!({"id": "p1", "status": "starting", "urls": {"get": "https://api/p1"}}));
        assert_eq!(
            (p.input, p.output, p.error, p.logs, p.metrics, p.urls.cancel),
            (Value::Null, Value::Null, None, None, Value::Null, None)
        );
        let p = parse(
            json!({"id": "p1", "status": "starting", "logs": null, "urls": {"get": "g", "cancel": null}}),
        );
        assert_eq!((p.logs, p.urls.cancel), (None, None));
        assert!(
            serde_json::from_value::<Prediction>(json!({"id": "p1", "status": "starting"}))
                .is_err()
        );
    }

    #[test]
    fn errors_keep_their_text_whether_string_or_json() {
        let p = parse(documented(
            "failed",
            Value::Null,
            json!("CUDA out of memory"),
        ));
        assert_eq!(p.error.as_deref(), Some("CUDA out of memory"));
        let p = parse(documented(
            "failed",
            Value::Null,
            json!({"message": "NSFW content detected", "code": "E005"}),
        ));
        let text = p.error.unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            json!({"message": "NSFW content detected", "code": "E005"})
        );
        let p = parse(documented("failed", Value::Null, json!("  ")));
        assert_eq!(p.error, None);
    }

    #[test]
    fn outputs_take_the_shape_completion_reads() {
        let url = "https://replicate.delivery/pbxt/abc/out-0.webp";
        let canonical =
            |output: Value| parse(documented("succeeded", output, Value::Null)).canonical_output();
        let want = json!({"output": {"url": url}, "seed": 42});
        assert_eq!(canonical(json!(url)), want);
        assert_eq!(
            canonical(json!([url, "https://replicate.delivery/x/out-1.webp"])),
            want
        );
        assert_eq!(canonical(json!(["not a url", url])), want);
        let obj = json!({"url": url, "content_type": "image/webp"});
        assert_eq!(canonical(obj.clone()), json!({"output": obj, "seed": 42}));
        for nothing in [
            Value::Null,
            json!([]),
            json!(["Hello", " world"]),
            json!({"text": "hi"}),
            json!({"url": ""}),
            json!(7),
            json!(""),
        ] {
            assert_eq!(
                canonical(nothing.clone()),
                json!({"output": null, "seed": 42}),
                "{nothing}"
            );
        }
    }

    #[test]
    fn no_seed_in_the_input_means_none_in_the_output() {
        let mut v = documented(
            "succeeded",
            json!("https://replicate.delivery/x.mp4"),
            Value::Null,
        );
        v["input"] = json!({"prompt": "cat", "seed": null});
        let out = parse(v).canonical_output();
        assert_eq!(
            out,
            json!({"output": {"url": "https://replicate.delivery/x.mp4"}})
        );
    }
}
