//! The completion core: turns a fal result into a stored asset and a completed job. One use case for the sync
//! path, the webhook and the reconciler, so they can race safely:
//!
//! 1. a terminal job is left alone;
//! 2. the job's claim (a renewed lease in `job_completion_claims`) makes one caller at a time do the work; a
//!    caller that dies stops renewing and the next one takes over after the lease, and one that fails ends its
//!    lease at once; the claim counts its holders until the job closes;
//! 3. the media is streamed from fal into S3 under a deterministic key (a retry overwrites, never orphans; a
//!    holder after another removes, once it has committed, what that one may have stored under another extension);
//! 4. ONE transaction inserts the asset (unique on `(job_id, asset_index)`), moves the job to `completed` only if
//!    it is still open, completes the usage row and drops the claim. Readers see the job completed and its asset
//!    together, or neither.
//!
//! Our final verdicts (no result URL, media gone, URL not allowed, too large) fail the job; transient faults
//! (S3, Postgres, media 5xx/timeout) leave it unchanged and are returned so the caller can answer "retry".

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::Settings;
use crate::db::jobs::JobRecord;
use crate::db::{self, DbError};
use crate::jobs::JobStatus;
use crate::media::{self, FetchError, MediaPolicy};
use crate::state::AppState;
use crate::storage::StorageError;

/// How long a claim lives without renewal: a dead holder blocks a job for at most this long.
pub const LEASE: Duration = Duration::from_secs(30);
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long a second caller waits for the holder to finish before answering "busy".
const BUSY_WAIT: Duration = Duration::from_secs(8);
/// How often that caller looks again: soon at first (most holders finish within milliseconds: an image's
/// completion), then every [`BUSY_POLL_MAX`] (a video's transfer takes seconds).
const BUSY_POLL_MIN: Duration = Duration::from_millis(10);
const BUSY_POLL_MAX: Duration = Duration::from_millis(200);

/// What the result is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultType {
    Image,
    Video,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::Image => "image",
            ResultType::Video => "video",
        }
    }
}

/// The result file named by a fal output.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMedia {
    pub url: String,
    pub result_type: ResultType,
    pub content_type: Option<String>,
}

/// Where the output names its file: `video.url` (video), `images[0].url` (image), `output.url` (type from the
/// job's format).
pub fn result_media(output: &Value, job_format: Option<&str>) -> Option<ResultMedia> {
    let pick = |v: &Value, t: ResultType| {
        let url = v.get("url")?.as_str()?.trim();
        (!url.is_empty()).then(|| ResultMedia {
            url: url.to_owned(),
            result_type: t,
            content_type: v
                .get("content_type")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    };
    output
        .get("video")
        .and_then(|v| pick(v, ResultType::Video))
        .or_else(|| {
            output
                .get("images")?
                .get(0)
                .and_then(|v| pick(v, ResultType::Image))
        })
        .or_else(|| {
            let t = if job_format == Some("video") {
                ResultType::Video
            } else {
                ResultType::Image
            };
            output.get("output").and_then(|v| pick(v, t))
        })
}

/// The stored content type and file extension: the media's own type when it is a known image/video type, else
/// the type fal named, else the result type's default.
pub fn content_type_and_ext(
    served: Option<&str>,
    named: Option<&str>,
    t: ResultType,
) -> (String, &'static str) {
    let known = |ct: &str| -> Option<&'static str> {
        Some(match ct {
            "image/png" => "png",
            "image/jpeg" | "image/jpg" => "jpg",
            "image/webp" => "webp",
            "image/gif" => "gif",
            "video/mp4" => "mp4",
            "video/webm" => "webm",
            "video/quicktime" => "mov",
            _ => return None,
        })
    };
    for ct in [served, named].into_iter().flatten() {
        let ct = ct
            .split(';')
            .next()
            .unwrap_or(ct)
            .trim()
            .to_ascii_lowercase();
        if let Some(ext) = known(&ct) {
            let ct = if ct == "image/jpg" {
                "image/jpeg".to_owned()
            } else {
                ct
            };
            return (ct, ext);
        }
    }
    match t {
        ResultType::Image => ("image/png".into(), "png"),
        ResultType::Video => ("video/mp4".into(), "mp4"),
    }
}

/// A page or document served where the result should be (a CDN edge's error or sign-in page with a 200) is not the
/// result: a fault that may pass, as a 5xx would be, never a completed job whose file is no media.
fn not_a_document(served: Option<&str>) -> Result<(), CompletionError> {
    match served.filter(|t| is_document(t)) {
        Some(t) => Err(CompletionError::Media(format!(
            "the result URL served {t}, not media"
        ))),
        None => Ok(()),
    }
}

/// Whether a served content type is a document (text, HTML, JSON, XML, script): what an error page is, never what
/// an image or video result is.
fn is_document(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some((top, sub)) = essence.split_once('/') else {
        return false;
    };
    top == "text"
        || (top == "application"
            && (matches!(sub, "json" | "xml" | "javascript" | "xhtml+xml" | "html")
                || sub.ends_with("+json")
                || sub.ends_with("+xml")))
}

/// The deterministic key of a job's result: the original's `<user_id>/<job_id>_…` shape, without a timestamp.
pub fn result_key(job: &JobRecord, ext: &str) -> String {
    format!("{}/{}_0.{ext}", job.user_id, job.id)
}

pub fn thumbnail_key(job: &JobRecord) -> String {
    format!("{}/{}_0.thumb.webp", job.user_id, job.id)
}

/// What a completion did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(Completed),
    /// The job was already terminal (or became so while we worked): nothing changed.
    AlreadyTerminal(JobStatus),
    /// Our final verdict: the job is now `failed` with this message.
    Failed(String),
    /// Another caller holds the job's claim and has not finished yet.
    Busy,
    /// The result of a queue request the job abandoned when it fell back to the sync route was refused: the sync
    /// run decides the job, which stays as it was.
    Abandoned,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub asset_id: Uuid,
    pub storage_path: String,
    pub thumbnail_path: Option<String>,
    pub result_type: ResultType,
    pub mime_type: String,
    pub size: u64,
    pub original_url: String,
}

