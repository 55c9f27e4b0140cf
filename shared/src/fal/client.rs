//! The fal HTTP client: sync run (bounded, retried with jittered backoff on 429/502/503/504), queue submit with a
//! webhook, status, result and cancel. Every call has a timeout; fal's error bodies become [`ProviderError::Api`].
//! Endpoints come in typed ([`SyncEndpoint`], [`QueueEndpoint`]) from configuration, so this client knows no host.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use super::endpoint::{ProviderUrl, QueueEndpoint, SyncEndpoint};
use super::types::{CancelOutcome, ErrorBody, QueueState, QueueSubmitted};
use crate::provider::{ProviderError, raw_message, read_capped};

/// What a sync run is given to run once fal has started it: fal's `X-Fal-Request-Timeout` is a time-to-start
/// deadline, and a run that starts with less than this left would still be running (and billed) after we gave up.
const RUN_ALLOWANCE: Duration = Duration::from_secs(10);

/// The `X-Fal-Request-Timeout` of an attempt with `remaining` left: fal must start it while [`RUN_ALLOWANCE`] is
/// still left (whole seconds, at least 1).
fn start_deadline(remaining: Duration) -> u64 {
    remaining.saturating_sub(RUN_ALLOWANCE).as_secs().max(1)
}

/// Backoff of sync runs: fal's JS client uses 3 retries, 1 s base, doubling, 30 s cap, with jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max_delay: Duration,
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retries: 3,
        }
    }
}

#[derive(Clone)]
pub struct FalClient {
    http: reqwest::Client,
    key: SecretString,
    retry: RetryPolicy,
    /// Bound of a whole sync run, retries included.
    sync_timeout: Duration,
    /// Bound of each other call.
    request_timeout: Duration,
}

impl FalClient {
    pub fn new(
        http: reqwest::Client,
        key: SecretString,
        retry: RetryPolicy,
        sync_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        FalClient {
            http,
            key,
            retry,
            sync_timeout,
            request_timeout,
        }
    }

    fn auth(&self) -> String {
        format!("Key {}", self.key.expose_secret())
    }

    /// Runs the model synchronously (`POST <sync host>/<model>`) and returns its output, retries included within
    /// the sync bound and by `deadline` (what the caller's own time leaves; past it: [`ProviderError::Timeout`]).
    pub async fn run(
        &self,
        endpoint: &SyncEndpoint,
        input: &Value,
        deadline: tokio::time::Instant,
    ) -> Result<Value, ProviderError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.base)
            .with_max_delay(self.retry.max_delay)
            .with_factor(2.0)
            .with_max_times(self.retry.max_retries)
            .with_jitter();
        let deadline = deadline.min(tokio::time::Instant::now() + self.sync_timeout);
        let attempt = || async {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(ProviderError::Timeout);
            }
            let response = self
                .http
                .post(endpoint.url().clone())
                .header(reqwest::header::AUTHORIZATION, self.auth())
                .header(
                    "X-Fal-Request-Timeout",
                    start_deadline(remaining).to_string(),
                )
                .json(input)
                .timeout(remaining)
                .send()
                .await
                .map_err(ProviderError::from_reqwest)?;
            json_or_error(response).await
        };
        let retried = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(ProviderError::is_retryable)
            .notify(|e, delay| tracing::warn!(error = %e, ?delay, "fal sync run failed; retrying"));
        tokio::time::timeout_at(deadline, retried)
            .await
            .unwrap_or(Err(ProviderError::Timeout))
    }

    /// Submits to the queue (`POST <queue host>/<model>?fal_webhook=<url>`); fal answers at once.
    pub async fn submit(
        &self,
        endpoint: &QueueEndpoint,
        input: &Value,
        webhook: Option<&Url>,
    ) -> Result<QueueSubmitted, ProviderError> {
        let mut url = endpoint.url().clone();
        if let Some(webhook) = webhook {
            url.query_pairs_mut()
                .append_pair("fal_webhook", webhook.as_str());
        }
        let response = self
            .http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, self.auth())
            .json(input)
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(ProviderError::from_reqwest)?;
        let body = json_or_error(response).await?;
        serde_json::from_value(body)
            .map_err(|e| ProviderError::Decode(format!("queue submit answer: {e}")))
    }

    /// The request's queue status (`GET status_url`).
    pub async fn status(&self, status_url: &ProviderUrl) -> Result<QueueState, ProviderError> {
        let body = self.get_json(status_url).await?;
        QueueState::from_body(&body)
            .ok_or_else(|| ProviderError::Decode("unknown queue status".into()))
    }

    /// The request's output (`GET response_url`); a failed request answers with fal's error.
    pub async fn result(&self, response_url: &ProviderUrl) -> Result<Value, ProviderError> {
        self.get_json(response_url).await
    }

    /// Asks fal to cancel (`PUT cancel_url`). fal answers 202/400/404 with a `status` naming the outcome.
    pub async fn cancel(&self, cancel_url: &ProviderUrl) -> Result<CancelOutcome, ProviderError> {
        let response = self
            .http
            .put(cancel_url.url().clone())
            .header(reqwest::header::AUTHORIZATION, self.auth())
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(ProviderError::from_reqwest)?;
        let status = response.status();
        let bytes = read_capped(response).await?;
        let outcome = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| {
            v.get("status")
                .and_then(Value::as_str)
                .and_then(CancelOutcome::from_status)
        });
        match outcome {
            Some(o) => Ok(o),
            None if status.is_success() => Ok(CancelOutcome::CancellationRequested),
            None => Err(api_error(status, None, &bytes)),
        }
    }

    async fn get_json(&self, url: &ProviderUrl) -> Result<Value, ProviderError> {
        let response = self
            .http
            .get(url.url().clone())
            .header(reqwest::header::AUTHORIZATION, self.auth())
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(ProviderError::from_reqwest)?;
        json_or_error(response).await
    }
}

