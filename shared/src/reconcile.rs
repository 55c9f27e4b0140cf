//! `reconcile_stale_jobs`: the lost-webhook reconciler. fal never drops a queued request, but a webhook can be
//! lost; every job of ours still open past a threshold is asked about at the provider's stored `status_url`. A
//! result completes the job through the SAME completion core as the webhook (so a late webhook and the reconciler
//! race safely); a failed request, an unknown one, a sync run whose function stopped, or a job past the deadline
//! (whatever fault is in the way then) is failed with a clear reason. It also re-runs post-processing steps that
//! did not record completion. Bounded work per run, least recently checked first; safe on several instances.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::completion::{self, Completion, Outcome};
use crate::config::{MAX_FUNCTION_TIMEOUT_SECS, Settings};
use crate::db;
use crate::db::jobs::JobRecord;
use crate::db::runs::{ProviderRequest, WebhookAuth};
use crate::fal::types::QueueState;
use crate::jobs::JobStatus;
use crate::provider::ProviderError;
use crate::replicate::PredictionStatus;
use crate::state::AppState;

pub use crate::config::ReconcileOptions;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ReconcileReport {
    pub examined: usize,
    pub completed: usize,
    pub failed: usize,
    /// Runs of jobs their owners ended or deleted, closed (their request cancelled at the provider).
    pub closed: usize,
    pub still_running: usize,
    pub skipped: usize,
    pub errors: usize,
    /// Phases that could not read the rows they work on (the database unreachable or refusing): they did nothing.
    /// Counted in `errors` too. The reconciler function fails an invocation with any, so that Lambda's `Errors`
    /// metric (and its alarm) shows a reconciler that cannot work, not one whose passes merely report it.
    pub unread: usize,
    pub post_processed: usize,
    /// Jobs, runs and post-processing taken but left for a later pass: the invocation had too little time left.
    pub deferred: usize,
    /// Whether the invocation's time ended a phase early or skipped one.
    pub cut_short: bool,
}

impl ReconcileReport {
    /// A phase could not read the rows it works on: logged, and counted in `unread` and `errors`.
    fn could_not_read(&mut self, what: &str, error: &dyn std::fmt::Display) {
        tracing::error!(error = %error, "reconciler could not read {what}");
        self.errors += 1;
        self.unread += 1;
    }
}

/// How long a pass may go on: no job is begun once less than what one job may take is left before `until` (the
/// invocation's deadline), so a pass ends by itself instead of being killed half-way through one.
#[derive(Debug, Clone, Copy)]
pub struct PassTime {
    until: Option<tokio::time::Instant>,
    per_job: Duration,
}

impl PassTime {
    /// Until `until` (`None`: no bound, as a pass run by hand), each job allowed its result's download
    /// (`MEDIA_DOWNLOAD_DEADLINE_SECS`) and [`JOB_OVERHEAD`] besides.
    pub fn new(settings: &Settings, until: Option<tokio::time::Instant>) -> Self {
        Self {
            until,
            per_job: settings.config.media_download_deadline + JOB_OVERHEAD,
        }
    }

    /// Whether a stale job (which may download and store its result) can still be begun.
    fn has_room(&self) -> bool {
        self.has_room_for(self.per_job)
    }

    /// Whether a step that downloads nothing (an orphan's cancel, a post-processing step) can still be begun.
    fn has_room_for_step(&self) -> bool {
        self.has_room_for(JOB_OVERHEAD)
    }

    fn has_room_for(&self, need: Duration) -> bool {
        self.until.is_none_or(|until| {
            until.saturating_duration_since(tokio::time::Instant::now()) >= need
        })
    }
}

/// What one job may take besides its download: the provider's answers, the database, storing the result; also
/// the allowance of a step that downloads nothing.
pub const JOB_OVERHEAD: Duration = Duration::from_secs(30);

