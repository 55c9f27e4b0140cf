//! `submit_generation`: the fal-image use case, in the order of the contract — resolve the model and its route,
//! build the fal input, write ONE job row with its final status, then submit to fal's queue with the webhook URL,
//! or run on fal's sync host and complete through the completion core. Also the caller's job status and cancel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use url::Url;
use uuid::Uuid;

use crate::completion::{self, Completion, Outcome, UsageSettlement};
use crate::config::Settings;
use crate::db::{self, DbError, models::ModelRow};
use crate::fal::endpoint::EndpointError;
use crate::fal::{FalError, QueueEndpoint, SyncEndpoint};
use crate::input::{
    self, GenerationRequest, InputError, Modality, ModelSpec, StoredBucket, StoredReference,
};
use crate::jobs::JobStatus;
use crate::state::AppState;

/// Presigned reference URLs live this long (fal fetches them soon after submission).
const REFERENCE_URL_TTL: Duration = Duration::from_secs(3600);
/// Result URLs handed to clients.
pub const RESULT_URL_TTL: Duration = Duration::from_secs(3600);
/// `api_models.endpoint_path` of the queue route.
pub const QUEUE_ROUTE: &str = "fal-webhook";
/// Post-processing destinations (`metadata.destination`).
pub const DESTINATIONS: &[&str] = &["character_portrait", "character_scene", "roleplay_scene"];

/// How a model runs, from `api_models.endpoint_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Sync,
    Queue,
}

pub fn route_kind(endpoint_path: Option<&str>) -> Result<RouteKind, SubmitError> {
    match endpoint_path.map(str::trim) {
        None | Some("") => Ok(RouteKind::Sync),
        Some(QUEUE_ROUTE) => Ok(RouteKind::Queue),
        Some(other) => Err(SubmitError::UnsupportedEndpoint(other.to_owned())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("Specified API model not found or inactive")]
    ModelNotFound,
    #[error("No fal.ai models configured")]
    NoModels,
    #[error("Model provider must be fal")]
    ProviderNotFal,
    #[error("unsupported endpoint_path")]
    UnsupportedEndpoint(String),
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("provider configuration is incomplete: {0}")]
    Misconfigured(String),
    /// The client's `model_key_override` is not a fal model id.
    #[error("Invalid model_key_override")]
    BadModelOverride,
    /// fal refused the request (its 4xx), or failed it; the job is `failed`.
    #[error("fal.ai API request failed")]
    Fal { job_id: Uuid, error: FalError },
    /// fal's result could not become an asset (our final verdict or a fault while storing); the job is `failed`.
    #[error("generation failed")]
    ResultFailed { job_id: Uuid, message: String },
    /// The job was closed (cancelled) while it ran.
    #[error("job was {status}")]
    Closed { job_id: Uuid, status: JobStatus },
    #[error("database unavailable")]
    Db(#[from] DbError),
    #[error("storage unavailable: {0}")]
    Storage(String),
}

impl From<tokio_postgres::Error> for SubmitError {
    fn from(e: tokio_postgres::Error) -> Self {
        SubmitError::Db(DbError::Query(e))
    }
}

/// What the caller is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    Queued {
        job_id: Uuid,
        request_id: String,
    },
    Completed {
        job_id: Uuid,
        asset_id: Uuid,
        result_url: String,
        result_type: String,
        original_url: String,
    },
}

/// The result of a submission plus the post-processing to run after the answer, if any.
pub struct SubmitResult {
    pub answer: Submitted,
    pub post_process: Option<Uuid>,
}

