//! Authentication of fal's webhook deliveries: the shared secret in the URL (constant-time), then fal's Ed25519
//! signature over the raw body. Both must pass before anything else happens.

use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::config::Settings;
use crate::fal::jwks::WebhookAuthError;
use crate::fal::signature::SignatureHeaders;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No webhook secret is configured: every delivery is refused until one is.
    #[error("server misconfigured: no webhook secret")]
    NotConfigured,
    #[error("wrong or missing webhook secret")]
    BadSecret,
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// fal's keys could not be fetched: our fault, fal should retry.
    #[error(transparent)]
    KeysUnavailable(WebhookAuthError),
}

/// Compares the `secret` query parameter with the configured one in constant time.
pub fn check_secret(settings: &Settings, given: Option<&str>) -> Result<(), AuthError> {
    let expected = settings
        .secrets
        .fal_webhook_secret
        .as_ref()
        .ok_or(AuthError::NotConfigured)?;
    let given = given.ok_or(AuthError::BadSecret)?;
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::BadSecret)
    }
}

/// Both checks, secret first (no key fetch for a caller that does not even know the secret).
pub async fn authenticate(
    state: &AppState,
    settings: &Settings,
    secret: Option<&str>,
    headers: Option<SignatureHeaders<'_>>,
    body: &[u8],
) -> Result<(), AuthError> {
    check_secret(settings, secret)?;
    let headers =
        headers.ok_or_else(|| AuthError::BadSignature("signature headers missing".into()))?;
    let now = chrono::Utc::now().timestamp();
    state
        .jwks
        .verify(
            &headers,
            body,
            now,
            settings.config.fal_webhook_user_id.as_deref(),
        )
        .await
        .map_err(|e| match e {
            WebhookAuthError::Rejected(r) => AuthError::BadSignature(r.to_string()),
            unavailable @ WebhookAuthError::KeysUnavailable(_) => {
                AuthError::KeysUnavailable(unavailable)
            }
        })
}
