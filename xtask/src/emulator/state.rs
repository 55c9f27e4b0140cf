//! The emulator's memory: settings, signing key, and every request it has seen (for the queue and for inspection).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU16;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use serde_json::{Value, json};

use super::directives::Directives;
use super::outputs::MediaSpec;
use super::replicate;

/// Configuration, from the environment in [`Settings::from_env`] or built directly by tests.
#[derive(Debug, Clone)]
pub struct Settings {
    /// When set, model calls must carry `Authorization: Key <key>`.
    pub key: Option<String>,
    /// Sent as `X-Fal-Webhook-User-Id`.
    pub user_id: String,
    /// Base of the URLs handed out; `None` means `http://<bound addr>`.
    pub public_url: Option<String>,
    /// Fixed pause between webhook delivery attempts.
    pub retry: Duration,
    /// The public JWK set served as Supabase Auth's (`--supabase-jwks`); `None`: that route answers 404.
    pub supabase_jwks: Option<PathBuf>,
    /// Replicate's token and webhook secret (`FAL_EMULATOR_REPLICATE_*`).
    pub replicate: replicate::Config,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            key: None,
            user_id: "emulator-user".into(),
            public_url: None,
            retry: Duration::from_millis(300),
            supabase_jwks: None,
            replicate: replicate::Config::default(),
        }
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let defaults = Settings::default();
        let retry = match var("FAL_EMULATOR_RETRY_MS") {
            Some(ms) => Duration::from_millis(
                ms.parse()
                    .context("FAL_EMULATOR_RETRY_MS must be a number of milliseconds")?,
            ),
            None => defaults.retry,
        };
        Ok(Settings {
            key: var("FAL_EMULATOR_KEY"),
            user_id: var("FAL_EMULATOR_USER_ID").unwrap_or(defaults.user_id),
            public_url: var("FAL_EMULATOR_PUBLIC_URL"),
            retry,
            supabase_jwks: None,
            replicate: replicate::Config::from_env(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    InQueue,
    InProgress,
    Completed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sync,
    Queue,
}

/// One webhook POST attempt, as the inspection endpoint reports it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryAttempt {
    /// Which of the `#deliveries=N` deliveries (1-based).
    pub delivery: u32,
    /// Which try of that delivery (1-based).
    pub attempt: u32,
    pub started_at_ms: u64,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Everything known about one request.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub request_id: String,
    pub gateway_request_id: String,
    pub mode: Mode,
    pub model_id: String,
    pub input: Value,
    pub status: Status,
    pub failed: bool,
    pub auth_ok: bool,
    /// Refused for bad auth: visible to inspection only, unknown to the queue endpoints.
    pub rejected: bool,
    pub directives: Directives,
    pub media: MediaSpec,
    pub output: Value,
    /// Kept private: it carries the receiver's secret, so it is never reported or logged.
    pub webhook_url: Option<String>,
    pub deliveries: Vec<DeliveryAttempt>,
    pub media_fetches: u64,
    /// Cancel calls received, refused ones included.
    pub cancel_calls: u64,
}

impl RequestRecord {
    fn inspection(&self) -> Value {
        json!({
            "request_id": self.request_id,
            "gateway_request_id": self.gateway_request_id,
            "mode": self.mode,
            "model_id": self.model_id,
            "input": self.input,
            "status": self.status,
            "failed": self.failed,
            "cancelled": self.status == Status::Cancelled,
            "webhook_url_present": self.webhook_url.is_some(),
            "deliveries": self.deliveries,
            "media_fetches": self.media_fetches,
            "cancel_calls": self.cancel_calls,
            "auth_ok": self.auth_ok,
        })
    }
}

/// What a queue endpoint needs to know about a request.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub status: Status,
    pub failed: bool,
    pub output: Value,
    /// `#result-status` / `#result-error-type`: how the result URL of the completed request fails.
    pub result_failure: Option<(u16, Option<String>)>,
}

pub enum CancelOutcome {
    Requested,
    AlreadyCompleted,
    NotFound,
    /// `#cancel-fail-first=K`: one of the first K cancel calls, answered 503 with nothing changed.
    Unavailable,
}

/// What the media endpoint needs for one fetch.
pub struct MediaFetch {
    pub media: MediaSpec,
    pub directives: Directives,
    /// 1 for the first fetch of this URL.
    pub fetch_number: u64,
    /// A queued request's file (not a sync run's).
    pub queued: bool,
}

pub struct AppState {
    pub settings: Settings,
    /// Base of every URL handed out (no trailing slash).
    pub public_base: String,
    pub signing_key: SigningKey,
    pub http: reqwest::Client,
    /// What the Supabase JWKS answers (`POST /_emulator/auth/jwks-status`); 200 serves the set.
    pub jwks_status: AtomicU16,
    /// Replicate's predictions and webhook secret.
    pub replicate: replicate::Store,
    requests: Mutex<HashMap<String, RequestRecord>>,
    /// `#run-fail-first` counters, keyed by the full prompt so retries of "the same call" share one.
    run_attempts: Mutex<HashMap<String, u32>>,
}