/// One pass, within `time`.
pub async fn reconcile_stale_jobs(
    state: &AppState,
    settings: &Settings,
    opts: ReconcileOptions,
    time: PassTime,
) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    stale_jobs(state, settings, opts, time, &mut report).await;
    // The later phases download nothing: each step needs only its own allowance, so a long first phase does not
    // starve them (an orphaned run counts against its owner until it is closed).
    if time.has_room_for_step() {
        report.closed += close_orphans(state, settings, opts, time, &mut report).await;
        post_process_backlog(state, settings, opts, time, &mut report).await;
    } else {
        report.cut_short = true;
    }
    if report.cut_short {
        tracing::warn!(?report, "reconciler pass cut short: too little time left");
    } else {
        tracing::info!(?report, "reconciler pass done");
    }
    report
}

/// The stale open jobs, each asked about at its provider while one job's allowance is left. Those taken but not
/// begun get their check back, so the next pass takes them.
async fn stale_jobs(
    state: &AppState,
    settings: &Settings,
    opts: ReconcileOptions,
    time: PassTime,
    report: &mut ReconcileReport,
) {
    if !time.has_room() {
        report.cut_short = true;
        return;
    }
    let ids = match take(state, settings, opts).await {
        Ok(ids) => ids,
        Err(e) => {
            report.could_not_read("stale jobs", &e);
            return;
        }
    };
    for (i, id) in ids.iter().copied().enumerate() {
        if !time.has_room() {
            report.cut_short = true;
            report.deferred += ids.len() - i;
            give_back(state, settings, &ids[i..], opts).await;
            break;
        }
        report.examined += 1;
        match reconcile_one(state, settings, id, opts).await {
            Ok(Verdict::Completed) => report.completed += 1,
            Ok(Verdict::Failed) => report.failed += 1,
            Ok(Verdict::Closed) => report.closed += 1,
            Ok(Verdict::Running) => report.still_running += 1,
            Ok(Verdict::Skipped) => report.skipped += 1,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "reconciling a job failed; the next run retries");
                report.errors += 1;
            }
        }
    }
}

/// Gives taken jobs their check back (best effort: a job whose check stays is taken after `older_than`).
async fn give_back(state: &AppState, settings: &Settings, ids: &[Uuid], opts: ReconcileOptions) {
    let given = async {
        let client = state.db_client(settings).await?;
        Ok::<_, db::DbError>(db::reconcile::give_back(&**client, ids, opts.older_than).await?)
    };
    if let Err(e) = given.await {
        tracing::warn!(error = %e, jobs = ids.len(), "deferred jobs keep their check; a later pass takes them");
    }
}

/// Post-processing steps of completed jobs that did not record completion, re-run while a step's allowance is left.
async fn post_process_backlog(
    state: &AppState,
    settings: &Settings,
    opts: ReconcileOptions,
    time: PassTime,
    report: &mut ReconcileReport,
) {
    let pending = async {
        let client = state.db_client(settings).await?;
        Ok::<_, db::DbError>(
            db::reconcile::take_post_processing_backlog(
                &**client,
                Duration::from_secs(120),
                opts.batch,
            )
            .await?,
        )
    };
    match pending.await {
        Ok(ids) => {
            for (i, id) in ids.iter().copied().enumerate() {
                if !time.has_room_for_step() {
                    report.cut_short = true;
                    report.deferred += ids.len() - i;
                    break;
                }
                match crate::postprocess::run_steps(state, settings, id).await {
                    Ok(steps) if !steps.is_empty() => report.post_processed += 1,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(job_id = %id, error = %e, "post-processing re-run failed");
                        report.errors += 1;
                    }
                }
            }
        }
        Err(e) => {
            report.could_not_read("post-processing backlog", &e);
        }
    }
}