/// A fault of ours worth retrying; the job is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CompletionError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("storage: {0}")]
    Storage(StorageError),
    #[error("media: {0}")]
    Media(String),
}

impl From<tokio_postgres::Error> for CompletionError {
    fn from(e: tokio_postgres::Error) -> Self {
        CompletionError::Db(DbError::Query(e))
    }
}

/// How the usage row is settled in the completing transaction.
#[derive(Debug, Clone)]
pub enum UsageSettlement {
    /// Sync run: the row is written now, with the run's details.
    Insert(Box<db::usage::NewUsage>),
    /// Sync run whose row was written before its result was stored: nothing left to settle.
    Written,
    /// Queue: complete the row written at submit (insert one for jobs submitted before the port), merging
    /// what the provider reported (`provider_metadata`, e.g. Replicate's metrics) into its metadata.
    CompleteQueued {
        request_id: Option<String>,
        provider_metadata: Value,
    },
}

/// One completion request.
pub struct Completion<'a> {
    pub job: &'a JobRecord,
    pub output: &'a Value,
    /// Metadata keys the caller adds (e.g. `fal_response` for sync, `fal_webhook_payload` for the webhook).
    pub metadata: Value,
    pub usage: UsageSettlement,
    /// The queue request a webhook delivery on the queue route reports on: a result of it we refuse does not fail
    /// a job that fell back to the sync route and abandoned it ([`db::runs::abandons`]). `None` elsewhere.
    pub queue_delivery: Option<String>,
}

/// The result's video length in seconds as the provider reports it (`video.duration`, else `duration`).
pub fn video_duration(output: &Value) -> Option<&Value> {
    output
        .get("video")
        .and_then(|v| v.get("duration"))
        .or_else(|| output.get("duration"))
        .filter(|d| d.is_number())
}

impl<'a> Completion<'a> {
    /// A queued job's result (webhook delivery or reconciler): the request's summary as `fal_webhook_payload`, the
    /// caller's `extra` metadata keys, and the usage row written at submit completed.
    pub fn queued(
        job: &'a JobRecord,
        output: &'a Value,
        request_id: Option<String>,
        extra: Value,
    ) -> Self {
        let mut metadata = json!({
            "fal_webhook_payload": {
                "request_id": request_id,
                "seed": output.get("seed"),
                "timings": output.get("timings"),
            },
            "video_duration": video_duration(output),
        });
        crate::json::extend(&mut metadata, extra);
        Completion {
            job,
            output,
            metadata,
            usage: UsageSettlement::CompleteQueued {
                request_id,
                provider_metadata: json!({}),
            },
            queue_delivery: None,
        }
    }

    /// Adds what the provider reported to the usage row a queued completion settles.
    pub fn add_usage_metadata(&mut self, extra: Value) {
        if let UsageSettlement::CompleteQueued {
            provider_metadata, ..
        } = &mut self.usage
        {
            crate::json::extend(provider_metadata, extra);
        }
    }
}

/// Completes the job from fal's output, exactly once whatever the number of concurrent callers.
pub async fn complete(
    state: &AppState,
    settings: &Settings,
    c: Completion<'_>,
) -> Result<Outcome, CompletionError> {
    let job = c.job;
    if job.is_closed() {
        return Ok(Outcome::AlreadyTerminal(job.status));
    }
    let holder = Uuid::new_v4();
    let attempts = match acquire(state, settings, job.id, holder).await? {
        Acquired::Held { attempts } => attempts,
        Acquired::Not(outcome) => return Ok(outcome),
    };
    // Ends with the completion however it ends: returned, panicked, or dropped by a caller's deadline (a task left
    // renewing would hold the job from every other caller for as long as the process lives).
    let heartbeat = spawn_heartbeat(state, settings, job.id, holder);
    let result = complete_claimed(state, settings, &c, holder, attempts).await;
    drop(heartbeat);
    if result.is_err() {
        // Free the job at once so fal's retry need not wait for the lease; if this fails too, the lease ends.
        if let Ok(client) = state.db_client(settings).await {
            let _ = db::claims::expire(&**client, job.id, holder).await;
        }
    }
    result
}

