//! `complete_from_webhook`: the webhook use case. A delivery authenticated by [`crate::webhook_auth`] finds its
//! job, then fails it with fal's message or completes it through the completion core.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::completion::{self, Completion, CompletionError, Outcome};
use crate::config::Settings;
use crate::db::jobs::JobRecord;
use crate::db::{self, DbError};
use crate::provider::ProviderError;
use crate::provider::ProviderKind;
use crate::replicate::{Prediction, PredictionStatus};
use crate::state::AppState;
use crate::webhook_auth::{AuthError, Authenticated, Verified};

/// What a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Completed {
        job_id: Uuid,
    },
    Failed {
        job_id: Uuid,
    },
    /// The job was already terminal: nothing changed.
    Skipped,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The URL's credential does not cover this job.
    #[error(transparent)]
    Unauthorized(AuthError),
    #[error("Invalid JSON body")]
    BadJson,
    #[error("Missing request_id")]
    MissingRequestId,
    #[error("Job not found")]
    JobNotFound,
    #[error("request_id does not match the job")]
    RequestMismatch,
    /// Another delivery is completing the job right now; fal's retry will find it done.
    #[error("completion in progress")]
    Busy,
    /// `payload: null` and no response URL recorded yet: a retry may find it.
    #[error("result not yet known: no response URL recorded")]
    ResultUnknown,
    /// The provider could not be asked for the result; the job is unchanged and the provider should retry.
    #[error("result fetch: {0}")]
    Provider(#[source] ProviderError),
    /// A fault of ours (database, storage, media host); the job is unchanged and fal should retry.
    #[error("transient failure: {0}")]
    Transient(#[from] CompletionError),
}

impl From<DbError> for DeliveryError {
    fn from(e: DbError) -> Self {
        DeliveryError::Transient(CompletionError::Db(e))
    }
}

impl From<tokio_postgres::Error> for DeliveryError {
    fn from(e: tokio_postgres::Error) -> Self {
        DeliveryError::Transient(CompletionError::from(e))
    }
}

/// The webhook body, parsed once (`fal-api.md`: `{request_id, gateway_request_id, status, payload, error?,
/// payload_error?}`; older shapes put the output at the top level).
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookOutcome {
    /// `status: OK` with the model output.
    Ok(Value),
    /// `status: ERROR`, with fal's message.
    Error(String),
    /// `status: OK`, `payload: null`: the output is at fal's `response_url`.
    PayloadError,
    /// A Replicate prediction that is not over (only `completed` events are asked for): nothing to do.
    NotOver,
}

pub struct WebhookBody {
    pub request_id: Option<String>,
    pub outcome: WebhookOutcome,
    /// What the provider reports for the usage row (Replicate's `metrics`).
    pub usage: Value,
}

const OUTPUT_KEYS: [&str; 3] = ["video", "images", "output"];

pub fn parse_body(body: &[u8]) -> Result<WebhookBody, DeliveryError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| DeliveryError::BadJson)?;
    let obj = v.as_object().ok_or(DeliveryError::BadJson)?;
    let request_id = obj
        .get("request_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let status = obj.get("status").and_then(Value::as_str).unwrap_or("OK");
    let outcome = if status == "ERROR" {
        let message = [
            obj.get("error"),
            obj.get("detail"),
            obj.get("payload").and_then(|p| p.get("detail")),
        ]
        .into_iter()
        .flatten()
        .find(|m| !m.is_null())
        .map(|m| match m {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| "fal.ai returned status: ERROR".to_owned());
        WebhookOutcome::Error(message)
    } else {
        match obj.get("payload") {
            Some(p) if p.is_object() => WebhookOutcome::Ok(p.clone()),
            _ if OUTPUT_KEYS.iter().any(|k| obj.contains_key(*k)) => WebhookOutcome::Ok(v.clone()),
            _ => WebhookOutcome::PayloadError,
        }
    };
    Ok(WebhookBody {
        request_id,
        outcome,
        usage: json!({}),
    })
}

/// A Replicate delivery: the prediction. `succeeded` gives its output (in the completion's shape), `failed` and
/// `canceled` its error.
pub fn parse_prediction(body: &[u8]) -> Result<WebhookBody, DeliveryError> {
    let p: Prediction = serde_json::from_slice(body).map_err(|_| DeliveryError::BadJson)?;
    let outcome = match p.status {
        PredictionStatus::Succeeded => WebhookOutcome::Ok(p.canonical_output()),
        _ => p
            .failure()
            .map_or(WebhookOutcome::NotOver, WebhookOutcome::Error),
    };
    Ok(WebhookBody {
        request_id: Some(p.id).filter(|id| !id.is_empty()),
        outcome,
        usage: json!({ "provider": "replicate", "metrics": p.metrics }),
    })
}

/// What the delivery's URL says besides its credential.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryUrl<'a> {
    /// `job_id`: the job a pre-token URL names (a token URL's job is the token's).
    pub job_id: Option<&'a str>,
    /// `route=sync`: the URL given to a sync-route create (Replicate's `Prefer: wait`, whose prediction may outlive
    /// the wait), as opposed to a queue submission's.
    pub sync_route: bool,
}

