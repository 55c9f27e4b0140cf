//! Authentication of webhook deliveries. The URL carries a per-job token (`?job_id=…&token=…`, HMAC-SHA256 of the
//! job id keyed with the webhook secret), or for URLs handed to fal before tokens the global `?secret=`; fal's
//! Ed25519 signature over the raw body is checked after it. Both must pass before anything else happens, and a
//! delivery authenticated by the global secret completes only a job whose URL was made that way.

use std::sync::atomic::{AtomicBool, Ordering};

use aws_lc_rs::hmac;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::config::Settings;
use crate::db::runs::WebhookAuth;
use crate::fal::jwks::WebhookAuthError;
use crate::fal::signature::SignatureHeaders;
use crate::provider::ProviderKind;
use crate::standard_webhooks;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No webhook secret (or, for a Replicate delivery, no Replicate signing secret) is configured: refused until
    /// one is.
    #[error("server misconfigured: no webhook secret")]
    NotConfigured,
    #[error("wrong or missing webhook token")]
    BadSecret,
    /// The global secret authenticated a delivery for a job whose URL carries a per-job token.
    #[error("this job's deliveries need its token")]
    TokenRequired,
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// fal's keys could not be fetched: our fault, fal should retry.
    #[error(transparent)]
    KeysUnavailable(WebhookAuthError),
}

/// The credential parts of the webhook URL's query string.
#[derive(Debug, Clone, Copy, Default)]
pub struct UrlCredential<'a> {
    pub job_id: Option<&'a str>,
    pub token: Option<&'a str>,
    pub secret: Option<&'a str>,
}

/// Who the URL says the delivery is for, once its credential verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    /// A per-job token: the delivery is for this job only.
    Job(Uuid),
    /// The global secret of a pre-token URL; the job comes from the URL's `job_id` or the body's request id.
    LegacySecret,
}

impl Authenticated {
    /// Whether a delivery so authenticated may act on a job whose URL was made with `made_with`.
    pub fn may_complete(
        self,
        job_id: Uuid,
        made_with: Option<WebhookAuth>,
    ) -> Result<(), AuthError> {
        match (self, made_with) {
            (Authenticated::Job(id), _) if id == job_id => Ok(()),
            (Authenticated::Job(_), _) => Err(AuthError::BadSecret),
            // Jobs that ended before the port have no run: their URLs carried the secret.
            (Authenticated::LegacySecret, Some(WebhookAuth::Secret) | None) => Ok(()),
            (Authenticated::LegacySecret, Some(_)) => Err(AuthError::TokenRequired),
        }
    }
}

/// The token of a job's webhook URL: lowercase hex of HMAC-SHA256(secret, job id as a hyphenated UUID).
pub fn job_token(secret: &SecretString, job_id: Uuid) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose_secret().as_bytes());
    hex::encode(hmac::sign(&key, job_id.to_string().as_bytes()).as_ref())
}

/// The secrets a URL may have been made with now: the current one, and the previous one during its grace period.
fn accepted_secrets(settings: &Settings, now: DateTime<Utc>) -> Vec<&SecretString> {
    let grace =
        chrono::Duration::from_std(settings.config.webhook_secret_grace).unwrap_or_default();
    let previous = settings
        .secrets
        .fal_webhook_secret_previous
        .as_ref()
        .filter(|(_, rotated_at)| now - *rotated_at <= grace)
        .map(|(secret, _)| secret);
    settings
        .secrets
        .fal_webhook_secret
        .iter()
        .chain(previous)
        .collect()
}

/// Checks the URL's credential in constant time: a token for its `job_id`, else the global secret.
pub fn check_credential(
    settings: &Settings,
    url: UrlCredential<'_>,
    now: DateTime<Utc>,
) -> Result<Authenticated, AuthError> {
    if settings.secrets.fal_webhook_secret.is_none() {
        return Err(AuthError::NotConfigured);
    }
    let secrets = accepted_secrets(settings, now);
    let equal =
        |given: &str, expected: &str| bool::from(given.as_bytes().ct_eq(expected.as_bytes()));
    if let Some(token) = url.token {
        let job_id = url
            .job_id
            .and_then(|id| Uuid::parse_str(id.trim()).ok())
            .ok_or(AuthError::BadSecret)?;
        // Every candidate is compared, so the time taken does not tell which one matched.
        let matched = secrets
            .iter()
            .fold(false, |m, s| equal(token, &job_token(s, job_id)) | m);
        return if matched {
            Ok(Authenticated::Job(job_id))
        } else {
            Err(AuthError::BadSecret)
        };
    }
    let given = url.secret.ok_or(AuthError::BadSecret)?;
    let matched = secrets
        .iter()
        .fold(false, |m, s| equal(given, s.expose_secret()) | m);
    if matched {
        Ok(Authenticated::LegacySecret)
    } else {
        Err(AuthError::BadSecret)
    }
}

