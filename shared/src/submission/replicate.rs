//! Replicate's routes: a prediction created with the job's webhook URL (our per-job token; Replicate signs the
//! delivery too). The queue route answers at once; the sync route waits for the prediction (`Prefer: wait`)
//! within the sync bound, and one still running then stays `queued`, finished by its webhook (or the reconciler)
//! rather than failed.

use std::time::{Duration, Instant};

use serde_json::json;
use url::Url;

use super::{
    RouteKind, Run, SubmitError, SubmitResult, closed_meanwhile, complete_sync, describe,
    elapsed_ms, fail_job, log_usage, with_job,
};
use crate::completion::{CompletionError, Outcome};
use crate::db;
use crate::db::jobs::JobRecord;
use crate::db::runs::ProviderRequest;
use crate::provider::{ProviderError, ProviderKind};
use crate::replicate::{Prediction, PredictionStatus, PredictionsEndpoint};

/// What a Replicate submission came to.
pub(super) enum Submitted {
    /// The caller's answer is known (queued).
    Answered(SubmitResult),
    /// The sync wait saw the prediction succeed; the job went through the completion core.
    Finished(Box<(JobRecord, Result<Outcome, CompletionError>)>),
}

/// How long the sync route waits for the prediction: what the submission's deadline leaves (all of the sync bound,
/// less a failed queue create's time), less time to store the result, at least 1 s and at most Replicate's 60 s.
fn sync_wait(run: &Run<'_>) -> Duration {
    let left = run
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    left.saturating_sub(Duration::from_secs(5))
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The prediction's id and URLs, as the job's run records them.
fn request_of(p: &Prediction) -> ProviderRequest {
    ProviderRequest {
        request_id: p.id.clone(),
        gateway_request_id: None,
        status_url: Some(p.urls.get.clone()),
        response_url: Some(p.urls.get.clone()),
        cancel_url: p.urls.cancel.clone(),
    }
}

/// Creates the prediction on `route`. As for fal, a queue create that failed for a reason not the caller's is
/// made again on the sync route (with the same webhook, so a prediction outliving the wait is still finished by
/// it), noted as `sync_fallback` on the job. Returns what the create came to and the route it was made on.
async fn create(
    run: &Run<'_>,
    client: &tokio_postgres::Client,
    endpoint: &PredictionsEndpoint,
    route: RouteKind,
    webhook: Option<&Url>,
) -> Result<(Result<Prediction, ProviderError>, RouteKind), SubmitError> {
    let (settings, job_id) = (run.settings, run.job_id);
    let replicate = run
        .state
        .replicate(settings)
        .ok_or(SubmitError::ProviderNotConfigured("Replicate"))?;
    let webhook = webhook.map(|w| with_job(w, settings, job_id));
    // A sync create's URL says so: after a fallback, its prediction's deliveries are not the abandoned queue
    // request's (`webhook::DeliveryUrl::sync_route`).
    let sync_webhook = webhook.clone().map(|mut w| {
        let (name, value) = crate::webhook::DeliveryUrl::SYNC_ROUTE;
        w.query_pairs_mut().append_pair(name, value);
        w
    });
    let create = |route| {
        let sync = route == RouteKind::Sync;
        let wait = sync.then(|| sync_wait(run));
        let webhook = if sync { &sync_webhook } else { &webhook };
        replicate.create(endpoint, &run.plan.built.input, webhook.as_ref(), wait)
    };
    let created = match route {
        RouteKind::Queue => super::within_deadline(run.deadline, create(route)).await,
        // The wait ends five seconds before the deadline (`sync_wait`).
        RouteKind::Sync => create(route).await,
    };
    match created {
        // Not for an accepted create whose answer we cannot read: Replicate may be running that prediction, and a
        // sync create would be a second generation of it (its delivery finishes the job, see `submit`).
        Err(error)
            if route == RouteKind::Queue
                && !error.is_caller_error()
                && !matches!(error, ProviderError::Decode(_)) =>
        {
            tracing::warn!(%job_id, %error, "queued prediction not created; falling back to a sync run");
            db::runs::mark_fell_back(client, job_id).await?;
            if !db::jobs::annotate_open(client, job_id, &json!({"sync_fallback": true})).await? {
                return Err(closed_meanwhile(run.state, settings, job_id).await);
            }
            Ok((create(RouteKind::Sync).await, RouteKind::Sync))
        }
        created => Ok((created, route)),
    }
}

pub(super) async fn submit(
    run: &Run<'_>,
    client: &tokio_postgres::Client,
    endpoint: &PredictionsEndpoint,
    route: RouteKind,
    webhook: Option<&Url>,
) -> Result<Submitted, SubmitError> {
    let (state, settings, job_id) = (run.state, run.settings, run.job_id);
    let started = Instant::now();
    let asked = route;
    let (created, route) = create(run, client, endpoint, route, webhook).await?;
    let prediction = match created {
        Ok(p) => p,
        // Sent, and Replicate may have made the prediction: its answer did not come in time (a create held past
        // its wait), broke off, or could not be read. The webhook it was given delivers it and finishes the job, or
        // the reconciler fails the job at its deadline. Failing it here would throw away a prediction Replicate
        // still runs and bills, and skip its delivery. Not after a fallback: the job's abandoned queue prediction
        // could then end it once the sync route may no longer decide (`JobRun::sync_may_decide`), before the sync
        // prediction's delivery came.
        Err(error) if webhook.is_some() && route == asked && error.may_have_been_accepted() => {
            return Ok(Submitted::Answered(
                super::left_to_delivery(run, &error).await,
            ));
        }
        Err(error) => {
            let message = format!("Replicate API error: {}", describe(&error));
            let status = error.status().map(i32::from);
            log_failed_usage(run, status, started, &message, json!({})).await;
            fail_job(state, settings, job_id, &message).await?;
            return Err(SubmitError::Provider {
                job_id,
                provider: ProviderKind::Replicate,
                error,
            });
        }
    };
    if let Some(message) = prediction.failure() {
        let meta = json!({"request_id": prediction.id, "metrics": prediction.metrics});
        log_failed_usage(run, None, started, &message, meta).await;
        fail_job(state, settings, job_id, &message).await?;
        return Err(SubmitError::ResultFailed { job_id, message });
    }
    match prediction.status {
        PredictionStatus::Succeeded if route == RouteKind::Sync => {
            if webhook.is_some() {
                record_sync_request(run, client, &prediction).await;
            }
            finish(run, &prediction, started)
                .await
                .map(|finished| Submitted::Finished(Box::new(finished)))
        }
        _ => queued(run, client, &prediction)
            .await
            .map(Submitted::Answered),
    }
}

/// The usage row of a create that failed, or of a prediction that did: the call was made (and a failed prediction
/// ran), so it is logged as fal's failed sync calls are.
async fn log_failed_usage(
    run: &Run<'_>,
    status: Option<i32>,
    started: Instant,
    message: &str,
    extra: serde_json::Value,
) {
    let mut meta =
        json!({"model_key": run.plan.model_key, "provider": "replicate", "status": "failed"});
    crate::json::extend(&mut meta, extra);
    let row = run.plan.usage(run.job_id, run.user_id).row(
        status,
        elapsed_ms(started),
        None,
        Some(message.to_owned()),
        meta,
    );
    log_usage(run, &row).await;
}

/// Still running (or submitted to the queue route): the request is recorded with the usage row, the job stays
/// `queued`.
async fn queued(
    run: &Run<'_>,
    client: &tokio_postgres::Client,
    prediction: &Prediction,
) -> Result<SubmitResult, SubmitError> {
    let provider_metadata = json!({
        "request_id": prediction.id, "async": true, "model_key": run.plan.model_key, "provider": "replicate",
    });
    let usage = run
        .plan
        .usage(run.job_id, run.user_id)
        .row(None, 0, None, None, provider_metadata);
    super::record_accepted(run, client, &usage, &request_of(prediction)).await;
    Ok(SubmitResult::queued(run.job_id, prediction.id.clone()))
}

/// The prediction of a sync create that registered a webhook, recorded as the run's request: Replicate delivers it
/// too, so a fault storing its result here leaves the job to that delivery or the reconciler
/// ([`super::sync_answer`]) rather than failing a paid result. Best effort: unrecorded, such a fault fails the job.
async fn record_sync_request(
    run: &Run<'_>,
    client: &tokio_postgres::Client,
    prediction: &Prediction,
) {
    let recorded = db::runs::record_sync_request(client, run.job_id, &request_of(prediction)).await;
    if let Err(e) = recorded {
        tracing::warn!(job_id = %run.job_id, error = %e, "the sync prediction could not be recorded");
    }
}

/// The sync wait saw the prediction succeed: complete the job from its output, with its metrics in the usage row.
async fn finish(
    run: &Run<'_>,
    prediction: &Prediction,
    started: Instant,
) -> Result<(JobRecord, Result<Outcome, CompletionError>), SubmitError> {
    let output = prediction.canonical_output();
    let usage = run.plan.usage(run.job_id, run.user_id).row(
        Some(200),
        elapsed_ms(started),
        Some(crate::json::without_nul(&prediction.output)),
        None,
        json!({
            "request_id": prediction.id,
            "status": "completed",
            "model": run.plan.model_key,
            "provider": "replicate",
            "metrics": prediction.metrics,
        }),
    );
    let metadata =
        json!({ "replicate_prediction_id": prediction.id, "input_used": run.plan.built.input });
    complete_sync(run, &output, metadata, usage).await
}