async fn claim(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
    holder: Uuid,
) -> Result<Option<i32>, CompletionError> {
    let client = state.db_client(settings).await?;
    Ok(db::claims::try_claim(&**client, job_id, holder, LEASE).await?)
}

/// What [`acquire`] came to.
enum Acquired {
    /// We hold the job's claim, its `attempts`-th holder.
    Held { attempts: i32 },
    /// What the wait found instead: the job became terminal, or its holder is still at work.
    Not(Outcome),
}

/// Takes the job's claim, waiting up to [`BUSY_WAIT`] while another caller holds it. A claim whose holder died is
/// taken over as soon as its lease ends, and one whose holder failed at once.
async fn acquire(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
    holder: Uuid,
) -> Result<Acquired, CompletionError> {
    let started = Instant::now();
    let mut pauses = ExponentialBuilder::default()
        .with_min_delay(BUSY_POLL_MIN)
        .with_max_delay(BUSY_POLL_MAX)
        .without_max_times()
        .build();
    loop {
        if let Some(attempts) = claim(state, settings, job_id, holder).await? {
            return Ok(Acquired::Held { attempts });
        }
        if started.elapsed() >= BUSY_WAIT {
            return Ok(Acquired::Not(Outcome::Busy));
        }
        tokio::time::sleep(pauses.next().unwrap_or(BUSY_POLL_MAX)).await;
        let client = state.db_client(settings).await?;
        match db::jobs::get(&**client, job_id).await? {
            Some(j) if j.is_closed() => {
                return Ok(Acquired::Not(Outcome::AlreadyTerminal(j.status)));
            }
            Some(_) => {}
            None => {
                return Ok(Acquired::Not(Outcome::AlreadyTerminal(
                    JobStatus::Cancelled,
                )));
            }
        }
    }
}

fn spawn_heartbeat(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
    holder: Uuid,
) -> tokio_util::task::AbortOnDropHandle<()> {
    let db = state.db.clone();
    let url = settings.secrets.database_url.clone();
    let ca = settings.secrets.database_ca_cert.clone();
    tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match db.client(&url, ca.as_deref()).await {
                Ok(client) => match db::claims::renew(&**client, job_id, holder, LEASE).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(%job_id, "completion claim lost"),
                    Err(e) => {
                        tracing::warn!(%job_id, error = %e, "completion claim renewal failed")
                    }
                },
                Err(e) => tracing::warn!(%job_id, error = %e, "completion claim renewal failed"),
            }
        }
    }))
}

/// The result as stored by [`transfer`].
struct Stored {
    media: ResultMedia,
    key: String,
    mime_type: String,
    size: u64,
    thumbnail_path: Option<String>,
}

/// What the transfer came to: stored, or our final verdict against the result (the job fails with it).
enum Transfer {
    Stored(Stored),
    Refused(String),
}

/// claim → transfer → record → commit, under the claim `holder` holds as its `attempts`-th holder.
async fn complete_claimed(
    state: &AppState,
    settings: &Settings,
    c: &Completion<'_>,
    holder: Uuid,
    attempts: i32,
) -> Result<Outcome, CompletionError> {
    let job = c.job;
    let claimed_at = Instant::now();
    if let Some(status) = terminal_under_claim(state, settings, job.id, holder).await? {
        return Ok(Outcome::AlreadyTerminal(status));
    }
    let stored = match transfer(state, settings, c).await? {
        Transfer::Stored(s) => s,
        Transfer::Refused(message) => {
            let unless_abandoned = c.queue_delivery.as_deref().map(|r| (r, claimed_at));
            return fail_claimed(state, settings, job, holder, &message, unless_abandoned).await;
        }
    };
    let (asset, patch) = record_of(c, &stored);
    let committed = commit_completion(state, settings, c, holder, &asset, &patch, &stored).await;
    let asset_id = match committed {
        Ok(Committed::Done(id)) => id,
        // The owner deleted the job and wrote another row under its id: not this job, which is gone.
        Ok(Committed::Replaced) => {
            remove_objects(state, settings, job).await;
            return Ok(Outcome::AlreadyTerminal(JobStatus::Cancelled));
        }
        Ok(Committed::NotOurs) => {
            // Our lease ran out (while our database was unreachable). With the run still open, another caller
            // took the job over, and may hold it or have let it go: it writes the same keys, and it or a retry
            // completes or fails the job. Nothing of ours is committed, and nothing is removed. With the run
            // closed, a cancel or failure ended the job (and cleared the claim): as below.
            let current = current_state(state, settings, job.id).await?;
            if !current.run_closed {
                return Ok(Outcome::Busy);
            }
            return Ok(ended_meanwhile(state, settings, job, current).await);
        }
        Ok(Committed::NotOpen) => {
            let current = current_state(state, settings, job.id).await?;
            return Ok(ended_meanwhile(state, settings, job, current).await);
        }
        Err(e) => {
            // The commit's fate is unknown until the job is read back: only a job seen still open, and not
            // claimed by another caller since (who writes the same keys), loses the object (the retry that
            // completes it writes it again). If the database cannot tell, the object stays; cancelling or
            // failing the job later removes it.
            if still_ours(state, settings, job.id, holder).await == Some(true) {
                remove_objects(state, settings, job).await;
            }
            return Err(e);
        }
    };
    tracing::info!(job_id = %job.id, key = %stored.key, bytes = stored.size, "job completed");
    // What a holder before us may have left under another extension (it stored the result, then failed or was
    // killed before its commit, and the media came back with another type) is nothing's now. The first holder
    // had nobody before it: the delete is skipped on the common path.
    if attempts > 1 {
        let ours = [Some(stored.key.as_str()), stored.thumbnail_path.as_deref()];
        let keep: Vec<&str> = ours.into_iter().flatten().collect();
        remove_objects_except(state, settings, job, &keep).await;
    }
    Ok(Outcome::Completed(Completed {
        asset_id,
        storage_path: stored.key,
        thumbnail_path: stored.thumbnail_path,
        result_type: stored.media.result_type,
        mime_type: stored.mime_type,
        size: stored.size,
        original_url: stored.media.url,
    }))
}

