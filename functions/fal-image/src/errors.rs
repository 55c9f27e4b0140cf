//! The one place where use-case errors become HTTP statuses and `{error, details?}` bodies.

use gen_pipeline::auth::AuthError;
use gen_pipeline::db::DbError;
use gen_pipeline::input::InputError;
use gen_pipeline::provider::{ProviderError, ProviderKind};
use gen_pipeline::storage_links::LinkError;
use gen_pipeline::submission::SubmitError;
use lambda_http::http::StatusCode;
use serde_json::{Value, json};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// Our own fault behind a 5xx whose body does not name it (a database, storage or configuration error): for
    /// the one log line of the refusal, never sent.
    pub cause: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str) -> Self {
        ApiError {
            status,
            body: json!({ "error": error }),
            retry_after: None,
            cause: None,
        }
    }

    pub fn with_details(status: StatusCode, error: &str, details: impl Into<Value>) -> Self {
        ApiError {
            status,
            body: json!({ "error": error, "details": details.into() }),
            retry_after: None,
            cause: None,
        }
    }
}

impl ApiError {
    /// With the fault behind it, for the log line: the error and its sources (no secret reaches them: database
    /// errors name no URL or password, storage errors no signed link).
    pub fn caused_by(self, fault: &dyn std::error::Error) -> Self {
        ApiError {
            cause: Some(gen_pipeline::telemetry::causes(fault)),
            ..self
        }
    }

    /// The same refusal in Supabase Storage's shape, for the storage routes (an error already in it is kept): the
    /// status's name as `error`, the message as `message`.
    pub fn into_storage(self) -> Self {
        if self.body.get("statusCode").is_some() {
            return self;
        }
        let message = self.body["error"].as_str().unwrap_or_default().to_owned();
        let name = self.status.canonical_reason().unwrap_or("Error");
        ApiError {
            retry_after: self.retry_after,
            cause: self.cause,
            ..ApiError::storage(self.status, name, &message)
        }
    }

    /// Supabase Storage's error shape: `{statusCode, error, message}`, the status as a string.
    pub fn storage(status: StatusCode, error: &str, message: &str) -> Self {
        ApiError {
            status,
            body: json!({ "statusCode": status.as_u16().to_string(), "error": error, "message": message }),
            retry_after: None,
            cause: None,
        }
    }
}

impl From<LinkError> for ApiError {
    fn from(e: LinkError) -> Self {
        let (status, error) = match e {
            LinkError::UnknownBucket => (StatusCode::NOT_FOUND, "Bucket not found"),
            LinkError::BadExpiry => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            LinkError::NotYours => (StatusCode::FORBIDDEN, "Unauthorized"),
            LinkError::NotConfigured => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            LinkError::Expired | LinkError::BadToken => (StatusCode::BAD_REQUEST, "InvalidJWT"),
            LinkError::OtherPath => (StatusCode::BAD_REQUEST, "InvalidSignature"),
            LinkError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            LinkError::StorageUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
        };
        ApiError::storage(status, error, &e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match e {
            AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            AuthError::NotConfigured => StatusCode::INTERNAL_SERVER_ERROR,
            AuthError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, &e.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match &e {
            SubmitError::ModelNotFound
            | SubmitError::UnsupportedProvider
            | SubmitError::BadModelOverride => {
                ApiError::new(StatusCode::BAD_REQUEST, &e.to_string())
            }
            SubmitError::TargetNotFound(what) => ApiError::new(StatusCode::NOT_FOUND, what),
            SubmitError::UnknownCaller => ApiError::new(StatusCode::UNAUTHORIZED, &e.to_string()),
            SubmitError::TooManyOpenJobs => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                body: json!({
                    "error": e.to_string(),
                    "details": "Wait for a generation to finish, or cancel one, then try again",
                }),
                retry_after: Some(gen_pipeline::submission::OPEN_JOBS_RETRY_AFTER.as_secs()),
                cause: None,
            },
            SubmitError::ProviderNotConfigured(_) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: json!({ "error": e.to_string(), "retryable": false }),
                retry_after: None,
                cause: None,
            },
            SubmitError::NoModels => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
            }
            SubmitError::UnsupportedEndpoint(path) => ApiError::with_details(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported endpoint_path",
                path.as_str(),
            ),
            SubmitError::Input(InputError::MissingFields { fields }) => ApiError {
                status: StatusCode::BAD_REQUEST,
                body: json!({
                    "error": e.to_string(),
                    "details": format!("Missing required fields: {}", fields.join(", ")),
                    "missing_fields": fields,
                }),
                retry_after: None,
                cause: None,
            },
            SubmitError::Input(input) => ApiError::new(StatusCode::BAD_REQUEST, &input.to_string()),
            SubmitError::Misconfigured(_) | SubmitError::Db(DbError::BadUrl | DbError::Tls(_)) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Server misconfigured")
                    .caused_by(&e)
            }
            SubmitError::Provider {
                job_id,
                provider,
                error,
            } => provider_error(*job_id, *provider, error),
            SubmitError::ResultFailed { job_id, message } => ApiError {
                status: StatusCode::BAD_GATEWAY,
                body: json!({ "error": "Generation failed", "details": message, "jobId": job_id }),
                retry_after: None,
                cause: None,
            },
            SubmitError::Closed { job_id, status } => ApiError {
                status: StatusCode::CONFLICT,
                body: json!({ "error": format!("Job was {status}"), "jobId": job_id, "status": status.as_str() }),
                retry_after: None,
                cause: None,
            },
            SubmitError::Db(_) | SubmitError::Storage(_) | SubmitError::Completion(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Temporarily unavailable")
                    .caused_by(&e)
            }
        }
    }
}

