//! The one place where fal-webhook's errors become HTTP statuses and bodies. fal retries any non-2xx answer, so
//! only our own transient faults are 5xx.

use gen_pipeline::webhook::DeliveryError;
use gen_pipeline::webhook_auth::AuthError;
use lambda_http::http::StatusCode;
use serde_json::{Value, json};

/// An error answer: its status and body (`{error}` JSON, or plain text where fal's docs show text).
pub struct Refusal {
    pub status: StatusCode,
    pub body: Body,
}

pub enum Body {
    Text(&'static str),
    Json(Value),
}

impl From<&AuthError> for Refusal {
    fn from(e: &AuthError) -> Self {
        match e {
            AuthError::NotConfigured => Refusal {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: Body::Text("Server misconfigured"),
            },
            AuthError::KeysUnavailable(_) => unavailable(),
            AuthError::BadSecret | AuthError::TokenRequired | AuthError::BadSignature(_) => {
                Refusal {
                    status: StatusCode::UNAUTHORIZED,
                    body: Body::Text("Unauthorized"),
                }
            }
        }
    }
}

impl From<&DeliveryError> for Refusal {
    fn from(e: &DeliveryError) -> Self {
        let status = match e {
            DeliveryError::Unauthorized(auth) => return Refusal::from(auth),
            DeliveryError::BadJson | DeliveryError::MissingRequestId => StatusCode::BAD_REQUEST,
            DeliveryError::JobNotFound => StatusCode::NOT_FOUND,
            DeliveryError::RequestMismatch => StatusCode::CONFLICT,
            DeliveryError::Busy
            | DeliveryError::ResultUnknown
            | DeliveryError::Provider(_)
            | DeliveryError::Transient(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Refusal {
            status,
            body: Body::Json(json!({ "error": e.to_string() })),
        }
    }
}

impl Refusal {
    pub fn json(status: StatusCode, error: &str) -> Self {
        Refusal {
            status,
            body: Body::Json(json!({ "error": error })),
        }
    }
}

/// Our fault: fal should retry.
pub fn unavailable() -> Refusal {
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Body::Json(json!({ "error": "Temporarily unavailable" })),
    }
}