impl<'a> DeliveryUrl<'a> {
    /// The query parameter that marks [`DeliveryUrl::sync_route`].
    pub const SYNC_ROUTE: (&'static str, &'static str) = ("route", "sync");

    /// From the URL's query parameters (`get`: the first value of a name).
    pub fn from_query(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        DeliveryUrl {
            job_id: get("job_id"),
            sync_route: get(Self::SYNC_ROUTE.0) == Some(Self::SYNC_ROUTE.1),
        }
    }
}

/// `complete_from_webhook`: finds the job, then fails it with fal's message or completes it through the
/// completion core. Returns the delivery's effect and whether post-processing should run after the answer.
pub async fn complete_from_webhook(
    state: &AppState,
    settings: &Settings,
    auth: Verified,
    url: DeliveryUrl<'_>,
    header_request_id: Option<&str>,
    body: &[u8],
) -> Result<(Delivery, Option<Uuid>), DeliveryError> {
    let job_id_param = url.job_id;
    let parsed = match auth.provider {
        ProviderKind::Fal => parse_body(body)?,
        ProviderKind::Replicate => parse_prediction(body)?,
    };
    let request_id = parsed
        .request_id
        .clone()
        .or_else(|| {
            header_request_id
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .ok_or(DeliveryError::MissingRequestId)?;
    let job = match find_job(state, settings, auth, job_id_param, &request_id).await {
        Err(DeliveryError::JobNotFound)
            if ended_before_the_port(state, settings, auth, job_id_param, &request_id).await? =>
        {
            return Ok((Delivery::Skipped, None));
        }
        found => found?,
    };
    let delivered = Delivered {
        request_id: &request_id,
        sync_route: url.sync_route,
    };
    if let Some(effect) = stops_here(state, settings, &job, delivered, &parsed.outcome).await? {
        return Ok((effect, None));
    }
    let output = match output_of(state, settings, &job, delivered, parsed.outcome).await? {
        Ok(output) => output,
        Err(failed) => return Ok((failed, None)),
    };
    let extra = json!({ "webhook_processed": true });
    let mut completion = Completion::queued(&job, &output, Some(request_id.clone()), extra);
    completion.add_usage_metadata(parsed.usage);
    completion.queue_delivery = (!delivered.sync_route).then_some(request_id);
    let outcome = completion::complete(state, settings, completion).await?;
    match outcome {
        Outcome::Completed(_) => Ok((Delivery::Completed { job_id: job.id }, Some(job.id))),
        Outcome::Failed(_) => Ok((Delivery::Failed { job_id: job.id }, None)),
        Outcome::AlreadyTerminal(_) => {
            close_ended_run(state, settings, &job).await?;
            Ok((Delivery::Skipped, None))
        }
        Outcome::Busy => Err(DeliveryError::Busy),
        Outcome::Abandoned => Ok((Delivery::Skipped, None)),
    }
}

/// Which request a delivery reports on, and on which route's URL it came.
#[derive(Debug, Clone, Copy)]
struct Delivered<'a> {
    request_id: &'a str,
    sync_route: bool,
}

impl Delivered<'_> {
    /// For a queue request the job abandoned when it fell back to the sync route: after the fallback, a delivery to
    /// the queue URL for a request other than the recorded one. The sync run decides the job; that request's result
    /// may still complete it (the claim lets one of the two), its failure does not fail it while the sync route
    /// may still decide the job ([`crate::db::runs::JobRun::sync_may_decide`]).
    fn abandoned(&self, run: Option<&crate::db::runs::JobRun>) -> bool {
        !self.sync_route
            && run.is_some_and(|r| {
                r.fell_back_at.is_some() && r.request_id() != Some(self.request_id)
            })
    }
}

