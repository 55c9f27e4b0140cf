//! `reconcile_stale_jobs`: the lost-webhook reconciler. fal never drops a queued request, but a webhook can be
//! lost; every async job still `queued` past a threshold is asked about at fal's stored `status_url`. A result
//! completes the job through the SAME completion core as the webhook (so a late webhook and the reconciler race
//! safely); a failed request, an unknown one, or a job past the deadline is failed with a clear reason. It also
//! re-runs post-processing that did not record completion. Bounded work per run; safe on several instances.

use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::completion::{self, Completion, Outcome, UsageSettlement};
use crate::config::Settings;
use crate::db;
use crate::db::runs::ProviderRequest;
use crate::fal::FalError;
use crate::fal::types::QueueState;
use crate::state::AppState;

#[derive(Debug, Clone, Copy)]
pub struct ReconcileOptions {
    /// Queued jobs younger than this are left to their webhook.
    pub older_than: Duration,
    /// Queued jobs older than this are failed whatever fal says.
    pub deadline: Duration,
    /// Jobs examined per run.
    pub batch: i64,
}

impl ReconcileOptions {
    pub fn from_env() -> Self {
        let secs = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        ReconcileOptions {
            older_than: Duration::from_secs(secs("RECONCILE_OLDER_THAN_SECS", 900)),
            deadline: Duration::from_secs(secs("RECONCILE_DEADLINE_SECS", 6 * 3600)),
            batch: secs("RECONCILE_BATCH", 25) as i64,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ReconcileReport {
    pub examined: usize,
    pub completed: usize,
    pub failed: usize,
    pub still_running: usize,
    pub skipped: usize,
    pub errors: usize,
    pub post_processed: usize,
}

/// One pass.
pub async fn reconcile_stale_jobs(
    state: &AppState,
    settings: &Settings,
    opts: ReconcileOptions,
) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let ids = match take(state, settings, opts).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "reconciler could not read stale jobs");
            report.errors += 1;
            return report;
        }
    };
    for id in ids {
        report.examined += 1;
        match reconcile_one(state, settings, id, opts).await {
            Ok(Verdict::Completed) => report.completed += 1,
            Ok(Verdict::Failed) => report.failed += 1,
            Ok(Verdict::Running) => report.still_running += 1,
            Ok(Verdict::Skipped) => report.skipped += 1,
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "reconciling a job failed; the next run retries");
                report.errors += 1;
            }
        }
    }
    let pending = async {
        let client = state.db.client(&settings.secrets.database_url).await?;
        Ok::<_, db::DbError>(
            db::reconcile::completed_needing_post_processing(
                &**client,
                Duration::from_secs(120),
                opts.batch,
            )
            .await?,
        )
    };
    match pending.await {
        Ok(ids) => {
            for id in ids {
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
            tracing::error!(error = %e, "reconciler could not read post-processing backlog");
            report.errors += 1;
        }
    }
    tracing::info!(?report, "reconciler pass done");
    report
}

async fn take(
    state: &AppState,
    settings: &Settings,
    opts: ReconcileOptions,
) -> Result<Vec<Uuid>, db::DbError> {
    let client = state.db.client(&settings.secrets.database_url).await?;
    Ok(db::reconcile::take_stale_queued(&**client, opts.older_than, opts.batch).await?)
}

enum Verdict {
    Completed,
    Failed,
    Running,
    Skipped,
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("fal: {0}")]
    Fal(#[from] FalError),
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
        let client = state.db.client(&settings.secrets.database_url).await?;
        match db::jobs::get(&**client, id).await? {
            Some(j) if !j.status.is_terminal() => j,
            _ => return Ok(Verdict::Skipped),
        }
    };
    let past_deadline = job.started_at.is_some_and(|t| {
        chrono::Utc::now() - t > chrono::Duration::from_std(opts.deadline).unwrap_or_default()
    });
    let fail = |message: String| {
        let job = job.clone();
        async move {
            let moved = completion::fail(state, settings, &job, &message).await?;
            Ok::<_, ReconcileError>(if moved {
                Verdict::Failed
            } else {
                Verdict::Skipped
            })
        }
    };
    // The provider's URLs as the submission recorded them, each on the provider's own hosts.
    let run = job.run.as_ref();
    let url =
        |pick: fn(&ProviderRequest) -> Option<&String>| run.and_then(|r| r.provider_url(pick));
    let (Some(status_url), Some(response_url)) = (
        url(|q| q.status_url.as_ref()),
        url(|q| q.response_url.as_ref()),
    ) else {
        return if past_deadline {
            fail("No fal.ai request was recorded for this job before the deadline".into()).await
        } else {
            Ok(Verdict::Running)
        };
    };
    let fal = state.fal(settings);
    match fal.status(&status_url).await {
        Ok(QueueState::Completed) => {}
        Ok(_) if past_deadline => {
            if let Some(cancel_url) = url(|q| q.cancel_url.as_ref()) {
                let _ = fal.cancel(&cancel_url).await;
            }
            return fail(format!(
                "fal.ai did not finish within {} s",
                opts.deadline.as_secs()
            ))
            .await;
        }
        Ok(_) => return Ok(Verdict::Running),
        Err(FalError::Api { status: 404, .. }) => {
            return fail("fal.ai does not know this request".into()).await;
        }
        Err(e) => return Err(e.into()),
    }
    let output = match fal.result(&response_url).await {
        Ok(o) => o,
        Err(e) if e.is_caller_error() => return fail(format!("fal.ai request failed: {e}")).await,
        Err(e) => return Err(e.into()),
    };
    let request_id = run.and_then(|r| r.request_id()).map(str::to_owned);
    let outcome = completion::complete(
        state,
        settings,
        Completion {
            job: &job,
            output: &output,
            metadata: json!({
                "fal_webhook_payload": {
                    "request_id": request_id,
                    "seed": output.get("seed"),
                    "timings": output.get("timings"),
                },
                "reconciled": true,
            }),
            usage: UsageSettlement::CompleteQueued { request_id },
        },
    )
    .await?;
    Ok(match outcome {
        Outcome::Completed(_) => {
            crate::postprocess::run(state, settings, job.id).await;
            Verdict::Completed
        }
        Outcome::Failed(_) => Verdict::Failed,
        Outcome::AlreadyTerminal(_) | Outcome::Busy => Verdict::Skipped,
    })
}