/// Creates a generation for `user_id`.
pub async fn submit_generation(
    state: &AppState,
    settings: &Settings,
    user_id: Uuid,
    req: GenerationRequest,
) -> Result<SubmitResult, SubmitError> {
    // One connection for the queue route's statements (a checkout after an idle spell costs a liveness round
    // trip). Released before anything that takes connections of its own (sync completion, failing the job).
    let client = state.db.client(&settings.secrets.database_url).await?;
    let model = resolve_model(state, &client, &req).await?;
    if model.provider_name != "fal" {
        return Err(SubmitError::ProviderNotFal);
    }
    let route = route_kind(model.endpoint_path.as_deref())?;
    let prompt = req
        .prompt
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or(InputError::MissingPrompt)?
        .to_owned();
    let model_key = req
        .model_key_override
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .unwrap_or(&model.model_key)
        .to_owned();
    let modality = if model.modality == "video" {
        Modality::Video
    } else {
        Modality::Image
    };
    let spec = ModelSpec {
        model_key: model_key.clone(),
        modality,
        input_defaults: model.input_defaults.clone(),
        capabilities: model.capabilities.clone(),
    };
    let stored = input::stored_references(&req);
    let resolved = presign_references(state, settings, user_id, &stored).await?;
    let built = input::build_input(&req, &spec, &resolved)?;

    // Both endpoints are derived up front from the provider's configured hosts: a misconfiguration is an error
    // before any row is written, and the sync route can only ever use the sync host.
    let overridden = model_key != model.model_key;
    let endpoint_error = |host: &str, e: EndpointError| match e {
        EndpointError::BadModelKey(_) if overridden => SubmitError::BadModelOverride,
        e => SubmitError::Misconfigured(format!("{host} host: {e}")),
    };
    let sync_endpoint = SyncEndpoint::new(model.sync_base_url.as_deref(), &model_key)
        .map_err(|e| endpoint_error("sync", e))?;
    let webhook = webhook_url(settings);
    let queue = match (route, webhook) {
        (RouteKind::Queue, Some(w)) => Some((
            QueueEndpoint::new(model.base_url.as_deref(), &model_key)
                .map_err(|e| endpoint_error("queue", e))?,
            w,
        )),
        (RouteKind::Queue, None) => {
            tracing::warn!(
                "no webhook secret or URL configured: queue model runs on the sync host"
            );
            None
        }
        (RouteKind::Sync, _) => None,
    };

    let is_video = modality == Modality::Video;
    let estimated_cost = crate::pricing::estimated_cost(&model_key, is_video);
    let reference_storage = reference_storage(settings, &req, &stored);
    let mut metadata: Map<String, Value> = req.metadata.clone().unwrap_or_default();
    metadata.extend([
        ("provider_name".into(), json!(model.provider_name)),
        ("provider_id".into(), json!(model.provider_id)),
        ("model_key".into(), json!(model_key)),
        ("database_model_key".into(), json!(model.model_key)),
        (
            "is_model_overridden".into(),
            json!(model_key != model.model_key),
        ),
        ("content_mode".into(), json!(built.content_mode)),
        ("generation_mode".into(), json!(built.generation_mode)),
        ("input_used".into(), built.input.clone()),
        ("estimated_cost".into(), json!(estimated_cost)),
    ]);
    if queue.is_some()
        && let Some(signed) = &built.reference_image_url
    {
        metadata.insert("reference_image_signed_url".into(), json!(signed));
    }
    if let Some(r) = reference_storage {
        metadata.insert("reference_image_storage".into(), r);
    }
    let post_process = metadata
        .get("destination")
        .and_then(Value::as_str)
        .filter(|d| DESTINATIONS.contains(d))
        .is_some();
    let new_job = db::jobs::NewJob {
        user_id,
        job_type: input::normalize_job_type(req.job_type.as_deref(), modality, req.quality()),
        original_prompt: prompt,
        status: if queue.is_some() {
            JobStatus::Queued
        } else {
            JobStatus::Processing
        },
        quality: req.quality().as_str().to_owned(),
        api_model_id: model.id,
        format: modality.as_str().to_owned(),
        metadata: Value::Object(metadata),
    };
    let job_id = db::jobs::insert(&**client, &new_job).await?;
    tracing::info!(%job_id, %model_key, route = ?route, "job created");
    let usage_base = UsageBase {
        job_id,
        provider_id: model.provider_id,
        model_id: model.id,
        user_id,
        request_type: modality.as_str().to_owned(),
        endpoint_path: format!("/{model_key}"),
        request_payload: built.input.clone(),
        cost_usd: estimated_cost,
    };

    if let Some((endpoint, webhook)) = queue {
        let webhook = with_job(&webhook, settings, job_id);
        match state
            .fal(settings)
            .submit(&endpoint, &built.input, Some(&webhook))
            .await
        {
            Ok(submitted) => {
                let urls = json!({
                    "fal_request_id": submitted.request_id,
                    "fal_gateway_request_id": submitted.gateway_request_id,
                    "fal_status_url": submitted.status_url,
                    "fal_response_url": submitted.response_url,
                    "fal_cancel_url": submitted.cancel_url,
                });
                let usage = usage_base.row(
                    None,
                    0,
                    None,
                    None,
                    json!({"request_id": submitted.request_id, "async": true, "model_key": model_key}),
                );
                db::usage::insert_once_and_patch_job(&**client, &usage, &urls).await?;
                return Ok(SubmitResult {
                    answer: Submitted::Queued {
                        job_id,
                        request_id: submitted.request_id,
                    },
                    post_process: None,
                });
            }
            Err(error) if error.is_caller_error() => {
                drop(client);
                let message = format!("Async submission failed: {}", describe(&error));
                fail_job(state, settings, job_id, &message).await?;
                return Err(SubmitError::Fal { job_id, error });
            }
            Err(error) => {
                // Not the caller's fault: run it on the sync host instead.
                tracing::warn!(%job_id, error = %error, "queue submission failed; falling back to a sync run");
                db::jobs::transition(
                    &**client,
                    job_id,
                    JobStatus::Processing,
                    None,
                    &json!({"sync_fallback": true}),
                )
                .await?;
            }
        }
    }

    drop(client);
    let started = Instant::now();
    let output = match state.fal(settings).run(&sync_endpoint, &built.input).await {
        Ok(o) => o,
        Err(error) => {
            let message = format!("fal.ai API error: {}", describe(&error));
            let client = state.db.client(&settings.secrets.database_url).await?;
            let job = db::jobs::get(&**client, job_id).await?;
            drop(client);
            if let Some(job) = job {
                completion::fail(state, settings, &job, &message)
                    .await
                    .map_err(to_submit)?;
            }
            let client = state.db.client(&settings.secrets.database_url).await?;
            db::usage::insert_once(
                &**client,
                &usage_base.row(
                    error.status().map(i32::from),
                    elapsed_ms(started),
                    None,
                    Some(message),
                    json!({"model_key": model_key}),
                ),
            )
            .await?;
            return Err(SubmitError::Fal { job_id, error });
        }
    };
    let usage = usage_base.row(
        Some(200),
        elapsed_ms(started),
        Some(crate::json::without_nul(&output)),
        None,
        json!({
            "request_id": output.get("request_id"),
            "status": "completed",
            "model": model_key,
            "created_at": chrono::Utc::now().to_rfc3339(),
            "cost_source": "static_pricing",
        }),
    );
    let job = {
        let client = state.db.client(&settings.secrets.database_url).await?;
        db::jobs::get(&**client, job_id)
            .await?
            .ok_or(SubmitError::Closed {
                job_id,
                status: JobStatus::Cancelled,
            })?
    };
    let outcome = completion::complete(
        state,
        settings,
        Completion {
            job: &job,
            output: &output,
            metadata: json!({ "fal_response": output, "input_used": built.input }),
            usage: UsageSettlement::Insert(Box::new(usage)),
        },
    )
    .await;
    match outcome {
        Ok(Outcome::Completed(done)) => {
            let result_url = state
                .storage
                .presign_get(
                    &settings.config.workspace_bucket,
                    &done.storage_path,
                    RESULT_URL_TTL,
                )
                .await
                .map_err(|e| SubmitError::Storage(e.to_string()))?;
            Ok(SubmitResult {
                answer: Submitted::Completed {
                    job_id,
                    asset_id: done.asset_id,
                    result_url,
                    result_type: done.result_type.as_str().to_owned(),
                    original_url: done.original_url,
                },
                post_process: post_process.then_some(job_id),
            })
        }
        Ok(Outcome::Failed(message)) => Err(SubmitError::ResultFailed { job_id, message }),
        Ok(Outcome::AlreadyTerminal(status)) => Err(SubmitError::Closed { job_id, status }),
        Ok(Outcome::Busy) => Err(SubmitError::ResultFailed {
            job_id,
            message: "the job is being completed by another caller".into(),
        }),
        Err(e) => {
            // A sync job has no one else to finish it: fail it with the reason instead of leaving it processing.
            let message = format!("Storing the result failed: {e}");
            tracing::error!(%job_id, error = %e, "sync result could not be stored");
            fail_job(state, settings, job_id, &message).await?;
            Err(SubmitError::ResultFailed { job_id, message })
        }
    }
}

