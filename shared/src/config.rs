//! Typed configuration: non-secret settings from environment variables (defaults here, documented in the README),
//! joined with the secret values of [`crate::secrets`] into [`Settings`].

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::secrets::AppSecrets;

/// fal's public key set for webhook signatures.
pub const DEFAULT_FAL_JWKS_URL: &str = "https://rest.alpha.fal.ai/.well-known/jwks.json";
/// fal's result media hosts (a leading `*.` allows every subdomain).
/// fal's media hosts and Replicate's (`replicate.delivery`).
pub const DEFAULT_MEDIA_ALLOWED_HOSTS: &str =
    "fal.media,*.fal.media,replicate.delivery,*.replicate.delivery";
/// Lambda's longest function timeout (fal-webhook's and the reconciler's in `template.yaml`).
pub(crate) const MAX_FUNCTION_TIMEOUT_SECS: u64 = 900;
/// `MEDIA_DOWNLOAD_DEADLINE_SECS` stays below this: a reconciler pass (at most 900 s, 5 s of it kept for its
/// answer) begins a job only with the download's deadline and 30 s besides left, so a longer one would begin none.
const MEDIA_DOWNLOAD_DEADLINE_BELOW_SECS: u64 = MAX_FUNCTION_TIMEOUT_SECS - 35;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Settings that come from the environment (set in `template.yaml`, or by `cargo xtask stack up` locally).
#[derive(Debug, Clone)]
pub struct Config {
    /// Name or ARN of the Secrets Manager secret holding [`AppSecrets`].
    pub app_secret_id: String,
    /// How long a fetched secret is trusted before it is fetched again (rotation without redeploy).
    pub secret_ttl: Duration,
    /// Bucket of generated results (the original's `workspace-temp`).
    pub workspace_bucket: String,
    /// Bucket of the user library (the original's `user-library`).
    pub library_bucket: String,
    /// The fal-webhook function URL, without secret; `None` disables the queue route (sync fallback).
    pub fal_webhook_url: Option<Url>,
    /// Where fal's webhook signing keys are published.
    pub fal_jwks_url: Url,
    /// If set, only webhooks signed for this fal user id are accepted.
    pub fal_webhook_user_id: Option<String>,
    /// Hosts result media may be fetched from (`host` or `host:port`, `*.domain` for subdomains).
    pub media_allowed_hosts: Vec<String>,
    /// Allows plain-http media URLs (local emulator only).
    pub media_allow_http: bool,
    /// Largest result file accepted.
    pub media_max_bytes: u64,
    /// Longest wait for the next bytes of a media response (its headers included): a stalled fetch fails as a
    /// transient fault (5xx, fal retries).
    pub media_read_timeout: Duration,
    /// Longest time one result download may take as a whole, so a slow drip fails as a transient fault (5xx, fal
    /// retries) instead of holding the function to its timeout; below that timeout (900 s in `template.yaml`).
    pub media_download_deadline: Duration,
    /// Bound of one sync fal run, well inside API Gateway's 30 s.
    pub fal_sync_timeout: Duration,
    /// Bound of every other fal call (submit, status, result, cancel).
    pub fal_request_timeout: Duration,
    /// First delay of the sync-run retry backoff.
    pub fal_retry_base: Duration,
    /// Retries of a sync run on 429/502/503/504.
    pub fal_retry_max: usize,
    /// Largest request body the API's routes accept.
    pub max_body_bytes: usize,
    /// Largest delivery the webhook accepts: a provider's delivery can echo the whole input it was given (Replicate
    /// sends the prediction, input included), so it is bounded by what Lambda itself takes, not by `max_body_bytes`.
    pub webhook_max_body_bytes: usize,
    /// How long an instance keeps a model row it looked up (0: looked up on every request).
    pub model_cache_ttl: Duration,
    /// Most open runs one user may have (runs the functions have not closed, and closed runs the provider may still
    /// be running, `job_run_orphans`); a submission beyond it is answered 429.
    pub max_open_jobs_per_user: u32,
    /// Model keys `model_key_override` may name besides the active models of `api_models`.
    pub model_override_allowed: Vec<String>,
    /// How long after a rotation webhook URLs made with the previous secret are still accepted.
    pub webhook_secret_grace: Duration,
    /// The lost-webhook reconciler's bounds.
    pub reconcile: ReconcileOptions,
    /// The Supabase project (`https://<ref>.supabase.co`): its tokens' issuer is `<url>/auth/v1` and its public
    /// keys are at `<url>/auth/v1/.well-known/jwks.json`.
    pub supabase_url: Option<Url>,
    /// The API's public base URL (`https://<api-id>.execute-api.<region>.amazonaws.com`, or a custom domain): the
    /// storage links the functions hand out start with it. fal-image falls back to the URL it was called at.
    pub public_api_url: Option<Url>,
}