/// A poisoned lock only means another handler panicked; the map itself is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AppState {
    pub fn new(settings: Settings, public_base: String) -> anyhow::Result<Self> {
        let signing_key = SigningKey::generate(&mut rand::rngs::OsRng);
        let http = reqwest::Client::builder()
            .no_proxy()
            // fal expects a webhook answered within ~10 s (fal-api.md), and retries one that is not.
            .timeout(Duration::from_secs(10))
            // A redirect could lead off loopback, which the emulator must never reach.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the webhook HTTP client")?;
        let replicate = replicate::Store::new(&settings.replicate)?;
        Ok(AppState {
            settings,
            public_base,
            signing_key,
            http,
            jwks_status: AtomicU16::new(200),
            replicate,
            requests: Mutex::new(HashMap::new()),
            run_attempts: Mutex::new(HashMap::new()),
        })
    }

    pub fn insert(&self, record: RequestRecord) {
        lock(&self.requests).insert(record.request_id.clone(), record);
    }

    fn with_record<R>(&self, id: &str, f: impl FnOnce(&mut RequestRecord) -> R) -> Option<R> {
        lock(&self.requests).get_mut(id).map(f)
    }

    pub fn inspect(&self, id: &str) -> Option<Value> {
        self.with_record(id, |r| r.inspection())
    }

    /// The inspections of the queued requests whose webhook URL carries `job_id=<job_id>`.
    pub fn requests_for_job(&self, job_id: &str) -> Vec<Value> {
        let names_job = |webhook: &str| {
            url::Url::parse(webhook)
                .is_ok_and(|u| u.query_pairs().any(|(k, v)| k == "job_id" && v == job_id))
        };
        lock(&self.requests)
            .values()
            .filter(|r| r.webhook_url.as_deref().is_some_and(names_job))
            .map(RequestRecord::inspection)
            .collect()
    }

    pub fn set_sync_outcome(&self, id: &str, failed: bool) {
        self.with_record(id, |r| {
            r.status = Status::Completed;
            r.failed = failed;
        });
    }

    /// Counts one sync run of `prompt` and returns how many there have been, this one included.
    pub fn count_run(&self, prompt: &str) -> u32 {
        let mut counts = lock(&self.run_attempts);
        let n = counts.entry(prompt.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn queue_view(&self, id: &str) -> Option<QueueView> {
        let requests = lock(&self.requests);
        let r = requests
            .get(id)
            .filter(|r| r.mode == Mode::Queue && !r.rejected)?;
        let d = &r.directives;
        Some(QueueView {
            status: r.status,
            failed: r.failed,
            output: r.output.clone(),
            result_failure: d.result_status.map(|s| (s, d.result_error_type.clone())),
        })
    }

    /// IN_QUEUE -> IN_PROGRESS; false when the request was cancelled meanwhile.
    pub fn start(&self, id: &str) -> bool {
        self.with_record(id, |r| {
            if r.status == Status::InQueue {
                r.status = Status::InProgress;
            }
            r.status == Status::InProgress
        })
        .unwrap_or(false)
    }

    /// -> COMPLETED; false when the request was cancelled meanwhile (it then never delivers).
    pub fn complete(&self, id: &str) -> bool {
        self.with_record(id, |r| {
            if r.status == Status::Cancelled {
                return false;
            }
            r.status = Status::Completed;
            r.failed = r.directives.error || r.directives.queue_error;
            true
        })
        .unwrap_or(false)
    }

    pub fn cancel(&self, id: &str) -> CancelOutcome {
        let mut requests = lock(&self.requests);
        let Some(r) = requests
            .get_mut(id)
            .filter(|r| r.mode == Mode::Queue && !r.rejected)
        else {
            return CancelOutcome::NotFound;
        };
        r.cancel_calls += 1;
        if r.cancel_calls <= u64::from(r.directives.cancel_fail_first) {
            return CancelOutcome::Unavailable;
        }
        match r.status {
            Status::Completed => CancelOutcome::AlreadyCompleted,
            _ => {
                r.status = Status::Cancelled;
                CancelOutcome::Requested
            }
        }
    }

    pub fn record_attempt(&self, id: &str, attempt: DeliveryAttempt) {
        self.with_record(id, |r| r.deliveries.push(attempt));
    }

    /// Counts one fetch of a media URL; `None` when no request names that file.
    pub fn record_media_fetch(&self, id: &str, file_name: &str) -> Option<MediaFetch> {
        let mut requests = lock(&self.requests);
        let r = requests
            .get_mut(id)
            .filter(|r| !r.rejected && r.media.file_name == file_name)?;
        r.media_fetches += 1;
        Some(MediaFetch {
            media: r.media.clone(),
            directives: r.directives.clone(),
            fetch_number: r.media_fetches,
            queued: r.mode == Mode::Queue,
        })
    }
}