/// Re-read under the claim: the job may have finished between the caller's read and our claim.
async fn terminal_under_claim(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
    holder: Uuid,
) -> Result<Option<JobStatus>, CompletionError> {
    let client = state.db_client(settings).await?;
    match db::jobs::get(&**client, job_id).await? {
        Some(current) if current.is_closed() => {
            // A status its owner wrote over an open run can be written back: then the claim's row stays, counting
            // the holders (one before us may have stored a result), until the run is closed (`runs::close`).
            if current.run.as_ref().is_some_and(|r| r.closed_at.is_none()) {
                db::claims::expire(&**client, job_id, holder).await?;
            } else {
                db::claims::release(&**client, job_id, holder).await?;
            }
            Ok(Some(current.status))
        }
        _ => Ok(None),
    }
}

/// The job as it reads now: its status (`cancelled` when it is gone), whether its run is closed, and the keys of the
/// result its run records, if any.
struct CurrentState {
    status: JobStatus,
    run_closed: bool,
    recorded: [Option<String>; 2],
}

async fn current_state(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
) -> Result<CurrentState, CompletionError> {
    let client = state.db_client(settings).await?;
    let job = db::jobs::get(&**client, job_id).await?;
    let run = job.as_ref().and_then(|j| j.run.as_ref());
    let recorded = match run {
        Some(r) if r.result_key.is_some() => [r.result_key.clone(), r.thumbnail_key.clone()],
        _ => [None, None],
    };
    Ok(CurrentState {
        status: job.as_ref().map_or(JobStatus::Cancelled, |j| j.status),
        run_closed: run.is_none_or(|r| r.closed_at.is_some()),
        recorded,
    })
}

/// A job that ended while we transferred. Cancelled (or failed): keep it so, and leave no object behind. Completed
/// by another caller: the objects its run records stay. Which of the two is read from the run's result key, which
/// only the completing transaction writes, not from the job's status, which its owner can rewrite.
async fn ended_meanwhile(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    current: CurrentState,
) -> Outcome {
    let keep: Vec<&str> = current
        .recorded
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    remove_objects_except(state, settings, job, &keep).await;
    Outcome::AlreadyTerminal(current.status)
}

/// Why an empty result is not stored: a fault that may pass, as a 5xx from the media host would be.
const EMPTY_BODY: &str = "the result URL served an empty body";

