//! fal's routes: the queue submission with the job's webhook URL (falling back to the sync host on faults that
//! are not the caller's), and the sync run on fal's sync host.

use std::time::Instant;

use serde_json::json;
use url::Url;

use super::{
    Run, SubmitError, SubmitResult, closed_meanwhile, complete_sync, describe, elapsed_ms,
    fail_job, log_usage, with_job,
};
use crate::completion::{CompletionError, Outcome};
use crate::db;
use crate::db::jobs::JobRecord;
use crate::db::runs::ProviderRequest;
use crate::fal::{QueueEndpoint, SyncEndpoint};
use crate::jobs::JobStatus;
use crate::provider::{ProviderError, ProviderKind};

/// The queue route: submitted → `Some(answer)`; an accepted submission (2xx) whose answer cannot be read →
/// `Some(answer)` too, the job left to fal's delivery; refused by fal for the caller's input → the job fails; any
/// other fault (network, timeout, fal 5xx) → `None`, and the job (now `processing`) runs on the sync host instead.
pub(super) async fn submit_queued(
    run: &Run<'_>,
    client: &tokio_postgres::Client,
    queue: Option<&(QueueEndpoint, Url)>,
) -> Result<Option<SubmitResult>, SubmitError> {
    let (state, settings, user_id, job_id, plan) =
        (run.state, run.settings, run.user_id, run.job_id, run.plan);
    let Some((endpoint, webhook)) = queue else {
        return Ok(None);
    };
    let webhook = with_job(webhook, settings, job_id);
    let fal = state.fal(settings);
    let submission = fal.submit(endpoint, &plan.built.input, Some(&webhook));
    match super::within_deadline(run.deadline, submission).await {
        Ok(submitted) => {
            let request = ProviderRequest {
                request_id: submitted.request_id.clone(),
                gateway_request_id: submitted.gateway_request_id.clone(),
                status_url: submitted.status_url.clone(),
                response_url: submitted.response_url.clone(),
                cancel_url: submitted.cancel_url.clone(),
            };
            let provider_metadata = json!({"request_id": submitted.request_id, "async": true, "model_key": plan.model_key});
            let usage = plan
                .usage(job_id, user_id)
                .row(None, 0, None, None, provider_metadata);
            super::record_accepted(run, client, &usage, &request).await;
            Ok(Some(SubmitResult::queued(job_id, submitted.request_id)))
        }
        // Accepted (2xx) with an answer we cannot read: fal runs the request and delivers it to the webhook URL it
        // was given, which finishes the job (the reconciler fails it at its deadline if nothing comes). Neither a
        // sync run (a second generation) nor failing the job (its delivery then skipped, a paid result lost).
        Err(error @ ProviderError::Decode(_)) => {
            Ok(Some(super::left_to_delivery(run, &error).await))
        }
        // Refused for the caller's input.
        Err(error) if error.is_caller_error() => {
            let message = format!("Async submission failed: {}", describe(&error));
            fail_job(state, settings, job_id, &message).await?;
            Err(SubmitError::Provider {
                job_id,
                provider: ProviderKind::Fal,
                error,
            })
        }
        Err(error) => {
            tracing::warn!(%job_id, error = %error, "queue submission failed; falling back to a sync run");
            db::runs::mark_fell_back(client, job_id).await?;
            let patch = json!({"sync_fallback": true});
            if !db::jobs::transition(client, job_id, JobStatus::Processing, None, &patch).await? {
                return Err(closed_meanwhile(state, settings, job_id).await);
            }
            Ok(None)
        }
    }
}

/// The sync route: run on fal's sync host, then complete through the completion core.
pub(super) async fn run_sync(
    run: &Run<'_>,
    endpoint: &SyncEndpoint,
) -> Result<(JobRecord, Result<Outcome, CompletionError>), SubmitError> {
    let Run {
        state,
        settings,
        user_id,
        job_id,
        plan,
        deadline,
    } = *run;
    let started = Instant::now();
    let usage = plan.usage(job_id, user_id);
    let output = match state
        .fal(settings)
        .run(endpoint, &plan.built.input, deadline)
        .await
    {
        Ok(o) => o,
        Err(error) => {
            let message = format!("fal.ai API error: {}", describe(&error));
            // The call was made: its usage row is written before the job is failed, so that a database error
            // failing it does not lose the row.
            let failed = usage.row(
                error.status().map(i32::from),
                elapsed_ms(started),
                None,
                Some(message.clone()),
                json!({"model_key": plan.model_key}),
            );
            log_usage(run, &failed).await;
            fail_job(state, settings, job_id, &message).await?;
            return Err(SubmitError::Provider {
                job_id,
                provider: ProviderKind::Fal,
                error,
            });
        }
    };
    let usage = usage.row(
        Some(200),
        elapsed_ms(started),
        Some(crate::json::without_nul(&output)),
        None,
        json!({
            "request_id": output.get("request_id"),
            "status": "completed",
            "model": plan.model_key,
            "created_at": chrono::Utc::now().to_rfc3339(),
            "cost_source": "static_pricing",
        }),
    );
    let metadata = json!({ "fal_response": output, "input_used": plan.built.input });
    complete_sync(run, &output, metadata, usage).await
}
