//! The Replicate HTTP client: create a prediction (with a webhook, optionally waiting for it), read it, cancel it.
//! Every call has a timeout; Replicate's problem-shaped error bodies become [`ProviderError::Api`]. The endpoint comes
//! in typed ([`PredictionsEndpoint`]) from configuration and later URLs as [`ProviderUrl`]s, so this client knows
//! no host.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use url::Url;

use super::endpoint::PredictionsEndpoint;
use super::types::Prediction;
use crate::fal::ProviderUrl;
use crate::provider::{ProviderError, raw_message, read_capped};

/// The longest `Prefer: wait` Replicate honours.
const MAX_WAIT_SECS: u64 = 60;
/// How long after its `Prefer: wait` a create may take to be answered: Replicate answers when the wait is over, so
/// this is the network's share only, and a create with a wait ends within the bound its caller computed the wait
/// from.
const WAIT_ANSWER_MARGIN: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct ReplicateClient {
    http: reqwest::Client,
    token: SecretString,
    /// Bound of each call; a create that waits gets its wait on top.
    request_timeout: Duration,
}

impl ReplicateClient {
    pub fn new(http: reqwest::Client, token: SecretString, request_timeout: Duration) -> Self {
        ReplicateClient {
            http,
            token,
            request_timeout,
        }
    }

    /// Creates a prediction. With a webhook, Replicate calls it once the prediction is over (`completed` only).
    /// With `wait`, Replicate holds the answer until the prediction is over or `wait` (whole seconds, 1..=60) has
    /// passed, so the answer may still be running. Replicate answers 201 (or 200) with the prediction.
    pub async fn create(
        &self,
        endpoint: &PredictionsEndpoint,
        input: &Value,
        webhook: Option<&Url>,
        wait: Option<Duration>,
    ) -> Result<Prediction, ProviderError> {
        let mut request = self
            .http
            .post(endpoint.url().clone())
            .bearer_auth(self.token.expose_secret())
            .json(&create_body(endpoint, input, webhook))
            .timeout(self.request_timeout);
        if let Some(wait) = wait {
            let seconds = wait_secs(wait);
            request = request
                .header("Prefer", format!("wait={seconds}"))
                .timeout(Duration::from_secs(seconds) + WAIT_ANSWER_MARGIN);
        }
        let response = request.send().await.map_err(ProviderError::from_reqwest)?;
        prediction_or_error(response, |s| {
            matches!(s, StatusCode::CREATED | StatusCode::OK)
        })
        .await
    }

    /// The prediction now (`GET urls.get`).
    pub async fn get(&self, url: &ProviderUrl) -> Result<Prediction, ProviderError> {
        self.at(self.http.get(url.url().clone())).await
    }

    /// Asks Replicate to cancel (`POST urls.cancel`); a prediction already over is answered as it is.
    pub async fn cancel(&self, url: &ProviderUrl) -> Result<Prediction, ProviderError> {
        self.at(self.http.post(url.url().clone())).await
    }

    /// A call on one of the prediction's own URLs, with the token and the request bound.
    async fn at(&self, request: reqwest::RequestBuilder) -> Result<Prediction, ProviderError> {
        let response = request
            .bearer_auth(self.token.expose_secret())
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(ProviderError::from_reqwest)?;
        prediction_or_error(response, |s| s.is_success()).await
    }
}

/// `{input, version?, webhook?, webhook_events_filter?}`: only the `completed` event, so one delivery per
/// prediction, as fal's webhook gives.
fn create_body(endpoint: &PredictionsEndpoint, input: &Value, webhook: Option<&Url>) -> Value {
    let mut body = Map::new();
    body.insert("input".into(), input.clone());
    if let Some(version) = endpoint.version() {
        body.insert("version".into(), json!(version));
    }
    if let Some(webhook) = webhook {
        body.insert("webhook".into(), json!(webhook.as_str()));
        body.insert("webhook_events_filter".into(), json!(["completed"]));
    }
    Value::Object(body)
}

fn wait_secs(wait: Duration) -> u64 {
    wait.as_secs().clamp(1, MAX_WAIT_SECS)
}

async fn prediction_or_error(
    response: reqwest::Response,
    ok: fn(StatusCode) -> bool,
) -> Result<Prediction, ProviderError> {
    let status = response.status();
    if ok(status) {
        let bytes = response
            .bytes()
            .await
            .map_err(ProviderError::from_reqwest)?;
        return serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Decode(format!("prediction: {e}")));
    }
    // The status is the answer: a body that breaks off leaves the error without its message, not a lost answer.
    let bytes = read_capped(response).await.unwrap_or_default();
    Err(api_error(status, &bytes))
}