/// What one pass of the lost-webhook reconciler looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Open jobs younger than this (by their run) are left to their webhook or function (`RECONCILE_OLDER_THAN_SECS`).
    pub older_than: Duration,
    /// Open jobs older than this are failed unless their request is `COMPLETED` at the provider, whose result is
    /// still stored (`RECONCILE_DEADLINE_SECS`).
    pub deadline: Duration,
    /// Jobs examined per run (`RECONCILE_BATCH`).
    pub batch: i64,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the config from any variable lookup (the process environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let app_secret_id = var("APP_SECRET_ID").ok_or(ConfigError::Missing("APP_SECRET_ID"))?;
        let fal_webhook_url = var("FAL_WEBHOOK_URL")
            .map(|v| parse_url("FAL_WEBHOOK_URL", &v))
            .transpose()?;
        let fal_jwks_url = parse_url(
            "FAL_JWKS_URL",
            &var("FAL_JWKS_URL").unwrap_or_else(|| DEFAULT_FAL_JWKS_URL.to_owned()),
        )?;
        let media_allowed_hosts =
            parse_list(&var, "MEDIA_ALLOWED_HOSTS", DEFAULT_MEDIA_ALLOWED_HOSTS)
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
        Config {
            app_secret_id,
            secret_ttl: Duration::from_secs(parse_num(&var, "SECRET_TTL_SECS", 300)?),
            workspace_bucket: var("WORKSPACE_BUCKET").unwrap_or_else(|| "workspace-temp".into()),
            library_bucket: var("LIBRARY_BUCKET").unwrap_or_else(|| "user-library".into()),
            fal_webhook_url,
            fal_jwks_url,
            fal_webhook_user_id: var("FAL_WEBHOOK_USER_ID"),
            media_allowed_hosts,
            media_allow_http: parse_bool(&var, "MEDIA_ALLOW_HTTP", false)?,
            media_max_bytes: parse_num(&var, "MEDIA_MAX_BYTES", 2 * 1024 * 1024 * 1024)?,
            media_read_timeout: Duration::from_secs(parse_num(
                &var,
                "MEDIA_READ_TIMEOUT_SECS",
                30,
            )?),
            media_download_deadline: Duration::from_secs(parse_num_in(
                &var,
                "MEDIA_DOWNLOAD_DEADLINE_SECS",
                600,
                1..MEDIA_DOWNLOAD_DEADLINE_BELOW_SECS,
            )?),
            fal_sync_timeout: Duration::from_secs(parse_num(&var, "FAL_SYNC_TIMEOUT_SECS", 25)?),
            fal_request_timeout: Duration::from_secs(parse_num(
                &var,
                "FAL_REQUEST_TIMEOUT_SECS",
                10,
            )?),
            fal_retry_base: Duration::from_millis(parse_num(&var, "FAL_RETRY_BASE_MS", 1000)?),
            fal_retry_max: parse_num(&var, "FAL_RETRY_MAX", 3)?,
            max_body_bytes: parse_num(&var, "MAX_BODY_BYTES", 1024 * 1024)?,
            webhook_max_body_bytes: parse_num(&var, "WEBHOOK_MAX_BODY_BYTES", 6 * 1024 * 1024)?,
            model_cache_ttl: Duration::from_secs(parse_num(&var, "MODEL_CACHE_TTL_SECS", 30)?),
            // In range by the check, so the cast cannot truncate.
            max_open_jobs_per_user: parse_num_in(&var, "MAX_OPEN_JOBS_PER_USER", 20, 1..1_000_001)?
                as u32,
            model_override_allowed: parse_list(&var, "MODEL_OVERRIDE_ALLOWED", ""),
            webhook_secret_grace: Duration::from_secs(parse_num(
                &var,
                "WEBHOOK_SECRET_GRACE_SECS",
                24 * 3600,
            )?),
            reconcile: ReconcileOptions::from_lookup(&var)?,
            supabase_url: var("SUPABASE_URL")
                .map(|v| parse_url("SUPABASE_URL", &v))
                .transpose()?,
            public_api_url: var("PUBLIC_API_URL")
                .map(|v| parse_url("PUBLIC_API_URL", &v))
                .transpose()?,
        }
        .checked()
    }

    /// An upper bound of how long one submission waits on its provider (a queue submit, then the sync run it may
    /// fall back to, which ends by the submission's deadline, `fal_sync_timeout` after it began), with a margin
    /// for the database. A job younger than this may have a submission in flight.
    pub fn submission_bound(&self) -> Duration {
        self.fal_request_timeout + self.fal_sync_timeout + Duration::from_secs(10)
    }

    /// How long after a fallback to the sync route its run may still decide the job: the submission's bound, and at
    /// least the 30 s after which API Gateway gives up on fal-image (whose timeout ends the run's completion).
    pub fn sync_run_lifetime(&self) -> Duration {
        self.submission_bound().max(Duration::from_secs(30))
    }

    /// A reconciler pass must not take a job whose submission may still be in flight.
    fn checked(self) -> Result<Self, ConfigError> {
        let bound = self.submission_bound();
        if self.reconcile.older_than <= bound {
            return Err(ConfigError::Invalid {
                name: "RECONCILE_OLDER_THAN_SECS",
                reason: format!(
                    "must exceed FAL_REQUEST_TIMEOUT_SECS + FAL_SYNC_TIMEOUT_SECS + 10 ({} s): a pass would take \
                     submissions still in flight",
                    bound.as_secs()
                ),
            });
        }
        Ok(self)
    }
}

