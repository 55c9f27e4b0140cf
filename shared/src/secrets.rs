//! The application secret (one JSON object in AWS Secrets Manager), fetched lazily and cached with a TTL so a
//! rotated value is picked up without a redeploy. Values are [`SecretString`]s: they cannot be printed or logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde::Deserialize;
use tokio::sync::Mutex;

/// The secret's keys, as stored in Secrets Manager.
#[derive(Deserialize)]
struct SecretJson {
    #[serde(rename = "FAL_KEY")]
    fal_key: String,
    #[serde(rename = "FAL_WEBHOOK_SECRET", default)]
    fal_webhook_secret: Option<String>,
    #[serde(rename = "FAL_WEBHOOK_SECRET_PREVIOUS", default)]
    fal_webhook_secret_previous: Option<String>,
    #[serde(rename = "FAL_WEBHOOK_SECRET_ROTATED_AT", default)]
    fal_webhook_secret_rotated_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(rename = "DATABASE_URL")]
    database_url: String,
    #[serde(rename = "DATABASE_CA_CERT", default)]
    database_ca_cert: Option<String>,
    #[serde(rename = "SUPABASE_JWT_SECRET", default)]
    jwt_secret: Option<String>,
    #[serde(rename = "STORAGE_SIGNING_KEY", default)]
    storage_signing_key: Option<String>,
    #[serde(rename = "STORAGE_SIGNING_KEY_PREVIOUS", default)]
    storage_signing_key_previous: Option<String>,
    #[serde(rename = "REPLICATE_API_TOKEN", default)]
    replicate_api_token: Option<String>,
    #[serde(rename = "REPLICATE_WEBHOOK_SIGNING_SECRET", default)]
    replicate_webhook_signing_secret: Option<String>,
}

/// The secret values the functions use. `Debug` shows `[REDACTED]` for each.
#[derive(Debug, Clone)]
pub struct AppSecrets {
    pub fal_key: SecretString,
    /// `None` (absent or empty) disables the queue route: submissions fall back to sync runs.
    pub fal_webhook_secret: Option<SecretString>,
    /// The secret before the last rotation and when it was rotated: webhook URLs made with it keep working for
    /// `WEBHOOK_SECRET_GRACE_SECS` after that instant.
    pub fal_webhook_secret_previous: Option<(SecretString, chrono::DateTime<chrono::Utc>)>,
    pub database_url: SecretString,
    /// PEM root certificates the database's TLS certificate is verified against, in place of the Mozilla roots:
    /// a managed Postgres's own CA (Supabase's `prod-ca-2021.crt`). Public, but kept with the URL it belongs to.
    pub database_ca_cert: Option<String>,
    /// The project's legacy JWT secret: HS256 user tokens verify with it; `None` (absent or empty) refuses them.
    pub jwt_secret: Option<SecretString>,
    /// Key of the storage links' tokens (`storage_links`); `None` turns storage signing off.
    pub storage_signing_key: Option<SecretString>,
    /// The key before the last rotation: links signed with it keep working until their own expiry, or until it is
    /// removed from the secret. New links are signed with the current key only.
    pub storage_signing_key_previous: Option<SecretString>,
    /// Replicate's API token and its account's webhook signing secret (`whsec_…`): both, or Replicate models are
    /// answered 503.
    pub replicate: Option<ReplicateSecrets>,
}

#[derive(Debug, Clone)]
pub struct ReplicateSecrets {
    pub api_token: SecretString,
    pub webhook_signing_secret: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret {secret_id} could not be read: {reason}")]
    Fetch { secret_id: String, reason: String },
    #[error("secret {secret_id} has no string value")]
    NotAString { secret_id: String },
    // The serde message names the missing key or the position, never a value.
    #[error("secret {secret_id} is not the expected JSON object: {reason}")]
    Malformed { secret_id: String, reason: String },
}