/// `Some(effect)` when the delivery stops before its output is used: its job has ended (its run is closed once
/// the provider is done with it), or it reports the end of an abandoned queue request ([`Delivered::abandoned`])
/// without a result. A request that is not the job's is refused.
async fn stops_here(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    delivered: Delivered<'_>,
    outcome: &WebhookOutcome,
) -> Result<Option<Delivery>, DeliveryError> {
    let recorded = job.run.as_ref().and_then(|r| r.request_id());
    let ours = recorded.is_none_or(|r| r == delivered.request_id);
    if job.is_closed() {
        if ours && !matches!(outcome, WebhookOutcome::NotOver) {
            close_ended_run(state, settings, job).await?;
        }
        return Ok(Some(Delivery::Skipped));
    }
    let abandoned = delivered.abandoned(job.run.as_ref());
    // Once the sync route can no longer decide the job, an abandoned request's error is the job's end too
    // (`completion::fail` checks it again under the job's lock).
    let sync_may_decide = job
        .run
        .as_ref()
        .is_some_and(|r| r.sync_may_decide(settings.config.sync_run_lifetime()));
    let ends_the_job = matches!(outcome, WebhookOutcome::Error(_)) && !sync_may_decide;
    if abandoned && !ends_the_job && !matches!(outcome, WebhookOutcome::Ok(_)) {
        tracing::info!(job_id = %job.id, "delivery for the queue request the sync fallback abandoned; skipped");
        return Ok(Some(Delivery::Skipped));
    }
    if !ours && !abandoned {
        return Err(DeliveryError::RequestMismatch);
    }
    Ok(None)
}

/// The model output of a delivery: its payload, or for `payload: null` the result at the request's recorded
/// response URL. `Err(effect)` when the job was failed instead (fal's error, or fal refusing the result).
async fn output_of(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
    delivered: Delivered<'_>,
    outcome: WebhookOutcome,
) -> Result<Result<Value, Delivery>, DeliveryError> {
    let message = match outcome {
        WebhookOutcome::Ok(output) => return Ok(Ok(output)),
        WebhookOutcome::NotOver => return Ok(Err(Delivery::Skipped)),
        WebhookOutcome::Error(message) => message,
        WebhookOutcome::PayloadError => {
            let Some(url) = job
                .run
                .as_ref()
                .and_then(|r| r.provider_url(|q| q.response_url.as_ref()))
            else {
                return Err(DeliveryError::ResultUnknown);
            };
            match state.fal(settings).result(&url).await {
                Ok(output) => return Ok(Ok(output)),
                Err(e) if e.rejects_the_request() => format!("fal.ai result failed: {e}"),
                Err(e) => return Err(DeliveryError::Provider(e)),
            }
        }
    };
    // The job may have fallen back since it was read: the failure is written only if, under the job's lock, the
    // request is still not an abandoned one.
    let unless_abandoned = (!delivered.sync_route).then_some(delivered.request_id);
    Ok(Err(
        if completion::fail(state, settings, job, &message, unless_abandoned).await? {
            Delivery::Failed { job_id: job.id }
        } else {
            Delivery::Skipped
        },
    ))
}