impl ReconcileOptions {
    fn from_lookup(var: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(ReconcileOptions {
            older_than: Duration::from_secs(parse_num(var, "RECONCILE_OLDER_THAN_SECS", 900)?),
            deadline: Duration::from_secs(parse_num(var, "RECONCILE_DEADLINE_SECS", 6 * 3600)?),
            // In range by the check, so the cast cannot wrap.
            batch: parse_num_in(var, "RECONCILE_BATCH", 25, 1..10_001)? as i64,
        })
    }
}

/// A comma-separated list, trimmed, without empty entries.
fn parse_list(var: &impl Fn(&str) -> Option<String>, name: &str, default: &str) -> Vec<String> {
    var(name)
        .unwrap_or_else(|| default.to_owned())
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn parse_url(name: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| ConfigError::Invalid {
        name,
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be an http(s) URL".into(),
        });
    }
    Ok(url)
}

fn parse_num<T: std::str::FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
            name,
            reason: format!("expected a number, got {v:?}"),
        }),
    }
}

/// A number within `range` (e.g. a bound that must stay below the function timeout).
fn parse_num_in(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    range: std::ops::Range<u64>,
) -> Result<u64, ConfigError> {
    let n = parse_num(var, name, default)?;
    if !range.contains(&n) {
        return Err(ConfigError::Invalid {
            name,
            reason: format!(
                "must be at least {} and below {}, got {n}",
                range.start, range.end
            ),
        });
    }
    Ok(n)
}

