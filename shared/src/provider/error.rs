//! What a call to a provider (fal or Replicate) can come to when it does not succeed, and the reading of error
//! bodies both clients share.

use reqwest::StatusCode;
use serde_json::Value;

/// Error bodies larger than this are cut before parsing.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A provider call that did not succeed. Its text names no URL and no key (it ends up in logs and job rows).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with a non-success status.
    #[error("the provider answered {status}: {message}")]
    Api {
        status: u16,
        error_type: Option<String>,
        message: String,
        detail: Option<Value>,
    },
    #[error("the provider did not answer in time")]
    Timeout,
    /// No connection could be made: the request was not sent.
    #[error("the provider could not be reached: {0}")]
    Unreached(String),
    /// The connection failed once made: the request may have been received.
    #[error("the connection to the provider failed: {0}")]
    Network(String),
    #[error("the provider's answer was not understood: {0}")]
    Decode(String),
}

impl ProviderError {
    /// Statuses fal's own client retries on (Replicate asks for the same: 429 and the gateway errors).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProviderError::Api { status, .. } if matches!(status, 429 | 502 | 503 | 504))
    }

    /// The caller's input was refused (4xx other than 408/429): retrying or falling back cannot help.
    pub fn is_caller_error(&self) -> bool {
        matches!(self, ProviderError::Api { status, .. } if (400..500).contains(status) && !matches!(status, 408 | 429))
    }

    /// A refusal of the service rather than of its caller's input: our key (401/403, rotated or revoked), our
    /// account (402, its balance) or our configuration (404, a model the provider does not know). Not the caller's
    /// to fix, and not to be passed on as theirs (a 401 reads as the caller's own session having ended).
    pub fn refuses_the_service(&self) -> bool {
        matches!(
            self,
            ProviderError::Api {
                status: 401..=404,
                ..
            }
        )
    }

    /// A final verdict on the request itself: a caller error other than 401/403, which are about our key (rotated
    /// or revoked), so a retry once it is fixed can still succeed.
    pub fn rejects_the_request(&self) -> bool {
        self.is_caller_error() && !matches!(self.status(), Some(401 | 403))
    }

    /// fal's verdict on a request its queue reports `COMPLETED`, read from its result URL: a failed request answers
    /// there with its error. A caller error ([`Self::rejects_the_request`]), or a server error fal typed as the
    /// run's (`runner_*`, `request_timeout`, `startup_timeout`). An untyped server error, fal's own
    /// `internal_error` or a 429 may be its API's passing fault, and is asked again later.
    pub fn fails_the_completed_request(&self) -> bool {
        let run_failure = match self {
            ProviderError::Api {
                status,
                error_type: Some(kind),
                ..
            } => {
                *status >= 500
                    && (kind.starts_with("runner_")
                        || matches!(kind.as_str(), "request_timeout" | "startup_timeout"))
            }
            _ => false,
        };
        run_failure || self.rejects_the_request()
    }

    /// Whether the provider may have taken the request although no usable answer came: the answer did not come in
    /// time, the connection broke once made, or a success could not be read. Not when no connection was made, nor
    /// when the provider answered with an error.
    pub fn may_have_been_accepted(&self) -> bool {
        matches!(
            self,
            ProviderError::Timeout | ProviderError::Network(_) | ProviderError::Decode(_)
        )
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A transport error, without its URL: a submit URL carries the webhook URL, whose query holds the job's token,
    /// and errors end up in logs and job rows.
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        let e = e.without_url();
        if e.is_connect() {
            ProviderError::Unreached(e.to_string())
        } else if e.is_timeout() {
            ProviderError::Timeout
        } else if e.is_decode() {
            ProviderError::Decode(e.to_string())
        } else {
            ProviderError::Network(e.to_string())
        }
    }
}

/// An error body, cut at [`MAX_ERROR_BODY`] (also the Replicate client's).
pub async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(ProviderError::from_reqwest)?
    {
        let room = MAX_ERROR_BODY.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(out)
}

/// The message of an error body that says none itself: its first 500 characters, or the status' reason.
pub fn raw_message(status: StatusCode, bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.chars().take(500).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> ProviderError {
        ProviderError::Api {
            status,
            error_type: None,
            message: "m".into(),
            detail: None,
        }
    }

    #[test]
    fn only_a_refusal_of_the_request_itself_is_a_final_verdict() {
        for final_status in [400, 404, 410, 422] {
            assert!(api(final_status).rejects_the_request(), "{final_status}");
        }
        // Our key (rotated, revoked), the provider's throttling and timeouts, its faults: worth another try.
        for retry in [401, 403, 408, 429, 500, 502, 503] {
            assert!(!api(retry).rejects_the_request(), "{retry}");
        }
        assert!(!ProviderError::Timeout.rejects_the_request());
        assert!(!ProviderError::Network("reset".into()).rejects_the_request());
        // 401/403 stay caller errors at submission (no fallback to a second run of the same input).
        assert!(api(401).is_caller_error() && api(403).is_caller_error());
    }

    #[test]
    fn only_an_answer_lost_after_the_request_went_out_may_have_been_accepted() {
        for lost in [
            ProviderError::Timeout,
            ProviderError::Network("reset".into()),
            ProviderError::Decode("json".into()),
        ] {
            assert!(lost.may_have_been_accepted(), "{lost:?}");
        }
        for refused in [
            ProviderError::Unreached("refused".into()),
            api(422),
            api(503),
        ] {
            assert!(!refused.may_have_been_accepted(), "{refused:?}");
        }
    }

    #[test]
    fn key_balance_and_model_name_refusals_are_the_services_not_the_callers() {
        for ours in [401, 402, 403, 404] {
            assert!(api(ours).refuses_the_service(), "{ours}");
        }
        for theirs in [400, 408, 409, 410, 422, 429, 500, 503] {
            assert!(!api(theirs).refuses_the_service(), "{theirs}");
        }
        assert!(!ProviderError::Timeout.refuses_the_service());
    }

    #[test]
    fn a_completed_requests_result_fails_it_with_the_runs_error_types_only() {
        let typed = |status, kind: &str| ProviderError::Api {
            status,
            error_type: Some(kind.to_owned()),
            message: "m".into(),
            detail: None,
        };
        for (status, kind) in [
            (500, "runner_server_error"),
            (502, "runner_incomplete_response"),
            (503, "runner_disconnected"),
            (504, "request_timeout"),
            (504, "startup_timeout"),
        ] {
            assert!(typed(status, kind).fails_the_completed_request(), "{kind}");
        }
        assert!(api(422).fails_the_completed_request());
        for passing in [
            api(500),
            api(503),
            api(429),
            api(401),
            typed(500, "internal_error"),
            typed(429, "runner_scheduling_failure"),
            ProviderError::Timeout,
        ] {
            assert!(!passing.fails_the_completed_request(), "{passing:?}");
        }
    }
}