/// The orphaned runs (of jobs deleted while open, or closed while their cancel did not go through): each request is
/// cancelled at its provider, and the run no longer counts against its owner. One whose provider cannot be asked
/// now is kept for a later pass, until the deadline. How many were dropped.
async fn close_orphans(
    state: &AppState,
    settings: &Settings,
    opts: ReconcileOptions,
    time: PassTime,
    report: &mut ReconcileReport,
) -> usize {
    let taken = async {
        let client = state.db_client(settings).await?;
        let orphans = db::reconcile::stale_orphans(&**client, opts.older_than, opts.batch).await?;
        Ok::<_, db::DbError>(orphans)
    };
    let orphans = match taken.await {
        Ok(orphans) => orphans,
        Err(e) => {
            report.could_not_read("the runs of deleted jobs", &e);
            return 0;
        }
    };
    let mut closed = 0;
    for (i, o) in orphans.iter().enumerate() {
        if !time.has_room_for_step() {
            report.cut_short = true;
            report.deferred += orphans.len() - i;
            break;
        }
        let settled = match o.checked_cancel_url() {
            Some(url) => {
                crate::submission::cancel_request(state, settings, &o.provider_name, &url, o.job_id)
                    .await
            }
            None => true,
        };
        let given_up = written_past_deadline(o.created_at, opts);
        if !settled && given_up {
            tracing::warn!(job_id = %o.job_id, "a request could not be cancelled before the deadline; its run is dropped");
        }
        let done = async {
            let client = state.db_client(settings).await?;
            if !settled && !given_up {
                db::reconcile::orphan_cancel_failed(&**client, o.job_id).await?;
                return Ok(false);
            }
            let url = o.cancel_url.as_deref();
            Ok::<_, db::DbError>(db::reconcile::drop_orphan(&**client, o.job_id, url).await?)
        };
        match done.await {
            Ok(true) => closed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(job_id = %o.job_id, error = %e, "an orphaned run could not be dropped; the next pass retries");
                report.errors += 1;
            }
        }
    }
    closed
}

async fn take(
    state: &AppState,
    settings: &Settings,
    opts: ReconcileOptions,
) -> Result<Vec<Uuid>, db::DbError> {
    let client = state.db_client(settings).await?;
    Ok(db::reconcile::take_stale_open(&**client, opts.older_than, opts.batch).await?)
}

enum Verdict {
    Completed,
    Failed,
    Closed,
    Running,
    Skipped,
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("provider: {0}")]
    Provider(#[from] ProviderError),
    #[error("completion: {0}")]
    Completion(#[from] completion::CompletionError),
}

impl From<tokio_postgres::Error> for ReconcileError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReconcileError::Db(db::DbError::Query(e))
    }
}

async fn reconcile_one(
    state: &AppState,
    settings: &Settings,
    id: Uuid,
    opts: ReconcileOptions,
) -> Result<Verdict, ReconcileError> {
    let job = {
        let client = state.db_client(settings).await?;
        match db::jobs::get(&**client, id).await? {
            // Its result is stored (the completing transaction wrote it): over, whatever the status says now.
            Some(j) if j.run.as_ref().is_some_and(|r| r.result_key.is_some()) => {
                db::runs::close(&**client, j.id).await?;
                return Ok(Verdict::Closed);
            }
            Some(j) if !j.is_closed() => j,
            Some(j) if j.run.as_ref().is_some_and(|r| r.closed_at.is_none()) => {
                return close_ended(state, settings, &j).await;
            }
            _ => return Ok(Verdict::Skipped),
        }
    };
    // Past the deadline, a fault that lasts (the provider's answer, our storage) fails the job rather than
    // leaving it open for the next pass to retry forever.
    let past_deadline = past_deadline(&job, opts);
    let asked = match ask(state, settings, &job, opts).await {
        Ok(asked) => asked,
        Err(e) if past_deadline => {
            tracing::warn!(job_id = %job.id, error = %e, "the provider could not be asked; the deadline has passed");
            FalAnswer::Fail(gave_up(opts, "its provider could not be asked"))
        }
        Err(e) => return Err(e),
    };
    let (output, usage) = match asked {
        FalAnswer::Output(output, usage) => (output, usage),
        FalAnswer::Running => return Ok(Verdict::Running),
        FalAnswer::Fail(message) => return fail(state, settings, &job, &message).await,
    };
    match complete(state, settings, &job, &output, usage).await {
        Err(e) if past_deadline => {
            tracing::warn!(job_id = %job.id, error = %e, "the result could not be stored; the deadline has passed");
            fail(
                state,
                settings,
                &job,
                &gave_up(opts, "its result could not be stored"),
            )
            .await
        }
        verdict => verdict,
    }
}

/// A job its owner ended through RLS while its run was open: the provider is told to stop (a request that finished
/// refuses), and the run is closed, so the job is not completed if its owner sets it open again. It no longer counts
/// against the owner's open jobs, unless the provider could not be asked: then it is kept with the orphans, for a
/// later pass to ask again.
async fn close_ended(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
) -> Result<Verdict, ReconcileError> {
    // Asked before the close, so a pass stopped between the two leaves the run open for the next one to ask again.
    let client = state.db_client(settings).await?;
    crate::submission::cancel_closed_run(state, settings, &client, job).await;
    completion::close_owner_ended(&**client, job).await?;
    Ok(Verdict::Closed)
}