fn to_submit(e: completion::CompletionError) -> SubmitError {
    match e {
        completion::CompletionError::Db(d) => SubmitError::Db(d),
        other => SubmitError::Storage(other.to_string()),
    }
}

async fn fail_job(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
    message: &str,
) -> Result<(), SubmitError> {
    let job = {
        let client = state.db.client(&settings.secrets.database_url).await?;
        db::jobs::get(&**client, job_id).await?
    };
    if let Some(job) = job {
        completion::fail(state, settings, &job, message)
            .await
            .map_err(to_submit)?;
    }
    Ok(())
}

fn describe(e: &FalError) -> String {
    match e {
        FalError::Api {
            status, message, ..
        } => format!(
            "{status} - {}",
            message.chars().take(500).collect::<String>()
        ),
        other => other.to_string(),
    }
}

fn elapsed_ms(started: Instant) -> i32 {
    started.elapsed().as_millis().min(i32::MAX as u128) as i32
}

struct UsageBase {
    job_id: Uuid,
    provider_id: Uuid,
    model_id: Uuid,
    user_id: Uuid,
    request_type: String,
    endpoint_path: String,
    request_payload: Value,
    cost_usd: f64,
}

impl UsageBase {
    fn row(
        &self,
        response_status: Option<i32>,
        response_time_ms: i32,
        response_payload: Option<Value>,
        error_message: Option<String>,
        provider_metadata: Value,
    ) -> db::usage::NewUsage {
        db::usage::NewUsage {
            job_id: self.job_id,
            provider_id: self.provider_id,
            model_id: self.model_id,
            user_id: self.user_id,
            request_type: self.request_type.clone(),
            endpoint_path: self.endpoint_path.clone(),
            request_payload: self.request_payload.clone(),
            cost_usd: Some(self.cost_usd),
            response_status,
            response_time_ms,
            response_payload,
            error_message,
            provider_metadata,
        }
    }
}