/// The provider's signature headers of a delivery: fal's Ed25519 ones, or Replicate's Standard Webhooks ones.
#[derive(Debug, Clone)]
pub enum ProviderSignature<'a> {
    /// `x-fal-webhook-*` (absent: `None`, refused).
    Fal(Option<SignatureHeaders<'a>>),
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Replicate(standard_webhooks::Headers<'a>),
}

/// A delivery whose URL credential and provider signature verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub url: Authenticated,
    /// Whose signature it carries: it may complete only that provider's jobs.
    pub provider: ProviderKind,
}

impl Verified {
    /// Whether the delivery may act on a job whose run says `made_with` and `provider`.
    pub fn may_complete(
        self,
        job_id: Uuid,
        made_with: Option<WebhookAuth>,
        provider: Option<&str>,
    ) -> Result<(), AuthError> {
        self.url.may_complete(job_id, made_with)?;
        match provider {
            Some(p) if p != self.provider.name() => Err(AuthError::BadSignature(
                "signed by another provider than the job's".into(),
            )),
            // Jobs that ended before the port have no run: they were fal's.
            None if self.provider != ProviderKind::Fal => Err(AuthError::BadSignature(
                "signed by another provider than the job's".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Both checks, the URL's credential first (no key fetch for a caller that does not even know it).
pub async fn authenticate(
    state: &AppState,
    settings: &Settings,
    url: UrlCredential<'_>,
    signature: ProviderSignature<'_>,
    body: &[u8],
) -> Result<Verified, AuthError> {
    let now = Utc::now();
    let authenticated = check_credential(settings, url, now)?;
    let headers = match signature {
        ProviderSignature::Fal(headers) => headers,
        ProviderSignature::Replicate(headers) => {
            verify_replicate(settings, headers, body, now.timestamp())?;
            return Ok(Verified {
                url: authenticated,
                provider: ProviderKind::Replicate,
            });
        }
    };
    let headers =
        headers.ok_or_else(|| AuthError::BadSignature("signature headers missing".into()))?;
    let pinned = settings.config.fal_webhook_user_id.as_deref();
    state
        .jwks
        .verify(&headers, body, now.timestamp(), pinned)
        .await
        .map_err(|e| match e {
            WebhookAuthError::Rejected(r) => AuthError::BadSignature(r.to_string()),
            unavailable @ WebhookAuthError::KeysUnavailable(_) => {
                AuthError::KeysUnavailable(unavailable)
            }
        })?;
    if pinned.is_none() {
        log_unpinned_user_once(headers.user_id);
    }
    Ok(Verified {
        url: authenticated,
        provider: ProviderKind::Fal,
    })
}

/// Replicate's Standard Webhooks signature, with the account's `whsec_…` secret.
fn verify_replicate(
    settings: &Settings,
    headers: standard_webhooks::Headers<'_>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), AuthError> {
    let secrets = settings
        .secrets
        .replicate
        .as_ref()
        .ok_or(AuthError::NotConfigured)?;
    let key = standard_webhooks::key_of(&secrets.webhook_signing_secret).map_err(|e| {
        tracing::error!(error = %e, "REPLICATE_WEBHOOK_SIGNING_SECRET is not a whsec_ key");
        AuthError::NotConfigured
    })?;
    standard_webhooks::verify(&key, headers, body, now_unix)
        .map_err(|e| AuthError::BadSignature(e.to_string()))
}

/// While `FAL_WEBHOOK_USER_ID` is unset, any fal account's signature verifies: the first verified delivery's
/// user id is logged once per instance, so a deployer can pin it (README, Deploy).
fn log_unpinned_user_once(user_id: &str) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            fal_user_id = user_id,
            "FAL_WEBHOOK_USER_ID is not set: deliveries signed by any fal account verify; set it to this id"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::secrets::AppSecrets;
    use std::sync::Arc;

    fn settings(previous: Option<(&str, DateTime<Utc>)>) -> Settings {
        let mut secrets = AppSecrets::from_json(
            "s",
            r#"{"FAL_KEY":"k","FAL_WEBHOOK_SECRET":"current","DATABASE_URL":"postgres://x","SUPABASE_JWT_SECRET":"j"}"#,
        )
        .unwrap();
        secrets.fal_webhook_secret_previous =
            previous.map(|(s, at)| (SecretString::from(s.to_owned()), at));
        let config =
            Config::from_lookup(|k| (k == "APP_SECRET_ID").then(|| "s".to_owned())).unwrap();
        Settings {
            config: Arc::new(config),
            secrets: Arc::new(secrets),
        }
    }

    fn url<'a>(
        job_id: Option<&'a str>,
        token: Option<&'a str>,
        secret: Option<&'a str>,
    ) -> UrlCredential<'a> {
        UrlCredential {
            job_id,
            token,
            secret,
        }
    }

    #[test]
    fn a_job_token_authenticates_that_job_only() {
        let s = settings(None);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let token = job_token(&SecretString::from("current".to_owned()), a);
        assert_eq!(token.len(), 64);
        let ok = check_credential(
            &s,
            url(Some(&a.to_string()), Some(&token), None),
            Utc::now(),
        )
        .unwrap();
        assert_eq!(ok, Authenticated::Job(a));
        assert!(ok.may_complete(a, Some(WebhookAuth::Token)).is_ok());
        assert!(ok.may_complete(b, Some(WebhookAuth::Token)).is_err());
        let other = check_credential(
            &s,
            url(Some(&b.to_string()), Some(&token), None),
            Utc::now(),
        );
        assert!(matches!(other, Err(AuthError::BadSecret)));
        let no_job = check_credential(&s, url(None, Some(&token), None), Utc::now());
        assert!(matches!(no_job, Err(AuthError::BadSecret)));
    }

    #[test]
    fn the_global_secret_completes_only_jobs_whose_url_carried_it() {
        let s = settings(None);
        let legacy = check_credential(&s, url(None, None, Some("current")), Utc::now()).unwrap();
        assert_eq!(legacy, Authenticated::LegacySecret);
        let job = Uuid::new_v4();
        assert!(legacy.may_complete(job, Some(WebhookAuth::Secret)).is_ok());
        assert!(legacy.may_complete(job, None).is_ok());
        assert!(matches!(
            legacy.may_complete(job, Some(WebhookAuth::Token)),
            Err(AuthError::TokenRequired)
        ));
        for bad in [
            url(None, None, Some("curren")),
            url(None, None, None),
            url(None, None, Some("")),
        ] {
            assert!(matches!(
                check_credential(&s, bad, Utc::now()),
                Err(AuthError::BadSecret)
            ));
        }
    }

    #[test]
    fn the_previous_secret_works_only_during_its_grace_period() {
        let job = Uuid::new_v4();
        let old_token = job_token(&SecretString::from("old".to_owned()), job);
        let id = job.to_string();
        let rotated = Utc::now() - chrono::Duration::hours(1);
        let within = settings(Some(("old", rotated)));
        assert!(
            check_credential(&within, url(Some(&id), Some(&old_token), None), Utc::now()).is_ok()
        );
        assert!(check_credential(&within, url(None, None, Some("old")), Utc::now()).is_ok());
        let long_ago = Utc::now() - chrono::Duration::days(2);
        let past = settings(Some(("old", long_ago)));
        assert!(
            check_credential(&past, url(Some(&id), Some(&old_token), None), Utc::now()).is_err()
        );
    }

    #[test]
    fn no_configured_secret_refuses_everything() {
        let mut s = settings(None);
        let mut secrets = (*s.secrets).clone();
        secrets.fal_webhook_secret = None;
        s.secrets = Arc::new(secrets);
        let r = check_credential(&s, url(None, None, Some("current")), Utc::now());
        assert!(matches!(r, Err(AuthError::NotConfigured)));
    }
}
