//! fal's webhook signing keys, fetched from a configurable JWKS URL and cached ([`KeySetCache`]): fresh for a
//! day, and one refetch when no cached key verifies a delivery (key rotation).

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use url::Url;

use super::signature::{self, Jwks, SignatureError, SignatureHeaders};
use crate::key_cache::KeySetCache;

const FRESH_FOR: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum WebhookAuthError {
    /// The delivery is not authentic (bad or missing headers, old timestamp, no key verifies).
    #[error(transparent)]
    Rejected(#[from] SignatureError),
    /// We could not get any key to check with: our fault, fal should retry.
    #[error("fal's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

type Keys = Arc<[VerifyingKey]>;

pub struct JwksCache {
    keys: KeySetCache<Keys>,
}

fn ed25519_keys(body: &[u8]) -> Result<Keys, String> {
    let set: Jwks = serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = set.ed25519_keys();
    if keys.is_empty() {
        return Err("JWKS holds no Ed25519 key".into());
    }
    Ok(keys.into())
}

impl JwksCache {
    pub fn new(http: reqwest::Client, url: Url) -> Self {
        JwksCache {
            keys: KeySetCache::new(http, url, FRESH_FOR, ed25519_keys),
        }
    }

    /// Verifies one delivery's signature over its raw body.
    pub async fn verify(
        &self,
        headers: &SignatureHeaders<'_>,
        body: &[u8],
        now_unix: i64,
        pinned_user_id: Option<&str>,
    ) -> Result<(), WebhookAuthError> {
        // Cheap checks first: no key fetch for a delivery that is malformed or old.
        let sig = signature::check_envelope(headers, now_unix, pinned_user_id)?;
        let (keys, served) = self
            .keys
            .keys()
            .await
            .map_err(WebhookAuthError::KeysUnavailable)?;
        match signature::verify_with_keys(headers, body, &sig, &keys) {
            Ok(()) => Ok(()),
            Err(e) if served.just_fetched => Err(e.into()),
            Err(e) => match self.keys.refetch(served).await {
                Some(keys) => Ok(signature::verify_with_keys(headers, body, &sig, &keys)?),
                None => Err(e.into()),
            },
        }
    }
}