async fn resolve_model(
    state: &AppState,
    client: &tokio_postgres::Client,
    req: &GenerationRequest,
) -> Result<ModelRow, SubmitError> {
    if let Some(id) = req
        .api_model_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let id = Uuid::parse_str(id).map_err(|_| SubmitError::ModelNotFound)?;
        return state
            .models
            .active_by_id(client, id)
            .await?
            .ok_or(SubmitError::ModelNotFound);
    }
    let (modality, task) = match req.modality() {
        Modality::Video => ("video", "t2v"),
        Modality::Image => ("image", "t2i"),
    };
    db::models::default_for(client, modality, task)
        .await?
        .ok_or(SubmitError::NoModels)
}

/// The webhook URL without the job, when the queue route is possible at all (a secret and a URL configured).
fn webhook_url(settings: &Settings) -> Option<Url> {
    settings.secrets.fal_webhook_secret.as_ref()?;
    settings.config.fal_webhook_url.clone()
}

/// `FAL_WEBHOOK_URL?secret=…&job_id=…`: the callback finds its job even before `fal_request_id` is stored.
fn with_job(base: &Url, settings: &Settings, job_id: Uuid) -> Url {
    let mut url = base.clone();
    if let Some(secret) = &settings.secrets.fal_webhook_secret {
        url.query_pairs_mut()
            .append_pair("secret", secret.expose_secret())
            .append_pair("job_id", &job_id.to_string());
    }
    url
}

/// The S3 bucket of a stored reference, or `None` for buckets the port does not have.
fn bucket_of(settings: &Settings, r: &StoredReference) -> Option<String> {
    match &r.bucket {
        Some(StoredBucket::Workspace) | None => Some(settings.config.workspace_bucket.clone()),
        Some(StoredBucket::Library) => Some(settings.config.library_bucket.clone()),
        Some(StoredBucket::Legacy(_)) => None,
    }
}

/// Presigns the caller's own stored references (keys under `<user_id>/`). Others' objects, and buckets the port
/// does not have, stay unresolved, which the builder reports as an invalid reference.
async fn presign_references(
    state: &AppState,
    settings: &Settings,
    user_id: Uuid,
    stored: &[StoredReference],
) -> Result<HashMap<String, String>, SubmitError> {
    let own_prefix = format!("{user_id}/");
    let mut resolved = HashMap::new();
    for r in stored {
        if !r.key.starts_with(&own_prefix) {
            tracing::warn!("reference outside the caller's own storage refused");
            continue;
        }
        let Some(bucket) = bucket_of(settings, r) else {
            continue;
        };
        let url = state
            .storage
            .presign_get(&bucket, &r.key, REFERENCE_URL_TTL)
            .await
            .map_err(|e| SubmitError::Storage(e.to_string()))?;
        resolved.insert(r.original.clone(), url);
    }
    Ok(resolved)
}