/// Streams the result named by the output from the media host into S3 under the job's deterministic key, and
/// copies the video thumbnail. Transient faults are errors (the job stays open); final verdicts are `Refused`.
async fn transfer(
    state: &AppState,
    settings: &Settings,
    c: &Completion<'_>,
) -> Result<Transfer, CompletionError> {
    let job = c.job;
    let Some(found) = result_media(c.output, job.submitted_format()) else {
        return Ok(Transfer::Refused(
            "No result URL in fal.ai webhook payload".into(),
        ));
    };
    let policy = MediaPolicy::from_config(&settings.config);
    let media = match media::fetch(&state.media_http, &policy, &found.url).await {
        Ok(m) => m,
        Err(FetchError::Rejected(r)) => {
            tracing::warn!(job_id = %job.id, reason = %r, "result URL refused");
            return Ok(Transfer::Refused(format!("Result URL not allowed: {r}")));
        }
        Err(e @ FetchError::Gone(_)) => return Ok(Transfer::Refused(e.to_string())),
        Err(FetchError::Transient(m)) => return Err(CompletionError::Media(m)),
    };
    not_a_document(media.content_type.as_deref())?;
    let (mime_type, ext) = content_type_and_ext(
        media.content_type.as_deref(),
        found.content_type.as_deref(),
        found.result_type,
    );
    let key = result_key(job, ext);
    let limit = Some(settings.config.media_max_bytes);
    let bucket = &settings.config.workspace_bucket;
    let size = match state
        .storage
        .put_download(
            bucket,
            &key,
            &mime_type,
            media.body,
            media.content_length,
            limit,
        )
        .await
    {
        Ok(s) => s.size,
        Err(StorageError::TooLarge { limit }) => {
            let message = format!("Result larger than the limit of {limit} bytes");
            return Ok(Transfer::Refused(message));
        }
        // Refused before anything was stored, so there is no object to delete.
        Err(StorageError::Empty) => return Err(CompletionError::Media(EMPTY_BODY.into())),
        Err(StorageError::Source(m)) => return Err(CompletionError::Media(m)),
        Err(e) => return Err(CompletionError::Storage(e)),
    };
    let thumbnail_path = if found.result_type == ResultType::Video {
        copy_thumbnail(state, settings, job).await
    } else {
        None
    };
    Ok(Transfer::Stored(Stored {
        media: found,
        key,
        mime_type,
        size,
        thumbnail_path,
    }))
}

/// The asset row and the job's metadata copies for a stored result. Pure.
fn record_of(c: &Completion<'_>, stored: &Stored) -> (db::assets::NewAsset, Value) {
    let job = c.job;
    let result_type = stored.media.result_type;
    let seed = output_seed(c.output).unwrap_or_else(|| fallback_seed(job.id));
    let meta = |k: &str| job.metadata.get(k).cloned().unwrap_or(Value::Null);
    let default_mode = match result_type {
        ResultType::Video => "txt2vid",
        ResultType::Image => "txt2img",
    };
    let model_key = job.run.as_ref().map_or("unknown", |r| r.model_key.as_str());
    let provider = job.run.as_ref().map_or("fal", |r| r.provider_name.as_str());
    let asset = db::assets::NewAsset {
        user_id: job.user_id,
        job_id: job.id,
        asset_type: result_type.as_str().to_owned(),
        temp_storage_path: stored.key.clone(),
        thumbnail_path: stored.thumbnail_path.clone(),
        file_size_bytes: stored.size as i64,
        mime_type: stored.mime_type.clone(),
        generation_seed: seed,
        original_prompt: job.original_prompt.clone().unwrap_or_default(),
        model_used: model_key.to_owned(),
        generation_settings: json!({
            "model_key": model_key,
            "provider": provider,
            "content_mode": job.meta_str("content_mode").unwrap_or("nsfw"),
            "generation_mode": job.meta_str("generation_mode").unwrap_or(default_mode),
            "seed": seed,
            "scene_id": meta("scene_id"),
            "scene_template_id": meta("scene_template_id"),
            "scene_template_name": meta("scene_template_name"),
            "original_scene_prompt": job.metadata.get("original_scene_prompt").cloned()
                .unwrap_or_else(|| json!(job.original_prompt)),
            "num_characters": meta("num_characters"),
        }),
    };
    let mut patch = json!({
        "result_type": result_type.as_str(),
        "original_fal_url": stored.media.url,
        "storage_path": stored.key,
        "thumbnail_path": stored.thumbnail_path,
        "mime_type": stored.mime_type,
        "file_size_bytes": stored.size,
    });
    if let (Some(p), Some(extra)) = (patch.as_object_mut(), c.metadata.as_object()) {
        p.extend(extra.clone());
    }
    // fal's output is stored as given, less what Postgres cannot store (U+0000 would fail every retry).
    (asset, crate::json::without_nul(&patch))
}

/// What the completing transaction came to.
enum Committed {
    /// The job is completed with this asset.
    Done(Uuid),
    /// The job was no longer open: nothing committed.
    NotOpen,
    /// The claim is no longer ours (our lease ran out; another holder took it over, or a cancel or failure cleared
    /// it): nothing committed.
    NotOurs,
    /// The job's row is another one its owner wrote under its id after deleting it: nothing committed.
    Replaced,
}