impl AppSecrets {
    pub fn from_json(secret_id: &str, json: &str) -> Result<Self, SecretsError> {
        let raw: SecretJson = serde_json::from_str(json).map_err(|e| SecretsError::Malformed {
            secret_id: secret_id.to_owned(),
            reason: format!(
                "{} at line {} column {}",
                e.classify_name(),
                e.line(),
                e.column()
            ),
        })?;
        let non_empty = |v: String| (!v.trim().is_empty()).then(|| SecretString::from(v));
        Ok(AppSecrets {
            fal_key: SecretString::from(raw.fal_key),
            fal_webhook_secret: raw.fal_webhook_secret.and_then(non_empty),
            fal_webhook_secret_previous: raw
                .fal_webhook_secret_previous
                .and_then(non_empty)
                .zip(raw.fal_webhook_secret_rotated_at),
            database_url: SecretString::from(raw.database_url),
            database_ca_cert: raw.database_ca_cert.filter(|v| !v.trim().is_empty()),
            jwt_secret: raw.jwt_secret.and_then(non_empty),
            storage_signing_key: raw.storage_signing_key.and_then(non_empty),
            storage_signing_key_previous: raw.storage_signing_key_previous.and_then(non_empty),
            replicate: raw
                .replicate_api_token
                .and_then(non_empty)
                .zip(raw.replicate_webhook_signing_secret.and_then(non_empty))
                .map(|(api_token, webhook_signing_secret)| ReplicateSecrets {
                    api_token,
                    webhook_signing_secret,
                }),
        })
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "missing or mistyped key",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

struct Cached {
    /// When the next call fetches the secret again.
    refresh_at: Instant,
    value: Arc<AppSecrets>,
}

/// The longest TTL honoured: a year.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// After a failed refresh, the cached value serves this long (at most the TTL) before the next attempt, so an
/// outage of Secrets Manager costs one fetch per interval, not one per request.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// A refresh while a cached value exists is given this long: past it the cached value serves, rather than every
/// request waiting on a hanging endpoint through the SDK's retries.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches the secret on first use and again once the TTL has passed. If a refresh fails or hangs while an older
/// value is held, the older value keeps serving (and the failure is logged once per attempt) rather than failing
/// every request, and the next attempt waits [`RETRY_AFTER_FAILURE`].
pub struct SecretsCache {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    ttl: Duration,
    cached: Mutex<Option<Cached>>,
}

impl SecretsCache {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String, ttl: Duration) -> Self {
        SecretsCache {
            client,
            secret_id,
            // Bounded, so that `now + ttl` cannot overflow whatever the configuration says.
            ttl: ttl.min(MAX_TTL),
            cached: Mutex::new(None),
        }
    }

    /// The current secret values.
    pub async fn get(&self) -> Result<Arc<AppSecrets>, SecretsError> {
        // One refresh at a time: callers arriving during a refresh wait for it instead of fetching again.
        let mut cached = self.cached.lock().await;
        let Some(stale) = cached.as_mut() else {
            let value = Arc::new(self.fetch().await?);
            *cached = Some(Cached {
                refresh_at: Instant::now() + self.ttl,
                value: value.clone(),
            });
            return Ok(value);
        };
        if Instant::now() < stale.refresh_at {
            return Ok(stale.value.clone());
        }
        let failure = match tokio::time::timeout(REFRESH_TIMEOUT, self.fetch()).await {
            Ok(Ok(value)) => {
                stale.value = Arc::new(value);
                stale.refresh_at = Instant::now() + self.ttl;
                return Ok(stale.value.clone());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {REFRESH_TIMEOUT:?}"),
        };
        tracing::warn!(error = %failure, "secret refresh failed; serving the cached value");
        stale.refresh_at = Instant::now() + self.ttl.min(RETRY_AFTER_FAILURE);
        Ok(stale.value.clone())
    }

    async fn fetch(&self) -> Result<AppSecrets, SecretsError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| SecretsError::Fetch {
                secret_id: self.secret_id.clone(),
                reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
            })?;
        let json = out
            .secret_string()
            .ok_or_else(|| SecretsError::NotAString {
                secret_id: self.secret_id.clone(),
            })?;
        AppSecrets::from_json(&self.secret_id, json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn parses_all_keys_and_treats_an_empty_webhook_secret_as_absent() {
        let s = AppSecrets::from_json(
            "id",
            r#"{"FAL_KEY":"k","FAL_WEBHOOK_SECRET":"","DATABASE_URL":"postgres://u:p@h/d","SUPABASE_JWT_SECRET":"j"}"#,
        )
        .unwrap();
        assert_eq!(s.fal_key.expose_secret(), "k");
        assert!(s.fal_webhook_secret.is_none());
        assert_eq!(s.database_url.expose_secret(), "postgres://u:p@h/d");
        assert_eq!(s.jwt_secret.as_ref().map(|j| j.expose_secret()), Some("j"));
    }

    #[test]
    fn debug_output_never_shows_values() {
        let s = AppSecrets::from_json(
            "id",
            r#"{"FAL_KEY":"fal-secret-value","FAL_WEBHOOK_SECRET":"hook-secret-value","DATABASE_URL":"postgres://u:db-password@h/d","SUPABASE_JWT_SECRET":"jwt-secret-value"}"#,
        )
        .unwrap();
        let shown = format!("{s:?}");
        for value in [
            "fal-secret-value",
            "hook-secret-value",
            "db-password",
            "jwt-secret-value",
        ] {
            assert!(!shown.contains(value), "{shown}");
        }
    }

    #[test]
    fn malformed_json_error_does_not_echo_values() {
        let err = AppSecrets::from_json("id", r#"{"FAL_KEY":"leaky-value"}"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("missing or mistyped key"), "{text}");
        assert!(!text.contains("leaky-value"), "{text}");
    }
}