fn parse_bool(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match var(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes") => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "false" | "no") => Ok(false),
        Some(v) => Err(ConfigError::Invalid {
            name,
            reason: format!("expected true or false, got {v:?}"),
        }),
    }
}

/// Everything a use case needs to know: the environment's config and the current secret values.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Arc<Config>,
    pub secrets: Arc<AppSecrets>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_apply_when_only_the_secret_id_is_set() {
        let c = Config::from_lookup(lookup(&[("APP_SECRET_ID", "app")])).unwrap();
        assert_eq!(c.workspace_bucket, "workspace-temp");
        assert_eq!(c.library_bucket, "user-library");
        assert_eq!(c.secret_ttl, Duration::from_secs(300));
        assert_eq!(c.fal_jwks_url.as_str(), DEFAULT_FAL_JWKS_URL);
        assert_eq!(
            c.media_allowed_hosts,
            vec![
                "fal.media",
                "*.fal.media",
                "replicate.delivery",
                "*.replicate.delivery"
            ]
        );
        assert!(!c.media_allow_http);
        assert!(c.fal_webhook_url.is_none());
        assert!(c.fal_sync_timeout < Duration::from_secs(30));
        assert_eq!(c.submission_bound(), Duration::from_secs(45));
        assert!(c.reconcile.older_than > c.submission_bound());
        assert_eq!(c.media_download_deadline, Duration::from_secs(600));
    }

    #[test]
    fn missing_secret_id_and_bad_values_are_errors() {
        assert!(matches!(
            Config::from_lookup(lookup(&[])),
            Err(ConfigError::Missing("APP_SECRET_ID"))
        ));
        for (k, v) in [
            ("SECRET_TTL_SECS", "soon"),
            ("MODEL_CACHE_TTL_SECS", "-1"),
            ("MEDIA_READ_TIMEOUT_SECS", "1.5"),
            ("MEDIA_DOWNLOAD_DEADLINE_SECS", "ten"),
            ("MEDIA_DOWNLOAD_DEADLINE_SECS", "0"),
            ("MEDIA_DOWNLOAD_DEADLINE_SECS", "900"),
            ("MEDIA_DOWNLOAD_DEADLINE_SECS", "865"),
            ("MEDIA_ALLOW_HTTP", "maybe"),
            ("FAL_WEBHOOK_URL", "ftp://x/y"),
            ("FAL_JWKS_URL", "not a url"),
            ("RECONCILE_OLDER_THAN_SECS", "15m"),
            // The defaults' submission bound: 10 + 25 + 10 s.
            ("RECONCILE_OLDER_THAN_SECS", "45"),
            ("RECONCILE_DEADLINE_SECS", "-5"),
            ("RECONCILE_BATCH", "0"),
            ("MAX_OPEN_JOBS_PER_USER", "0"),
            ("WEBHOOK_SECRET_GRACE_SECS", "a day"),
        ] {
            let r = Config::from_lookup(lookup(&[("APP_SECRET_ID", "app"), (k, v)]));
            assert!(
                matches!(r, Err(ConfigError::Invalid { name, .. }) if name == k),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn lists_and_flags_are_parsed() {
        let c = Config::from_lookup(lookup(&[
            ("APP_SECRET_ID", "app"),
            ("MEDIA_ALLOWED_HOSTS", " 127.0.0.1:9000, Example.COM ,"),
            ("MEDIA_ALLOW_HTTP", "true"),
            (
                "FAL_WEBHOOK_URL",
                "http://127.0.0.1:9000/lambda-url/fal-webhook",
            ),
        ]))
        .unwrap();
        assert_eq!(c.media_allowed_hosts, vec!["127.0.0.1:9000", "example.com"]);
        assert!(c.media_allow_http);
        assert_eq!(c.fal_webhook_url.unwrap().path(), "/lambda-url/fal-webhook");
    }
}