/// The completing transaction: claim release, asset, result keys, job transition, usage. It commits only while the
/// claim is still ours: a holder whose lease ran out must not complete the job over the one that took it over.
async fn commit_completion(
    state: &AppState,
    settings: &Settings,
    c: &Completion<'_>,
    holder: Uuid,
    asset: &db::assets::NewAsset,
    patch: &Value,
    stored: &Stored,
) -> Result<Committed, CompletionError> {
    let job = c.job;
    let mut client = state.db_client(settings).await?;
    let tx = client.transaction().await?;
    // The job's row first, as every writer of a job takes it; locked, no delete and insert of another row with its
    // id can come between the checks and the transition.
    db::jobs::lock(&*tx, job.id).await?;
    // (A deleted job's claim went with it: the replacement is told first.)
    let outcome = if job.run.is_some() && !db::runs::exists(&*tx, job.id).await? {
        Some(Committed::Replaced)
    } else if !db::claims::release(&*tx, job.id, holder).await? {
        Some(Committed::NotOurs)
    } else {
        None
    };
    if let Some(outcome) = outcome {
        tx.rollback().await?;
        return Ok(outcome);
    }
    let asset_id = db::assets::insert_once(&*tx, asset).await?;
    if !db::jobs::transition(&*tx, job.id, JobStatus::Completed, None, patch).await? {
        tx.rollback().await?;
        db::claims::release(&**client, job.id, holder).await?;
        return Ok(Committed::NotOpen);
    }
    let thumbnail = stored.thumbnail_path.as_deref();
    db::runs::record_result(&*tx, job.id, &stored.key, thumbnail).await?;
    settle_usage(&*tx, job, &c.usage, stored.media.result_type).await?;
    tx.commit().await?;
    Ok(Committed::Done(asset_id))
}

/// How long [`still_ours`] waits for the job's row: a completing transaction whose connection was lost holds it
/// until its server notices.
const STILL_OURS_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

/// Whether the job is still open and its claim, if any, is ours and live (`None`: the database cannot tell).
///
/// Read under the job's row lock: a completing transaction whose `COMMIT` was cut off may still be running, and
/// a plain read would see the job open while that commit lands. Once the lock is ours, it has ended either way.
async fn still_ours(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
    holder: Uuid,
) -> Option<bool> {
    let mut client = state.db_client(settings).await.ok()?;
    let tx = client.transaction().await.ok()?;
    tx.batch_execute(STILL_OURS_LOCK_TIMEOUT).await.ok()?;
    db::jobs::lock(&*tx, job_id).await.ok()?;
    let job = db::jobs::get(&*tx, job_id).await.ok()??;
    let claim = db::claims::current(&*tx, job_id).await.ok()?;
    tx.commit().await.ok()?;
    // A lease of ours that ran out can be taken over at any moment: then the keys are about to be someone else's.
    Some(!job.is_closed() && claim.is_none_or(|c| c.holder == holder && c.live))
}

/// Deletes the job's result objects by their exact keys (every key a result of the job can have), best effort:
/// the bucket's expiry is the backstop. Exact keys need only `s3:DeleteObject`, no listing.
pub async fn remove_objects(state: &AppState, settings: &Settings, job: &JobRecord) {
    remove_objects_except(state, settings, job, &[]).await;
}

/// [`remove_objects`], but for the keys of a stored result, which stay: a holder before us may have stored the
/// result under another extension (the served type decides it), which nothing points at once the job completes.
async fn remove_objects_except(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    keep: &[&str],
) {
    let mut keys = crate::storage::result_key_candidates(job.user_id, job.id);
    keys.retain(|k| !keep.contains(&k.as_str()));
    if let Err(e) = state
        .storage
        .delete_keys(&settings.config.workspace_bucket, &keys)
        .await
    {
        tracing::warn!(job_id = %job.id, error = %e, "could not delete the objects of an unfinished job");
    }
}

/// Settles the usage row in the completing transaction. A queued job's time and price come from its run (the
/// server's clock and price list), never from `started_at` or the metadata estimate its owner can rewrite; a job
/// without a run (submitted before the port) has nothing else.
async fn settle_usage<C: tokio_postgres::GenericClient>(
    client: &C,
    job: &JobRecord,
    usage: &UsageSettlement,
    result_type: ResultType,
) -> Result<(), tokio_postgres::Error> {
    match usage {
        UsageSettlement::Insert(row) => {
            db::usage::insert_once(client, row).await?;
        }
        UsageSettlement::Written => {}
        UsageSettlement::CompleteQueued {
            request_id,
            provider_metadata,
        } => {
            let (started, cost) = match &job.run {
                Some(run) => (
                    Some(run.created_at),
                    Some(crate::pricing::estimated_cost(
                        &run.model_key,
                        result_type == ResultType::Video,
                    )),
                ),
                None => (job.started_at, None),
            };
            let elapsed_ms = started
                .map(|t| {
                    (chrono::Utc::now() - t)
                        .num_milliseconds()
                        .clamp(0, i32::MAX as i64) as i32
                })
                .unwrap_or(0);
            let mut meta = json!({
                "request_id": request_id,
                "webhook": true,
                "cost_source": "estimated",
                "webhook_completed": true,
            });
            crate::json::extend(&mut meta, provider_metadata.clone());
            let updated = db::usage::complete(
                client,
                job.id,
                request_id.as_deref(),
                200,
                elapsed_ms,
                &meta,
            )
            .await?;
            if updated == 0 {
                let provider = job.run.as_ref().map_or("fal", |r| r.provider_name.as_str());
                db::usage::insert_for_job(client, job.id, provider, cost, elapsed_ms, &meta)
                    .await?;
            }
        }
    }
    Ok(())
}