fn gave_up(opts: ReconcileOptions, why: &str) -> String {
    let secs = opts.deadline.as_secs();
    format!("The job did not finish within {secs} s: {why}")
}

async fn fail(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    message: &str,
) -> Result<Verdict, ReconcileError> {
    let moved = completion::fail(state, settings, job, message, None).await?;
    Ok(if moved {
        Verdict::Failed
    } else {
        Verdict::Skipped
    })
}

/// Completes the job with the provider's output through the completion core, then post-processes it.
async fn complete(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    output: &Value,
    usage: Value,
) -> Result<Verdict, ReconcileError> {
    let request_id = job
        .run
        .as_ref()
        .and_then(|r| r.request_id())
        .map(str::to_owned);
    let extra = json!({ "reconciled": true });
    let mut completion = Completion::queued(job, output, request_id, extra);
    completion.add_usage_metadata(usage);
    let outcome = completion::complete(state, settings, completion).await?;
    Ok(match outcome {
        Outcome::Completed(_) => {
            crate::postprocess::run(state, settings, job.id).await;
            Verdict::Completed
        }
        Outcome::Failed(_) => Verdict::Failed,
        Outcome::AlreadyTerminal(_) | Outcome::Busy | Outcome::Abandoned => Verdict::Skipped,
    })
}

/// Asks the job's provider about it; a sync run whose function has certainly stopped is not asked.
async fn ask(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    opts: ReconcileOptions,
) -> Result<FalAnswer, ReconcileError> {
    if interrupted_sync_run(job, Utc::now()) {
        return Ok(FalAnswer::Fail(INTERRUPTED.into()));
    }
    match job.run.as_ref().map(|r| r.provider_name.as_str()) {
        Some("replicate") => ask_replicate(state, settings, job, opts).await,
        _ => ask_fal(state, settings, job, opts).await,
    }
}

const INTERRUPTED: &str =
    "The generation did not finish: the function running it stopped before storing a result";

/// A `processing` sync run (no webhook, no provider request recorded): only the invocation that started it could
/// finish it, and no invocation outlives Lambda's longest timeout. A sync fallback keeps its webhook (fal may have
/// queued the request after all), so it waits for the deadline like a queued job.
fn interrupted_sync_run(job: &JobRecord, now: DateTime<Utc>) -> bool {
    let Some(run) = job.run.as_ref() else {
        return false;
    };
    let limit = chrono::Duration::seconds(MAX_FUNCTION_TIMEOUT_SECS as i64);
    job.status == JobStatus::Processing
        && run.webhook_auth == WebhookAuth::None
        && run.request.is_none()
        && now - run.created_at > limit
}

/// What the provider says about a stale job's request.
enum FalAnswer {
    /// The output, and what the provider reports for the usage row.
    Output(Value, Value),
    Running,
    /// The job fails with this reason (fal failed it, does not know it, or the deadline passed).
    Fail(String),
}