/// The provider's refusals of the caller's input keep its status; its refusals of our account (401/403: the key
/// revoked or rotated, 402: the balance) or of the model we named (404: a `model_key` it does not know) are 502,
/// without its detail: they are not the caller's to fix, and a 401 would read as the caller's session having ended
/// (supabase-js clients sign out on it). The provider being down or slow is 503 (retry later) or 502 (bad answer).
/// The titles are the original's for fal.
fn provider_error(job_id: uuid::Uuid, provider: ProviderKind, error: &ProviderError) -> ApiError {
    let name = provider.display_name();
    if error.refuses_the_service() {
        return ApiError {
            status: StatusCode::BAD_GATEWAY,
            body: json!({
                "error": format!("{name} API request failed"),
                "details": format!("{name} refused the service's request; this is not a fault of the request"),
                "jobId": job_id,
            }),
            retry_after: None,
            cause: None,
        };
    }
    let (status, title) = match error {
        e if e.is_caller_error() => (
            e.status()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::BAD_REQUEST),
            format!("{name} API request failed"),
        ),
        ProviderError::Api {
            status: 429 | 503 | 504,
            ..
        }
        | ProviderError::Timeout
        | ProviderError::Unreached(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Model temporarily unavailable".to_owned(),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            format!("Failed to call {name} API"),
        ),
    };
    let mut body = json!({ "error": title, "details": error.to_string(), "jobId": job_id });
    if let ProviderError::Api {
        status: s, detail, ..
    } = error
    {
        body["status"] = json!(s);
        if let Some(d) = detail {
            let key = match provider {
                ProviderKind::Fal => "fal_detail",
                ProviderKind::Replicate => "detail",
            };
            body[key] = d.clone();
        }
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        body["retryable"] = json!(true);
    }
    ApiError {
        status,
        body,
        retry_after: None,
        cause: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_faults_keep_their_cause_for_the_log_and_out_of_the_body() {
        let down = ApiError::from(SubmitError::Db(DbError::Unavailable(
            "connection refused".into(),
        )));
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.body, json!({"error": "Temporarily unavailable"}));
        assert_eq!(
            down.cause.as_deref(),
            Some("database unavailable: no database connection: connection refused")
        );
        // A database that can never be reached as configured is not a moment's unavailability.
        let bad_url = ApiError::from(SubmitError::Db(DbError::BadUrl));
        assert_eq!(bad_url.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(bad_url.cause.unwrap().contains("not a valid Postgres URL"));
        let misconfigured = ApiError::from(SubmitError::Misconfigured("fal sync host".into()));
        assert_eq!(misconfigured.body, json!({"error": "Server misconfigured"}));
        assert!(misconfigured.cause.unwrap().contains("fal sync host"));
        // The caller's errors say what they are in the body; there is no fault of ours to log.
        assert_eq!(ApiError::from(SubmitError::TooManyOpenJobs).cause, None);
        // The storage shape keeps it.
        let storage = ApiError::from(SubmitError::Db(DbError::Tls("bad CA".into()))).into_storage();
        assert!(storage.cause.unwrap().contains("bad CA"));
    }

    #[test]
    fn a_provider_not_reached_or_slow_is_retryable_and_a_broken_answer_is_not() {
        let id = uuid::Uuid::new_v4();
        for (error, status) in [
            (ProviderError::Unreached("connection refused".into()), 503),
            (ProviderError::Timeout, 503),
            (ProviderError::Network("reset".into()), 502),
            (ProviderError::Decode("json".into()), 502),
        ] {
            let e = provider_error(id, ProviderKind::Fal, &error);
            assert_eq!(e.status.as_u16(), status, "{error:?}");
            assert_eq!(
                e.body["retryable"].as_bool(),
                (status == 503).then_some(true),
                "{error:?}"
            );
        }
    }
}