/// How long a claim may have been held for the refused result of an abandoned request to leave the job to the sync
/// run: well within [`BUSY_WAIT`], which a sync run waiting for the claim may have begun a little before it was
/// taken. Held longer, the claim may have sent the sync run away without its result (it answers `Busy` as queued,
/// leaving the job to the holder), and the job is failed as any other.
const ABANDON_WITHIN: Duration = Duration::from_secs(4);

/// Marks the job failed with our verdict, under the claim; with `unless_abandoned` (the delivered queue request and
/// when the claim was taken), not when, as for [`fail`], that request is one the job abandoned, and the claim was
/// taken less than [`ABANDON_WITHIN`] ago.
async fn fail_claimed(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    holder: Uuid,
    message: &str,
    unless_abandoned: Option<(&str, Instant)>,
) -> Result<Outcome, CompletionError> {
    let mut client = state.db_client(settings).await?;
    let tx = client.transaction().await?;
    if let Some((request_id, claimed_at)) = unless_abandoned {
        db::jobs::lock(&*tx, job.id).await?;
        let lifetime = settings.config.sync_run_lifetime();
        if claimed_at.elapsed() < ABANDON_WITHIN
            && db::runs::abandons(&*tx, job.id, request_id, lifetime).await?
        {
            // A refused transfer stores nothing, and the job's keys are the sync run's too: no object is removed.
            // The job stays open: the claim's row stays too, counting the holders before the sync run's.
            db::claims::expire(&*tx, job.id, holder).await?;
            tx.commit().await?;
            tracing::info!(job_id = %job.id, reason = message, "result of a queue request the sync fallback abandoned refused; skipped");
            return Ok(Outcome::Abandoned);
        }
    }
    let moved = fail_in(&*tx, job, message).await?;
    db::claims::release(&*tx, job.id, holder).await?;
    tx.commit().await?;
    if moved {
        tracing::info!(job_id = %job.id, reason = message, "job failed");
        remove_objects(state, settings, job).await;
        Ok(Outcome::Failed(message.to_owned()))
    } else {
        let current = db::jobs::get(&**client, job.id).await?.map(|j| j.status);
        Ok(Outcome::AlreadyTerminal(
            current.unwrap_or(JobStatus::Cancelled),
        ))
    }
}

/// Fails an open job (and its storyboard clip) in the caller's transaction; false when it was not open.
pub async fn fail_in<C: tokio_postgres::GenericClient>(
    client: &C,
    job: &JobRecord,
    message: &str,
) -> Result<bool, tokio_postgres::Error> {
    let moved =
        db::jobs::transition(client, job.id, JobStatus::Failed, Some(message), &json!({})).await?;
    if moved && let Some(clip) = job.run.as_ref().and_then(|r| r.targets.storyboard_clip_id) {
        db::postprocess::fail_storyboard_clip(client, job.id, clip, job.user_id).await?;
    }
    if moved {
        db::claims::clear(client, job.id).await?;
    }
    Ok(moved)
}

/// Closes the open run of a job its owner ended (its status says so: written through RLS, or the row's status
/// is otherwise terminal while the run is open), and fails its storyboard clip as the API's cancel does, where the
/// clip is still open and no later job was asked for it: a clip left `generating` would wait for a result that
/// never comes. Only when this call closed the run, with no result: `job` may have been read before another
/// caller completed the job (and closed its run), whose clip its post-processing completes. `client` must be
/// autocommit ([`db::runs::close`]).
pub async fn close_owner_ended<C: tokio_postgres::GenericClient>(
    client: &C,
    job: &JobRecord,
) -> Result<(), tokio_postgres::Error> {
    let ended_without_result = db::runs::close(client, job.id).await?;
    if let Some(clip) = job.run.as_ref().and_then(|r| r.targets.storyboard_clip_id)
        && ended_without_result
    {
        db::postprocess::fail_storyboard_clip(client, job.id, clip, job.user_id).await?;
    }
    Ok(())
}

/// Fails an open job with fal's or our message (no claim needed: the guarded transition decides). With
/// `unless_abandoned`, the request of a queue submission whose delivery reported the failure: not when, under the
/// job's lock, the run shows that the job fell back to the sync route and abandoned that request
/// ([`db::runs::abandons`]).
pub async fn fail(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    message: &str,
    unless_abandoned: Option<&str>,
) -> Result<bool, CompletionError> {
    let mut client = state.db_client(settings).await?;
    let tx = client.transaction().await?;
    if let Some(request_id) = unless_abandoned {
        db::jobs::lock(&*tx, job.id).await?;
        if db::runs::abandons(
            &*tx,
            job.id,
            request_id,
            settings.config.sync_run_lifetime(),
        )
        .await?
        {
            tracing::info!(job_id = %job.id, "failure of a queue request the sync fallback abandoned; skipped");
            tx.rollback().await?;
            return Ok(false);
        }
    }
    let moved = fail_in(&*tx, job, message).await?;
    tx.commit().await?;
    if moved {
        // An earlier attempt may have stored the result before its commit failed.
        remove_objects(state, settings, job).await;
    }
    Ok(moved)
}