/// Asks Replicate about the prediction at the URL it answered with (on the provider's hosts); past the deadline
/// one still running is cancelled and the job fails.
async fn ask_replicate(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    opts: ReconcileOptions,
) -> Result<FalAnswer, ReconcileError> {
    let run = job.run.as_ref();
    let url =
        |pick: fn(&ProviderRequest) -> Option<&String>| run.and_then(|r| r.provider_url(pick));
    let (Some(replicate), Some(get_url)) =
        (state.replicate(settings), url(|q| q.status_url.as_ref()))
    else {
        return Ok(no_request(job, opts));
    };
    let prediction = match replicate.get(&get_url).await {
        Ok(p) => p,
        Err(ProviderError::Api { status: 404, .. }) => {
            return Ok(FalAnswer::Fail(
                "Replicate does not know this prediction".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let usage = json!({ "provider": "replicate", "metrics": prediction.metrics });
    Ok(match prediction.status {
        PredictionStatus::Succeeded => FalAnswer::Output(prediction.canonical_output(), usage),
        status if status.is_failure() => FalAnswer::Fail(
            prediction
                .error
                .unwrap_or_else(|| "Replicate prediction failed".to_owned()),
        ),
        _ if past_deadline(job, opts) => {
            if let Some(cancel_url) = url(|q| q.cancel_url.as_ref()) {
                let _ = replicate.cancel(&cancel_url).await;
            }
            let secs = opts.deadline.as_secs();
            FalAnswer::Fail(format!("Replicate did not finish within {secs} s"))
        }
        _ => FalAnswer::Running,
    })
}

/// Whether the job's run was written longer ago than the deadline (the server's clock, not `jobs.started_at`).
fn past_deadline(job: &JobRecord, opts: ReconcileOptions) -> bool {
    job.run
        .as_ref()
        .is_some_and(|r| written_past_deadline(r.created_at, opts))
}

/// Whether a run written at `created_at` is past the reconcile deadline.
fn written_past_deadline(created_at: DateTime<Utc>, opts: ReconcileOptions) -> bool {
    let deadline = chrono::Duration::from_std(opts.deadline).unwrap_or(chrono::Duration::MAX);
    Utc::now() - created_at > deadline
}

/// A job with no request recorded: failed once past the deadline, else left running.
fn no_request(job: &JobRecord, opts: ReconcileOptions) -> FalAnswer {
    if past_deadline(job, opts) {
        let recorded = job.run.as_ref().is_some_and(|r| r.request.is_some());
        FalAnswer::Fail(if recorded {
            // Its URLs were refused (`JobRun::provider_url`: not on the provider's hosts, or another request's), or
            // the provider is not configured.
            "The provider request recorded for this job could not be checked, and no result came before the deadline"
                .into()
        } else {
            "No provider request was recorded for this job before the deadline".into()
        })
    } else {
        FalAnswer::Running
    }
}

/// Asks fal at the URLs the submission recorded (each on the provider's own hosts); past the deadline a request
/// still running is cancelled at fal and the job fails.
async fn ask_fal(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    opts: ReconcileOptions,
) -> Result<FalAnswer, ReconcileError> {
    let past_deadline = past_deadline(job, opts);
    let run = job.run.as_ref();
    let url =
        |pick: fn(&ProviderRequest) -> Option<&String>| run.and_then(|r| r.provider_url(pick));
    let (Some(status_url), Some(response_url)) = (
        url(|q| q.status_url.as_ref()),
        url(|q| q.response_url.as_ref()),
    ) else {
        return Ok(no_request(job, opts));
    };
    let fal = state.fal(settings);
    match fal.status(&status_url).await {
        Ok(QueueState::Completed) => {}
        Ok(_) if past_deadline => {
            if let Some(cancel_url) = url(|q| q.cancel_url.as_ref()) {
                let _ = fal.cancel(&cancel_url).await;
            }
            let secs = opts.deadline.as_secs();
            return Ok(FalAnswer::Fail(format!(
                "fal.ai did not finish within {secs} s"
            )));
        }
        Ok(_) => return Ok(FalAnswer::Running),
        Err(ProviderError::Api { status: 404, .. }) => {
            return Ok(FalAnswer::Fail("fal.ai does not know this request".into()));
        }
        Err(e) => return Err(e.into()),
    }
    match fal.result(&response_url).await {
        Ok(output) => Ok(FalAnswer::Output(output, json!({}))),
        Err(e) if e.fails_the_completed_request() => {
            Ok(FalAnswer::Fail(format!("fal.ai request failed: {e}")))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_begun_only_with_its_whole_allowance_left() {
        let per_job = Duration::from_secs(630);
        let in_ = |secs| Some(tokio::time::Instant::now() + Duration::from_secs(secs));
        let room = |until| PassTime { until, per_job }.has_room();
        assert!(room(None));
        assert!(room(in_(700)));
        assert!(!room(in_(600)));
        assert!(!room(Some(tokio::time::Instant::now())));
        // A step that downloads nothing needs only its own allowance: orphans are closed after a long first phase.
        let step = |until| PassTime { until, per_job }.has_room_for_step();
        assert!(step(in_(600)) && step(in_(31)));
        assert!(!step(in_(29)));
    }
}
