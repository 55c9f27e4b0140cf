//! fal's webhook signing keys, fetched from a configurable JWKS URL and cached: fresh for a day, a stale copy
//! kept when a refetch fails, and one refetch when no cached key verifies (key rotation), at most once a minute so
//! forged deliveries cannot make us hammer the key endpoint.

use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use tokio::sync::Mutex;
use url::Url;

use super::signature::{self, Jwks, SignatureError, SignatureHeaders};

const FRESH_FOR: Duration = Duration::from_secs(24 * 3600);
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WebhookAuthError {
    /// The delivery is not authentic (bad or missing headers, old timestamp, no key verifies).
    #[error(transparent)]
    Rejected(#[from] SignatureError),
    /// We could not get any key to check with: our fault, fal should retry.
    #[error("fal's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

struct Cached {
    keys: Vec<VerifyingKey>,
    fetched_at: Instant,
}

pub struct JwksCache {
    http: reqwest::Client,
    url: Url,
    cached: Mutex<Option<Cached>>,
    last_fetch_attempt: Mutex<Option<Instant>>,
}

impl JwksCache {
    pub fn new(http: reqwest::Client, url: Url) -> Self {
        JwksCache {
            http,
            url,
            cached: Mutex::new(None),
            last_fetch_attempt: Mutex::new(None),
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
        let (keys, fresh_fetch) = self.keys().await?;
        match signature::verify_with_keys(headers, body, &sig, &keys) {
            Ok(()) => Ok(()),
            Err(e) if fresh_fetch => Err(e.into()),
            Err(e) => match self.refetch().await {
                Some(keys) => Ok(signature::verify_with_keys(headers, body, &sig, &keys)?),
                None => Err(e.into()),
            },
        }
    }

    /// The cached keys, refreshed when older than a day. Returns whether they were just fetched.
    async fn keys(&self) -> Result<(Vec<VerifyingKey>, bool), WebhookAuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.fetched_at.elapsed() < FRESH_FOR
        {
            return Ok((c.keys.clone(), false));
        }
        *self.last_fetch_attempt.lock().await = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                *cached = Some(Cached {
                    keys: keys.clone(),
                    fetched_at: Instant::now(),
                });
                Ok((keys, true))
            }
            Err(e) => match cached.as_ref() {
                Some(stale) => {
                    tracing::warn!(error = %e, "JWKS refresh failed; using the cached keys");
                    Ok((stale.keys.clone(), false))
                }
                None => Err(WebhookAuthError::KeysUnavailable(e)),
            },
        }
    }

    /// One refetch for a rotated key, unless another happened within the last minute.
    async fn refetch(&self) -> Option<Vec<VerifyingKey>> {
        {
            let mut last = self.last_fetch_attempt.lock().await;
            if last.is_some_and(|t| t.elapsed() < MIN_REFETCH_INTERVAL) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                *self.cached.lock().await = Some(Cached {
                    keys: keys.clone(),
                    fetched_at: Instant::now(),
                });
                Some(keys)
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS refetch failed");
                None
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<VerifyingKey>, String> {
        let response = self
            .http
            .get(self.url.clone())
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("JWKS endpoint answered {}", response.status()));
        }
        let set: Jwks = response.json().await.map_err(|e| e.to_string())?;
        let keys = set.ed25519_keys();
        if keys.is_empty() {
            return Err("JWKS holds no Ed25519 key".into());
        }
        Ok(keys)
    }
}