/// The video thumbnail: the reference image handed to fal, copied server-side when it is the owner's object in
/// one of our buckets (no fetch of a URL, no second signing). Best effort, as in the original.
async fn copy_thumbnail(state: &AppState, settings: &Settings, job: &JobRecord) -> Option<String> {
    let source = job.run.as_ref()?.reference.as_ref()?;
    let c = &settings.config;
    if ![&c.workspace_bucket, &c.library_bucket].contains(&&source.bucket) {
        tracing::warn!(job_id = %job.id, "thumbnail source outside our buckets refused");
        return None;
    }
    let key = crate::ownership::owned_key(job.user_id, &source.key)?;
    let target = thumbnail_key(job);
    match state
        .storage
        .copy(&source.bucket, key, &c.workspace_bucket, &target)
        .await
    {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "thumbnail copy failed");
            None
        }
    }
}

/// fal seeds are up to ~2^63; anything larger is folded into the column's range.
fn output_seed(output: &Value) -> Option<i64> {
    let seed = output.get("seed")?;
    seed.as_i64()
        .or_else(|| seed.as_u64().map(|u| (u % (i64::MAX as u64)) as i64))
        .or_else(|| seed.as_f64().map(|f| f as i64))
}

/// A stable stand-in seed (the column is NOT NULL): the same for every retry of the job.
fn fallback_seed(job_id: Uuid) -> i64 {
    let b = job_id.as_bytes();
    (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) % 1_000_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_url_priority_follows_the_original() {
        let o = json!({"video":{"url":"https://v3.fal.media/v.mp4"},"images":[{"url":"https://v3.fal.media/i.png"}]});
        assert_eq!(
            result_media(&o, None).unwrap().result_type,
            ResultType::Video
        );
        let o =
            json!({"images":[{"url":"https://v3.fal.media/i.png","content_type":"image/jpeg"}]});
        let m = result_media(&o, Some("video")).unwrap();
        assert_eq!(
            (m.result_type, m.content_type.as_deref()),
            (ResultType::Image, Some("image/jpeg"))
        );
        let o = json!({"output":{"url":"https://v3.fal.media/o"}});
        assert_eq!(
            result_media(&o, Some("video")).unwrap().result_type,
            ResultType::Video
        );
        assert_eq!(
            result_media(&o, Some("image")).unwrap().result_type,
            ResultType::Image
        );
        for none in [
            json!({}),
            json!({"images":[]}),
            json!({"video":{"url":""}}),
            json!({"video":{"url":7}}),
            json!(null),
        ] {
            assert_eq!(result_media(&none, None), None, "{none}");
        }
    }

    #[test]
    fn stored_type_and_extension_are_the_real_ones() {
        assert_eq!(
            content_type_and_ext(Some("image/jpeg"), Some("image/png"), ResultType::Image),
            ("image/jpeg".into(), "jpg")
        );
        assert_eq!(
            content_type_and_ext(Some("image/webp; q=1"), None, ResultType::Image),
            ("image/webp".into(), "webp")
        );
        assert_eq!(
            content_type_and_ext(
                Some("application/octet-stream"),
                Some("video/webm"),
                ResultType::Video
            ),
            ("video/webm".into(), "webm")
        );
        assert_eq!(
            content_type_and_ext(None, None, ResultType::Video),
            ("video/mp4".into(), "mp4")
        );
        assert_eq!(
            content_type_and_ext(Some("text/html"), None, ResultType::Image),
            ("image/png".into(), "png")
        );
    }

    #[test]
    fn documents_are_told_from_media() {
        for doc in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/PLAIN",
            "application/json",
            "application/problem+json",
            "application/xhtml+xml",
            "application/xml",
        ] {
            assert!(is_document(doc), "{doc}");
        }
        for media in [
            "image/png",
            "video/mp4",
            "application/octet-stream",
            "binary/octet-stream",
            "image/svg+xml",
            "",
            "nonsense",
        ] {
            assert!(!is_document(media), "{media}");
        }
    }

    #[test]
    fn seeds_fit_bigint_and_the_fallback_is_stable() {
        assert_eq!(
            output_seed(&json!({"seed": 196619188014358660u64})),
            Some(196619188014358660)
        );
        assert_eq!(
            output_seed(&json!({"seed": u64::MAX})),
            Some((u64::MAX % i64::MAX as u64) as i64)
        );
        assert_eq!(output_seed(&json!({})), None);
        let id = Uuid::new_v4();
        assert_eq!(fallback_seed(id), fallback_seed(id));
        assert!((0..1_000_000_000).contains(&fallback_seed(id)));
    }
}