async fn json_or_error(response: reqwest::Response) -> Result<Value, ProviderError> {
    let status = response.status();
    let error_type = response
        .headers()
        .get("x-fal-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status.is_success() {
        return response
            .json::<Value>()
            .await
            .map_err(ProviderError::from_reqwest);
    }
    // The status is the answer: a body that breaks off leaves the error without its message, not a lost answer.
    let bytes = read_capped(response).await.unwrap_or_default();
    Err(api_error(status, error_type, &bytes))
}

fn api_error(status: StatusCode, header_type: Option<String>, bytes: &[u8]) -> ProviderError {
    let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or_default();
    let message = body.message().unwrap_or_else(|| raw_message(status, bytes));
    ProviderError::Api {
        status: status.as_u16(),
        error_type: body.error_type.or(header_type),
        message,
        detail: body.detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fal_must_start_a_run_while_its_allowance_is_left() {
        assert_eq!(start_deadline(Duration::from_secs(25)), 15);
        assert_eq!(start_deadline(Duration::from_millis(14_900)), 4);
        assert_eq!(start_deadline(Duration::from_secs(10)), 1);
        assert_eq!(start_deadline(Duration::from_secs(3)), 1);
    }

    #[test]
    fn retryable_and_caller_errors_follow_fal_statuses() {
        let api = |status| ProviderError::Api {
            status,
            error_type: None,
            message: String::new(),
            detail: None,
        };
        for s in [429, 502, 503, 504] {
            assert!(api(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 422, 500] {
            assert!(!api(s).is_retryable(), "{s}");
        }
        assert!(api(422).is_caller_error());
        assert!(!api(429).is_caller_error());
        assert!(!api(503).is_caller_error());
        assert!(!ProviderError::Timeout.is_retryable());
    }

    #[tokio::test]
    async fn a_decode_error_names_no_url() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot json!")
                    .await;
            }
        });
        let client = FalClient::new(
            reqwest::Client::builder().no_proxy().build().unwrap(),
            SecretString::from("fal-key"),
            RetryPolicy::default(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
        let url = format!(
            "http://{addr}/requests/r1?fal_webhook=http%3A%2F%2Fhook%2F%3Fsecret%3Dhook-secret&secret=hook-secret"
        );
        let url = ProviderUrl::on_provider_hosts(&url, &[format!("http://{addr}")]).unwrap();
        let err = client.result(&url).await.unwrap_err();
        assert!(matches!(err, ProviderError::Decode(_)), "{err:?}");
        for shown in [err.to_string(), format!("{err:?}")] {
            for leak in [
                "secret=",
                "hook-secret",
                "http://",
                "127.0.0.1",
                "/requests/",
            ] {
                assert!(!shown.contains(leak), "{leak} in {shown}");
            }
        }
    }

    #[test]
    fn error_bodies_become_typed_errors() {
        let e = api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("from-header".into()),
            br#"{"detail":"No runner","error_type":"runner_scheduling_failure"}"#,
        );
        match e {
            ProviderError::Api {
                status,
                error_type,
                message,
                ..
            } => {
                assert_eq!(status, 503);
                assert_eq!(error_type.as_deref(), Some("runner_scheduling_failure"));
                assert_eq!(message, "No runner");
            }
            other => panic!("{other:?}"),
        }
        let e = api_error(
            StatusCode::BAD_GATEWAY,
            Some("runner_incomplete_response".into()),
            b"",
        );
        assert!(
            matches!(e, ProviderError::Api { status: 502, error_type: Some(ref t), ref message, .. }
            if t == "runner_incomplete_response" && message == "Bad Gateway")
        );
    }
}