/// The delivery's job: the token's, else the URL's `job_id` or the body's request id (pre-token URLs).
async fn find_job(
    state: &AppState,
    settings: &Settings,
    auth: Verified,
    job_id_param: Option<&str>,
    request_id: &str,
) -> Result<JobRecord, DeliveryError> {
    use crate::db;
    let client = state.db_client(settings).await?;
    let job_id = match auth.url {
        Authenticated::Job(id) => Some(id),
        Authenticated::LegacySecret => {
            match job_id_param.map(str::trim).filter(|s| !s.is_empty()) {
                Some(id) => Some(Uuid::parse_str(id).map_err(|_| DeliveryError::JobNotFound)?),
                None => None,
            }
        }
    };
    let job = match job_id {
        Some(id) => db::jobs::get(&**client, id).await?,
        None => db::jobs::by_request_id(&**client, auth.provider.name(), request_id).await?,
    }
    .ok_or(DeliveryError::JobNotFound)?;
    let run = job.run.as_ref();
    // A URL naming its job (a token, or a `?secret=` URL with `job_id`, which only the port's releases made; the
    // original's named none) is made for a job the functions wrote, which has a run. A row with that id and no run
    // is not that job: its owner deleted it (the run went with it) and wrote another under the same id.
    if job_id.is_some() && run.is_none() {
        return Err(DeliveryError::JobNotFound);
    }
    let provider = run.map(|r| r.provider_name.as_str());
    auth.may_complete(job.id, run.map(|r| r.webhook_auth), provider)
        .map_err(DeliveryError::Unauthorized)?;
    Ok(job)
}

/// A redelivery, to a pre-token URL, of a fal request whose job ended before the port (it has no run, so the
/// lookup by request id cannot find it): answered as skipped like any ended job's, so fal stops retrying. The
/// request id is matched in `jobs.metadata`, which its owner can rewrite, but only to skip: nothing is changed.
async fn ended_before_the_port(
    state: &AppState,
    settings: &Settings,
    auth: Verified,
    job_id_param: Option<&str>,
    request_id: &str,
) -> Result<bool, DeliveryError> {
    let by_request = job_id_param.is_none_or(|s| s.trim().is_empty());
    if !(auth.url == Authenticated::LegacySecret
        && auth.provider == ProviderKind::Fal
        && by_request)
    {
        return Ok(false);
    }
    let client = state.db_client(settings).await?;
    Ok(db::jobs::ended_without_run(&**client, request_id).await?)
}

/// A final delivery for a job that was ended meanwhile (by its owner, through RLS: the functions close the runs of
/// the jobs they end): the provider is done with it now, so its run no longer counts against the owner's open
/// jobs, and its storyboard clip, if still open, fails ([`crate::completion::close_owner_ended`]).
async fn close_ended_run(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
) -> Result<(), DeliveryError> {
    if job.run.as_ref().is_some_and(|r| r.closed_at.is_none()) {
        let client = state.db_client(settings).await?;
        crate::completion::close_owner_ended(&**client, job).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> WebhookBody {
        parse_body(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn every_payload_shape_parses() {
        let ok = parse(json!({"request_id":"r","status":"OK","payload":{"images":[{"url":"u"}]}}));
        assert_eq!(ok.request_id.as_deref(), Some("r"));
        assert_eq!(
            ok.outcome,
            WebhookOutcome::Ok(json!({"images":[{"url":"u"}]}))
        );
        let top = parse(json!({"request_id":"r","video":{"url":"u"}}));
        assert!(matches!(top.outcome, WebhookOutcome::Ok(ref o) if o["video"]["url"] == "u"));
        let null =
            parse(json!({"request_id":"r","status":"OK","payload":null,"payload_error":"too big"}));
        assert_eq!(null.outcome, WebhookOutcome::PayloadError);
        let err = parse(
            json!({"request_id":"r","status":"ERROR","error":"Invalid status code: 422","payload":{"detail":[]}}),
        );
        assert_eq!(
            err.outcome,
            WebhookOutcome::Error("Invalid status code: 422".into())
        );
        let err = parse(json!({"status":"ERROR","payload":{"detail":[{"msg":"bad"}]}}));
        assert_eq!(
            err.outcome,
            WebhookOutcome::Error(r#"[{"msg":"bad"}]"#.into())
        );
        assert_eq!(err.request_id, None);
        let bare = parse(json!({"status":"ERROR"}));
        assert_eq!(
            bare.outcome,
            WebhookOutcome::Error("fal.ai returned status: ERROR".into())
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"\"s\"",
            b"",
            b"{\"request_id\":",
        ] {
            assert!(matches!(parse_body(body), Err(DeliveryError::BadJson)));
        }
    }
}