/// Where the reference image lives in our storage, for the video thumbnail (copied server-side later).
fn reference_storage(
    settings: &Settings,
    req: &GenerationRequest,
    stored: &[StoredReference],
) -> Option<Value> {
    let image_url = req.input.as_ref()?.get("image_url")?.as_str()?;
    let r = stored.iter().find(|r| r.original == image_url)?;
    Some(json!({ "bucket": bucket_of(settings, r)?, "key": r.key }))
}

/// The caller's view of a job (`GET /jobs/{id}`).
#[derive(Debug, Clone)]
pub struct JobView {
    pub job: db::jobs::JobRecord,
    pub asset: Option<(db::assets::AssetRow, String)>,
}

/// The caller's job with its asset and a presigned URL of it; `None` when absent or someone else's.
pub async fn job_status(
    state: &AppState,
    settings: &Settings,
    user_id: Uuid,
    job_id: Uuid,
) -> Result<Option<JobView>, SubmitError> {
    let client = state.db.client(&settings.secrets.database_url).await?;
    let Some(job) = db::jobs::get_for_user(&**client, job_id, user_id).await? else {
        return Ok(None);
    };
    let asset = match db::assets::for_job(&**client, job_id).await? {
        Some(a) => {
            let url = state
                .storage
                .presign_get(
                    &settings.config.workspace_bucket,
                    &a.temp_storage_path,
                    RESULT_URL_TTL,
                )
                .await
                .map_err(|e| SubmitError::Storage(e.to_string()))?;
            Some((a, url))
        }
        None => None,
    };
    Ok(Some(JobView { job, asset }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelResult {
    Cancelled,
    NotFound,
    AlreadyTerminal(JobStatus),
}

/// Cancels the caller's open job; fal is asked to cancel queued ones (best effort, after the row changed).
pub async fn cancel_job(
    state: &AppState,
    settings: &Settings,
    user_id: Uuid,
    job_id: Uuid,
) -> Result<CancelResult, SubmitError> {
    let client = state.db.client(&settings.secrets.database_url).await?;
    let Some(job) = db::jobs::get_for_user(&**client, job_id, user_id).await? else {
        return Ok(CancelResult::NotFound);
    };
    if job.status.is_terminal() {
        return Ok(CancelResult::AlreadyTerminal(job.status));
    }
    let moved = db::jobs::transition(
        &**client,
        job_id,
        JobStatus::Cancelled,
        None,
        &json!({"cancelled_by": "user"}),
    )
    .await?;
    if !moved {
        let status = db::jobs::get(&**client, job_id)
            .await?
            .map(|j| j.status)
            .unwrap_or(JobStatus::Cancelled);
        return Ok(CancelResult::AlreadyTerminal(status));
    }
    // No one completes it any more: drop a claim a holder could not release.
    db::claims::clear(&**client, job_id).await?;
    // An attempt may have stored the result before its commit failed: a cancelled job keeps no object.
    completion::remove_objects(state, settings, &job).await;
    if job.status == JobStatus::Queued
        && let Some(cancel_url) = job.meta_str("fal_cancel_url")
        && let Err(e) = state.fal(settings).cancel(cancel_url).await
    {
        tracing::warn!(%job_id, error = %e, "fal cancel failed; the job stays cancelled");
    }
    Ok(CancelResult::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_path_decides_the_route() {
        assert_eq!(route_kind(None).unwrap(), RouteKind::Sync);
        assert_eq!(route_kind(Some("")).unwrap(), RouteKind::Sync);
        assert_eq!(route_kind(Some("  ")).unwrap(), RouteKind::Sync);
        assert_eq!(route_kind(Some("fal-webhook")).unwrap(), RouteKind::Queue);
        assert!(
            matches!(route_kind(Some("replicate-webhook")), Err(SubmitError::UnsupportedEndpoint(p)) if p == "replicate-webhook")
        );
    }
}