/// Replicate's problem body, `{"title", "detail", "status"}`: the title is the error type, the detail the message
/// (and kept as the detail); an unreadable body gives its first 500 characters, an empty one the status' reason.
fn api_error(status: StatusCode, bytes: &[u8]) -> ProviderError {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let title = text("title");
    let detail = body.get("detail").filter(|d| !d.is_null()).cloned();
    let message = match &detail {
        Some(Value::String(_)) => text("detail"),
        Some(other) => Some(other.to_string()),
        None => None,
    }
    .or_else(|| title.clone())
    .unwrap_or_else(|| raw_message(status, bytes));
    ProviderError::Api {
        status: status.as_u16(),
        error_type: title,
        message,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::PredictionStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const TOKEN: &str = "r8_test-token";

    fn client(timeout: Duration) -> ReplicateClient {
        ReplicateClient::new(
            reqwest::Client::builder().no_proxy().build().unwrap(),
            SecretString::from(TOKEN),
            timeout,
        )
    }

    fn prediction_json(base: &str) -> String {
        json!({
            "id": "p1", "status": "starting", "input": {"prompt": "cat"}, "output": null, "error": null,
            "logs": "", "metrics": {},
            "urls": {"get": format!("{base}/v1/predictions/p1"), "cancel": format!("{base}/v1/predictions/p1/cancel")}
        })
        .to_string()
    }

    /// One request read (head lowercased, body as JSON) and answered with `status` and `body`.
    struct Seen {
        head: String,
        body: Value,
    }

    async fn serve_once(
        status: &'static str,
        body: String,
    ) -> (String, tokio::task::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before the head ended");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            while buf.len() < head_end + length {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before the body ended");
                buf.extend_from_slice(&chunk[..n]);
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes()).await.unwrap();
            let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
            Seen { head, body }
        });
        (base, handle)
    }

    fn provider_url(url: &str, base: &str) -> ProviderUrl {
        ProviderUrl::on_provider_hosts(url, &[base.to_owned()]).unwrap()
    }

    #[test]
    fn create_bodies_carry_the_version_and_the_completed_webhook_only_when_given() {
        let input = json!({"prompt": "cat", "seed": 1});
        let official = PredictionsEndpoint::new(Some("https://r/v1"), "acme/flux").unwrap();
        assert_eq!(
            create_body(&official, &input, None),
            json!({"input": input})
        );
        let version = "a".repeat(64);
        let versioned = PredictionsEndpoint::new(Some("https://r/v1"), &version).unwrap();
        let hook = Url::parse("https://hooks.example/replicate?job=1").unwrap();
        assert_eq!(
            create_body(&versioned, &input, Some(&hook)),
            json!({
                "input": input,
                "version": version,
                "webhook": "https://hooks.example/replicate?job=1",
                "webhook_events_filter": ["completed"],
            })
        );
    }

    #[test]
    fn waits_are_whole_seconds_within_replicates_bounds() {
        assert_eq!(wait_secs(Duration::from_millis(200)), 1);
        assert_eq!(wait_secs(Duration::from_millis(5_900)), 5);
        assert_eq!(wait_secs(Duration::from_secs(600)), 60);
    }

    #[tokio::test]
    async fn a_create_for_a_model_posts_to_its_path_with_the_token_and_the_wait() {
        let (base, seen) = serve_once("201 Created", prediction_json("http://x")).await;
        let endpoint = PredictionsEndpoint::new(Some(&format!("{base}/v1")), "acme/flux").unwrap();
        let hook = Url::parse("http://127.0.0.1:9/hook").unwrap();
        let p = client(Duration::from_secs(5))
            .create(
                &endpoint,
                &json!({"prompt": "cat"}),
                Some(&hook),
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert_eq!(
            (p.id.as_str(), p.status),
            ("p1", PredictionStatus::Starting)
        );
        let seen = seen.await.unwrap();
        assert!(
            seen.head
                .starts_with("post /v1/models/acme/flux/predictions http/1.1\r\n"),
            "{}",
            seen.head
        );
        assert!(seen.head.contains(&format!(
            "authorization: bearer {}\r\n",
            TOKEN.to_lowercase()
        )));
        assert!(seen.head.contains("prefer: wait=5\r\n"));
        assert_eq!(
            seen.body,
            json!({"input": {"prompt": "cat"}, "webhook": "http://127.0.0.1:9/hook", "webhook_events_filter": ["completed"]})
        );
    }

    #[tokio::test]
    async fn a_create_for_a_version_posts_to_predictions_without_waiting() {
        let (base, seen) = serve_once("201 Created", prediction_json("http://x")).await;
        let version = "0".repeat(64);
        let endpoint = PredictionsEndpoint::new(Some(&format!("{base}/v1")), &version).unwrap();
        client(Duration::from_secs(5))
            .create(&endpoint, &json!({"prompt": "cat"}), None, None)
            .await
            .unwrap();
        let seen = seen.await.unwrap();
        assert!(seen.head.starts_with("post /v1/predictions http/1.1\r\n"));
        assert!(!seen.head.contains("prefer:"));
        assert_eq!(
            seen.body,
            json!({"input": {"prompt": "cat"}, "version": version})
        );
    }

    #[tokio::test]
    async fn get_and_cancel_use_the_urls_as_given() {
        let (base, seen) = serve_once("200 OK", prediction_json("http://x")).await;
        let url = provider_url(&format!("{base}/v1/predictions/p1"), &base);
        client(Duration::from_secs(5)).get(&url).await.unwrap();
        assert!(
            seen.await
                .unwrap()
                .head
                .starts_with("get /v1/predictions/p1 http/1.1\r\n")
        );

        let (base, seen) = serve_once("200 OK", prediction_json("http://x")).await;
        let url = provider_url(&format!("{base}/v1/predictions/p1/cancel"), &base);
        client(Duration::from_secs(5)).cancel(&url).await.unwrap();
        let head = seen.await.unwrap().head;
        assert!(head.starts_with("post /v1/predictions/p1/cancel http/1.1\r\n"));
        assert!(head.contains("authorization: bearer "));
    }

    #[tokio::test]
    async fn problem_bodies_become_typed_errors() {
        let problem = json!({"title": "Input validation failed", "detail": "- input.prompt: required", "status": 422});
        let (base, _seen) = serve_once("422 Unprocessable Entity", problem.to_string()).await;
        let endpoint = PredictionsEndpoint::new(Some(&base), "acme/flux").unwrap();
        let err = client(Duration::from_secs(5))
            .create(&endpoint, &json!({}), None, None)
            .await
            .unwrap_err();
        match &err {
            ProviderError::Api {
                status,
                error_type,
                message,
                detail,
            } => {
                assert_eq!(*status, 422);
                assert_eq!(error_type.as_deref(), Some("Input validation failed"));
                assert_eq!(message, "- input.prompt: required");
                assert_eq!(detail, &Some(json!("- input.prompt: required")));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.is_caller_error());

        // A 2xx other than 200/201 is not a created prediction.
        let (base, _seen) = serve_once("202 Accepted", "{}".into()).await;
        let endpoint = PredictionsEndpoint::new(Some(&base), "acme/flux").unwrap();
        let err = client(Duration::from_secs(5))
            .create(&endpoint, &json!({}), None, None)
            .await;
        assert!(
            matches!(err, Err(ProviderError::Api { status: 202, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn unreadable_and_empty_error_bodies_still_say_something() {
        let e = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            br#"{"title":"Request was throttled"}"#,
        );
        assert!(
            matches!(&e, ProviderError::Api { message, detail: None, .. } if message == "Request was throttled")
        );
        assert!(e.is_retryable());
        let e = api_error(StatusCode::BAD_GATEWAY, b"");
        assert!(
            matches!(&e, ProviderError::Api { message, error_type: None, .. } if message == "Bad Gateway")
        );
        let long = "x".repeat(2_000);
        let e = api_error(StatusCode::INTERNAL_SERVER_ERROR, long.as_bytes());
        assert!(matches!(&e, ProviderError::Api { message, .. } if message.len() == 500));
        let e = api_error(StatusCode::NOT_FOUND, br#"{"detail":{"reason":"gone"}}"#);
        assert!(
            matches!(&e, ProviderError::Api { message, .. } if message == r#"{"reason":"gone"}"#)
        );
    }

    #[tokio::test]
    async fn an_error_status_whose_body_breaks_off_is_still_that_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            let _ = conn.read(&mut chunk).await.unwrap();
            // 100 bytes announced, 6 sent, then the connection closes.
            let head = "HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 100\r\n\r\n{\"deta";
            conn.write_all(head.as_bytes()).await.unwrap();
        });
        let endpoint = PredictionsEndpoint::new(Some(&base), "acme/flux").unwrap();
        let err = client(Duration::from_secs(5))
            .create(&endpoint, &json!({}), None, None)
            .await
            .unwrap_err();
        server.await.unwrap();
        assert!(
            matches!(err, ProviderError::Api { status: 422, .. }),
            "{err:?}"
        );
        assert!(!err.may_have_been_accepted());
    }

    #[tokio::test]
    async fn failures_name_neither_the_url_nor_the_token() {
        // Undecodable success body.
        let (base, _seen) = serve_once("200 OK", "not json!".into()).await;
        let url = provider_url(&format!("{base}/v1/predictions/p1?secret=s3"), &base);
        let decode = client(Duration::from_secs(5)).get(&url).await.unwrap_err();
        assert!(matches!(decode, ProviderError::Decode(_)), "{decode:?}");

        // A listener that never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", silent.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        });
        let url = provider_url(&format!("{base}/v1/predictions/p1?secret=s3"), &base);
        let timeout = client(Duration::from_millis(200))
            .cancel(&url)
            .await
            .unwrap_err();
        assert!(matches!(timeout, ProviderError::Timeout), "{timeout:?}");
        hold.abort();

        // Nothing listening.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let url = provider_url(&format!("{base}/v1/predictions/p1?secret=s3"), &base);
        let network = client(Duration::from_secs(5)).get(&url).await.unwrap_err();
        assert!(
            matches!(network, ProviderError::Unreached(_)),
            "{network:?}"
        );

        for err in [decode, timeout, network] {
            for shown in [err.to_string(), format!("{err:?}")] {
                for leak in [
                    "secret",
                    "s3",
                    "http://",
                    "127.0.0.1",
                    "/predictions",
                    TOKEN,
                ] {
                    assert!(!shown.contains(leak), "{leak} in {shown}");
                }
            }
        }
    }
}
