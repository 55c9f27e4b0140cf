//! `submit_generation`: the fal-image use case, in the order of the contract — resolve the model and its route,
//! build the fal input, write ONE job row with its final status, then submit to fal's queue with the webhook URL,
//! or run on fal's sync host and complete through the completion core. Also the caller's job status and cancel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use url::Url;
use uuid::Uuid;

use crate::completion::{self, Outcome};
use crate::config::Settings;
use crate::db::jobs::JobRecord;
use crate::db::runs::{NewRun, ObjectRef, PostTargets, WebhookAuth};
use crate::db::{self, DbError, models::ModelRow};
use crate::fal::endpoint::EndpointError;
use crate::fal::{QueueEndpoint, SyncEndpoint};
use crate::input::{
    self, BuiltInput, GenerationRequest, InputError, Modality, ModelSpec, StoredBucket,
    StoredReference,
};
use crate::jobs::JobStatus;
use crate::provider::ProviderError;
use crate::provider::ProviderKind;
use crate::replicate::PredictionsEndpoint;
use crate::state::AppState;
use crate::storage_links::{self, Bucket};
use crate::{ownership, postprocess, webhook_auth};

mod fal;
mod replicate;

/// Presigned reference URLs live this long (fal fetches them soon after submission).
const REFERENCE_URL_TTL: Duration = Duration::from_secs(3600);
/// Result links handed to clients live as the original's signed URLs did.
pub const RESULT_LINK_TTL: Duration = Duration::from_secs(3600);
/// How long a client told it has too many open jobs should wait before trying again.
pub const OPEN_JOBS_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How a model runs, from `api_models.endpoint_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Sync,
    Queue,
}

/// The route of a model of `provider`: empty is the sync route, the provider's webhook name its queue route.
pub fn route_kind(
    provider: ProviderKind,
    endpoint_path: Option<&str>,
) -> Result<RouteKind, SubmitError> {
    match endpoint_path.map(str::trim) {
        None | Some("") => Ok(RouteKind::Sync),
        Some(p) if p == provider.queue_route() => Ok(RouteKind::Queue),
        Some(other) => Err(SubmitError::UnsupportedEndpoint(other.to_owned())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("Specified API model not found or inactive")]
    ModelNotFound,
    #[error("No fal.ai models configured")]
    NoModels,
    #[error("Model provider must be fal or replicate")]
    UnsupportedProvider,
    /// The provider's secrets are not configured (Replicate's token and webhook signing secret).
    #[error("{0} is not configured")]
    ProviderNotConfigured(&'static str),
    #[error("unsupported endpoint_path")]
    UnsupportedEndpoint(String),
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("provider configuration is incomplete: {0}")]
    Misconfigured(String),
    /// The client's `model_key_override` is not an active model of the provider.
    #[error("Invalid model_key_override")]
    BadModelOverride,
    /// A post-processing target (character, scene, storyboard clip) that is not the caller's.
    #[error("{0}")]
    TargetNotFound(&'static str),
    /// The token verified, but its user no longer exists.
    #[error("Authentication failed")]
    UnknownCaller,
    /// The caller has `MAX_OPEN_JOBS_PER_USER` open jobs already.
    #[error("Too many generations in progress")]
    TooManyOpenJobs,
    /// The provider refused the request (its 4xx), or failed it; the job is `failed`.
    #[error("{} API request failed", provider.display_name())]
    Provider {
        job_id: Uuid,
        provider: ProviderKind,
        error: ProviderError,
    },
    /// fal's result could not become an asset (our final verdict or a fault while storing); the job is `failed`.
    #[error("generation failed")]
    ResultFailed { job_id: Uuid, message: String },
    /// The job was closed (cancelled) while it ran.
    #[error("job was {status}")]
    Closed { job_id: Uuid, status: JobStatus },
    #[error("database unavailable")]
    Db(#[from] DbError),
    #[error("storage unavailable: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// Failing the job (database or storage) did not go through.
    #[error("completion: {0}")]
    Completion(#[source] completion::CompletionError),
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
        /// A link to our copy the client can keep for an hour ([`RESULT_LINK_TTL`]).
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

impl SubmitResult {
    /// Answered as queued with the provider's request id: the job is the provider's delivery's (or the
    /// reconciler's) to finish, and clients poll it. Nothing to post-process yet.
    fn queued(job_id: Uuid, request_id: String) -> Self {
        SubmitResult {
            answer: Submitted::Queued { job_id, request_id },
            post_process: None,
        }
    }
}

/// Everything decided before the job row is written: the model and how it runs, the fal input, the endpoints,
/// and the server-owned run.
struct Plan {
    model: ModelRow,
    model_key: String,
    modality: Modality,
    prompt: String,
    built: BuiltInput,
    target: Target,
    targets: PostTargets,
    reference: Option<ObjectRef>,
    estimated_cost: f64,
}

/// Where and how the job runs.
enum Target {
    Fal {
        sync: SyncEndpoint,
        /// The queue endpoint and the webhook URL without the job, when the queue route is taken.
        queue: Option<(QueueEndpoint, Url)>,
    },
    Replicate {
        endpoint: PredictionsEndpoint,
        route: RouteKind,
        /// The webhook URL without the job; without one a prediction outliving the sync wait is finished by the
        /// reconciler.
        webhook: Option<Url>,
    },
}

impl Plan {
    /// Whether the job is inserted `queued` (finished by a webhook or the reconciler) rather than `processing`.
    /// Replicate jobs always are: a sync run that outlives its wait is finished by its webhook.
    fn starts_queued(&self) -> bool {
        match &self.target {
            Target::Fal { queue, .. } => queue.is_some(),
            Target::Replicate { .. } => true,
        }
    }

    fn webhook_auth(&self) -> WebhookAuth {
        let has_webhook = match &self.target {
            Target::Fal { queue, .. } => queue.is_some(),
            Target::Replicate { webhook, .. } => webhook.is_some(),
        };
        if has_webhook {
            WebhookAuth::Token
        } else {
            WebhookAuth::None
        }
    }

    fn usage(&self, job_id: Uuid, user_id: Uuid) -> UsageBase {
        UsageBase {
            job_id,
            provider_id: self.model.provider_id,
            model_id: self.model.id,
            user_id,
            request_type: self.modality.as_str().to_owned(),
            endpoint_path: format!("/{}", self.model_key),
            request_payload: self.built.input.clone(),
            cost_usd: self.estimated_cost,
        }
    }
}

/// What a sync run leaves of the invocation's time for storing its result and answering: the provider calls end
/// this long before the invocation's deadline, whatever `FAL_SYNC_TIMEOUT_SECS` says.
pub const COMPLETION_RESERVE: Duration = Duration::from_secs(4);

/// Creates a generation for `user_id`: plan → insert → queue (or fall back) → run sync. `api_base` is the API's
/// public URL, for the result link of a sync run. `invocation_deadline` (less [`COMPLETION_RESERVE`], when known)
/// bounds the provider calls, as `FAL_SYNC_TIMEOUT_SECS` from now does.
pub async fn submit_generation(
    state: &AppState,
    settings: &Settings,
    user_id: Uuid,
    req: GenerationRequest,
    api_base: Option<&Url>,
    invocation_deadline: Option<tokio::time::Instant>,
) -> Result<SubmitResult, SubmitError> {
    let deadline = provider_deadline(
        tokio::time::Instant::now() + settings.config.fal_sync_timeout,
        invocation_deadline,
    );
    // One connection for the queue route's statements (a checkout after an idle spell costs a liveness round
    // trip). Released before anything that takes connections of its own (sync completion, failing the job).
    let client = state.db_client(settings).await?;
    let plan = plan(state, settings, &client, user_id, &req).await?;
    let job_id = insert_job(&client, settings, user_id, &req, &plan).await?;
    let provider = plan.model.provider_name.as_str();
    tracing::info!(%job_id, model_key = %plan.model_key, provider, "job created");
    let run = Run {
        state,
        settings,
        user_id,
        job_id,
        plan: &plan,
        deadline,
    };
    let submitted = submit_inserted(&run, client, api_base).await;
    if let Err(e) = &submitted {
        if matches!(e, SubmitError::Db(_)) {
            fail_interrupted(state, settings, job_id).await;
        }
        // Whatever the provider was asked is over: a cancel that came meanwhile no longer needs to hold the run.
        release_held_run(state, settings, job_id).await;
    }
    submitted
}

/// The earlier of the sync bound and [`COMPLETION_RESERVE`] before the invocation's deadline.
fn provider_deadline(
    sync_bound: tokio::time::Instant,
    invocation_deadline: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let reserved = invocation_deadline.map(|d| {
        d.checked_sub(COMPLETION_RESERVE)
            .unwrap_or(d)
            .max(tokio::time::Instant::now())
    });
    crate::deadline::earliest(sync_bound, reserved)
}

/// The database failed part way through the submission. Every such error comes where no provider runs the job for
/// us (a queue submission that failed, before its fallback; a sync run that is over; an accepted request's record
/// failing is logged, not returned), so the job is failed rather than left open, counting against its owner until
/// the reconcile deadline with nothing running it. Best effort, on a fresh connection: if the database is still
/// down, the reconciler ends the job.
async fn fail_interrupted(state: &AppState, settings: &Settings, job_id: Uuid) {
    let message = "Submission interrupted: the database was unavailable";
    if let Err(e) = fail_job(state, settings, job_id, message).await {
        tracing::warn!(%job_id, error = %e, "a submission the database interrupted could not fail its job; the reconciler ends it");
    }
}

/// The job's row is written: queue it, or run it and answer with its result. A queue submission that timed out
/// after the provider accepted it may find its job completed by the provider's webhook by the time it would fall
/// back: the caller gets that result, as when a webhook completes a sync run first.
async fn submit_inserted(
    run: &Run<'_>,
    client: crate::db::Client,
    api_base: Option<&Url>,
) -> Result<SubmitResult, SubmitError> {
    match route_inserted(run, client, api_base).await {
        Err(SubmitError::Closed {
            job_id,
            status: JobStatus::Completed,
        }) => completed_elsewhere(run.state, run.settings, api_base, job_id).await,
        answered => answered,
    }
}

async fn route_inserted(
    run: &Run<'_>,
    client: crate::db::Client,
    api_base: Option<&Url>,
) -> Result<SubmitResult, SubmitError> {
    let (job, outcome) = match &run.plan.target {
        Target::Fal { sync, queue } => {
            if let Some(queued) = fal::submit_queued(run, &client, queue.as_ref()).await? {
                return Ok(queued);
            }
            drop(client);
            fal::run_sync(run, sync).await?
        }
        Target::Replicate {
            endpoint,
            route,
            webhook,
        } => match replicate::submit(run, &client, endpoint, *route, webhook.as_ref()).await? {
            replicate::Submitted::Answered(answer) => return Ok(answer),
            replicate::Submitted::Finished(finished) => *finished,
        },
    };
    sync_answer(run.state, run.settings, api_base, &job, outcome).await
}

/// Drops the hold a cancel put on a run whose submission was in flight ([`db::reconcile::hold_in_flight`]).
async fn release_held_run(state: &AppState, settings: &Settings, job_id: Uuid) {
    match state.db_client(settings).await {
        Ok(client) => release_hold(&client, job_id).await,
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "the hold of a cancelled submission could not be released; a reconciler pass drops it");
        }
    }
}

/// [`db::reconcile::release_hold`], logged when it fails (a reconciler pass drops the hold then).
async fn release_hold(client: &tokio_postgres::Client, job_id: Uuid) {
    if let Err(e) = db::reconcile::release_hold(client, job_id).await {
        tracing::warn!(%job_id, error = %e, "the hold of a cancelled submission could not be released; a reconciler pass drops it");
    }
}

/// One submission after its job row is written.
struct Run<'a> {
    state: &'a AppState,
    settings: &'a Settings,
    user_id: Uuid,
    job_id: Uuid,
    plan: &'a Plan,
    /// When the provider calls of this submission must be over: `FAL_SYNC_TIMEOUT_SECS` after it began, whatever
    /// route they took. A sync run after a failed queue submission gets what the submission left, so the two
    /// together end within the function's timeout instead of being killed with the job left open.
    deadline: tokio::time::Instant,
}

/// A queue submission's provider call, cut at the submission's deadline as a provider timeout (so falling back),
/// whatever `FAL_REQUEST_TIMEOUT_SECS` allows the call itself.
async fn within_deadline<T>(
    deadline: tokio::time::Instant,
    call: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or(Err(ProviderError::Timeout))
}

async fn plan(
    state: &AppState,
    settings: &Settings,
    client: &tokio_postgres::Client,
    user_id: Uuid,
    req: &GenerationRequest,
) -> Result<Plan, SubmitError> {
    let mut targets = input::targets::post_targets(req.metadata.as_ref())?;
    portrait_by_name(client, user_id, req, &mut targets).await?;
    let model = resolve_model(state, client, req).await?;
    let provider =
        ProviderKind::of(&model.provider_name).ok_or(SubmitError::UnsupportedProvider)?;
    let prompt = req
        .prompt
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or(InputError::MissingPrompt)?
        .to_owned();
    let (model_key, overridden) = model_key(settings, client, &model, req).await?;
    // An override runs another model: on its route, priced and logged as what it is, not as the row it was asked
    // through (a queue-only model asked through a sync row would otherwise hold the sync route past its bound).
    let (modality, endpoint_path) = match &overridden {
        Some(o) => (o.modality.as_str(), o.endpoint_path.as_deref()),
        None => (model.modality.as_str(), model.endpoint_path.as_deref()),
    };
    let route = route_kind(provider, endpoint_path)?;
    let modality = if modality == "video" {
        Modality::Video
    } else {
        Modality::Image
    };
    let spec = ModelSpec {
        model_key: model_key.clone(),
        modality,
        input_defaults: model.input_defaults.clone(),
        capabilities: model.capabilities.clone(),
        override_capabilities: overridden.map(|o| o.capabilities),
    };
    let stored = input::stored_references(req);
    let located = locate_references(state, settings, user_id, &stored).await?;
    let resolved: HashMap<String, String> = located
        .iter()
        .map(|(original, (_, url))| (original.clone(), url.clone()))
        .collect();
    let built = input::build_input(req, &spec, &resolved)?;
    // A list keeps the references that resolve; those left out (not the caller's, or missing) are logged here, as
    // the request is not refused for them.
    let left_out = stored
        .iter()
        .filter(|r| !located.contains_key(&r.original))
        .count();
    if left_out > 0 {
        tracing::info!(
            left_out,
            "stored references not among the caller's objects left out"
        );
    }
    let target = target(settings, provider, &model, &model_key, route)?;
    check_targets(client, user_id, &targets).await?;
    Ok(Plan {
        estimated_cost: crate::pricing::estimated_cost(&model_key, modality == Modality::Video),
        reference: reference_object(req, &located),
        model,
        model_key,
        modality,
        prompt,
        built,
        target,
        targets,
    })
}

/// The model key to run: the row's, or `model_key_override` when it names an active model of the same provider
/// (or one of `MODEL_OVERRIDE_ALLOWED`). Our key runs whatever it names, so the client cannot pick any endpoint.
/// With the key, the active model an override names, if it is one.
async fn model_key(
    settings: &Settings,
    client: &tokio_postgres::Client,
    model: &ModelRow,
    req: &GenerationRequest,
) -> Result<(String, Option<db::models::OverrideModel>), SubmitError> {
    let Some(key) = req
        .model_key_override
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty() && *k != model.model_key)
    else {
        return Ok((model.model_key.clone(), None));
    };
    let overridden = db::models::active_override(client, model.provider_id, key).await?;
    let listed = settings
        .config
        .model_override_allowed
        .iter()
        .any(|k| k == key);
    if overridden.is_none() && !listed {
        // Logged once, with the answer's status.
        return Err(SubmitError::BadModelOverride);
    }
    Ok((key.to_owned(), overridden))
}

/// The endpoints from the provider's configured hosts, up front: a misconfiguration is an error before any row
/// is written, and fal's sync route can only ever use its sync host. No webhook secret or URL: no queue route.
fn target(
    settings: &Settings,
    provider: ProviderKind,
    model: &ModelRow,
    model_key: &str,
    route: RouteKind,
) -> Result<Target, SubmitError> {
    let endpoint_error = |host: &str, e: EndpointError| match e {
        EndpointError::BadModelKey(_) if model_key != model.model_key => {
            SubmitError::BadModelOverride
        }
        e => SubmitError::Misconfigured(format!("{host} host: {e}")),
    };
    if provider == ProviderKind::Replicate {
        if settings.secrets.replicate.is_none() {
            return Err(SubmitError::ProviderNotConfigured("Replicate"));
        }
        let endpoint = PredictionsEndpoint::new(model.base_url.as_deref(), model_key)
            .map_err(|e| endpoint_error("Replicate", e))?;
        let webhook = webhook_url(settings);
        let route = match (route, &webhook) {
            (RouteKind::Queue, None) => {
                tracing::warn!(
                    "no webhook secret or URL configured: queue model runs on Replicate's sync route"
                );
                RouteKind::Sync
            }
            (route, _) => route,
        };
        return Ok(Target::Replicate {
            endpoint,
            route,
            webhook,
        });
    }
    let sync = SyncEndpoint::new(model.sync_base_url.as_deref(), model_key)
        .map_err(|e| endpoint_error("sync", e))?;
    let queue = match (route, webhook_url(settings)) {
        (RouteKind::Queue, Some(webhook)) => Some((
            QueueEndpoint::new(model.base_url.as_deref(), model_key)
                .map_err(|e| endpoint_error("queue", e))?,
            webhook,
        )),
        (RouteKind::Queue, None) => {
            tracing::warn!(
                "no webhook secret or URL configured: queue model runs on the sync host"
            );
            None
        }
        (RouteKind::Sync, _) => None,
    };
    Ok(Target::Fal { sync, queue })
}

/// A portrait request that names its character but gives no id gets the caller's most recently updated character
/// of that name, as the original's sync path did (on both routes here); none of that name: no portrait step.
async fn portrait_by_name(
    client: &tokio_postgres::Client,
    user_id: Uuid,
    req: &GenerationRequest,
    targets: &mut PostTargets,
) -> Result<(), SubmitError> {
    if targets.destination.as_deref() != Some("character_portrait")
        || targets.character_id.is_some()
    {
        return Ok(());
    }
    if let Some(name) = input::targets::character_name(req.metadata.as_ref()) {
        targets.character_id = db::postprocess::character_by_name(client, user_id, name).await?;
    }
    Ok(())
}

/// The post-processing targets must be the caller's: 404 before anything is written otherwise.
async fn check_targets(
    client: &tokio_postgres::Client,
    user_id: Uuid,
    t: &PostTargets,
) -> Result<(), SubmitError> {
    if t.character_id.is_none() && t.scene_id.is_none() && t.storyboard_clip_id.is_none() {
        return Ok(());
    }
    let [character, scene, clip] = db::postprocess::targets_allowed(
        client,
        user_id,
        t.character_id,
        t.scene_id,
        t.storyboard_clip_id,
    )
    .await?;
    let missing = [
        (character, "Character not found"),
        (scene, "Scene not found"),
        (clip, "Storyboard clip not found"),
    ]
    .into_iter()
    .find_map(|(allowed, what)| (!allowed).then_some(what));
    match missing {
        Some(what) => Err(SubmitError::TargetNotFound(what)),
        None => Ok(()),
    }
}

/// The job's `metadata` as the original's clients read it: theirs (server-owned keys were refused), plus the
/// server's copies. Pure. What the functions decide (routes, keys, URLs, prices, whom a job is for) is never read
/// back from it; post-processing copies a few of its values (the seed, a clip's duration, a character's name) into
/// rows its owner could write through RLS anyway.
pub fn job_metadata(
    client_metadata: Option<&Map<String, Value>>,
    model: &ModelRow,
    model_key: &str,
    built: &BuiltInput,
    estimated_cost: f64,
    queued: bool,
) -> Value {
    let mut metadata = client_metadata.cloned().unwrap_or_default();
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
    if queued && let Some(signed) = &built.reference_image_url {
        metadata.insert("reference_image_signed_url".into(), json!(signed));
    }
    Value::Object(metadata)
}

/// Writes the job and its run in one statement; 429 when the caller already has the most open jobs allowed.
async fn insert_job(
    client: &tokio_postgres::Client,
    settings: &Settings,
    user_id: Uuid,
    req: &GenerationRequest,
    plan: &Plan,
) -> Result<Uuid, SubmitError> {
    let queued = plan.starts_queued();
    let new_job = db::jobs::NewJob {
        user_id,
        job_type: input::normalize_job_type(req.job_type.as_deref(), plan.modality, req.quality()),
        original_prompt: plan.prompt.clone(),
        status: if queued {
            JobStatus::Queued
        } else {
            JobStatus::Processing
        },
        quality: req.quality().as_str().to_owned(),
        api_model_id: plan.model.id,
        format: plan.modality.as_str().to_owned(),
        metadata: job_metadata(
            req.metadata.as_ref(),
            &plan.model,
            &plan.model_key,
            &plan.built,
            plan.estimated_cost,
            queued,
        ),
        run: NewRun {
            provider_id: plan.model.provider_id,
            provider_name: plan.model.provider_name.clone(),
            model_key: plan.model_key.clone(),
            webhook_auth: plan.webhook_auth(),
            reference: plan.reference.clone(),
            targets: plan.targets.clone(),
            post_steps: postprocess::steps_for(&plan.targets)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        },
        max_open: i64::from(settings.config.max_open_jobs_per_user),
    };
    match db::jobs::insert(client, &new_job).await {
        Ok(inserted) => inserted.ok_or(SubmitError::TooManyOpenJobs),
        // A verified token of a user deleted since (no profile to own the job): the caller, not our database.
        Err(e) if db::violates_foreign_key(&e, "jobs_user_id_fkey") => {
            Err(SubmitError::UnknownCaller)
        }
        Err(e) => Err(e.into()),
    }
}

/// What the caller of a sync run is answered, from the completion's outcome.
async fn sync_answer(
    state: &AppState,
    settings: &Settings,
    api_base: Option<&Url>,
    job: &JobRecord,
    outcome: Result<Outcome, completion::CompletionError>,
) -> Result<SubmitResult, SubmitError> {
    let job_id = job.id;
    let recorded = job.run.as_ref().and_then(|r| r.request_id());
    match outcome {
        Ok(Outcome::Completed(done)) => {
            let bucket = Bucket::WorkspaceTemp;
            let key = &done.storage_path;
            let result_url =
                storage_links::client_link(state, settings, api_base, bucket, key, RESULT_LINK_TTL)
                    .await?;
            Ok(SubmitResult {
                answer: Submitted::Completed {
                    job_id,
                    asset_id: done.asset_id,
                    result_url,
                    result_type: done.result_type.as_str().to_owned(),
                    original_url: done.original_url,
                },
                post_process: post_process_of(job),
            })
        }
        Ok(Outcome::Failed(message)) => Err(SubmitError::ResultFailed { job_id, message }),
        // The provider's webhook completed it first (a Replicate sync run registers one too): answered with that
        // result by `submit_inserted`.
        Ok(Outcome::AlreadyTerminal(status)) => Err(SubmitError::Closed { job_id, status }),
        // Another caller (the provider's webhook, for a run that registered one) holds the completion past the wait:
        // the job is not failed, and is theirs to finish. Answered as a queued job, which clients poll, rather than
        // as a failure the row would contradict (and that would send the caller back to pay for another run).
        // (`Abandoned` is a queue request's: a sync run's result has none. Were it seen, the job is open and not
        // this run's to answer for, as with `Busy`.)
        Ok(Outcome::Busy | Outcome::Abandoned) => Ok(SubmitResult::queued(
            job_id,
            recorded.unwrap_or_default().to_owned(),
        )),
        // The run recorded its provider request (a Replicate prediction, which Replicate also delivers to the
        // webhook): that delivery, or the reconciler polling the request, finishes the job; failing it here would
        // throw away a paid result for a fault that may have passed. Answered as queued, which clients poll.
        Err(e) if let Some(request_id) = recorded => {
            tracing::warn!(%job_id, error = %e, "sync result could not be stored; left to the request's delivery");
            Ok(SubmitResult::queued(job_id, request_id.to_owned()))
        }
        Err(e) => {
            // A completion whose COMMIT went through but whose acknowledgement was lost (the connection dropped
            // after it) reads as an error here while the job is completed with its asset (its run records the
            // result, which only the completing transaction writes): it is answered with that result, not with a
            // failure the row contradicts (which would send the caller back to pay for another run).
            if current_job(state, settings, job_id)
                .await
                .ok()
                .flatten()
                .and_then(|j| j.run)
                .is_some_and(|r| r.result_key.is_some())
            {
                tracing::warn!(%job_id, error = %e, "the completion reported an error, but the job is completed");
                let mut answer = completed_elsewhere(state, settings, api_base, job_id).await?;
                answer.post_process = post_process_of(job);
                return Ok(answer);
            }
            // A sync job has no one else to finish it: fail it with the reason instead of leaving it processing.
            let message = format!("Storing the result failed: {e}");
            fail_job(state, settings, job_id, &message).await?;
            tracing::error!(%job_id, error = %e, "sync result could not be stored");
            Err(SubmitError::ResultFailed { job_id, message })
        }
    }
}

/// The job whose post-processing the answer leaves to run after it: a completed job's, when it has steps.
fn post_process_of(job: &JobRecord) -> Option<Uuid> {
    let steps = job.run.as_ref().is_some_and(|r| !r.post_steps.is_empty());
    steps.then_some(job.id)
}

/// The answer for a sync job another caller completed: its stored result, as the job reads now.
async fn completed_elsewhere(
    state: &AppState,
    settings: &Settings,
    api_base: Option<&Url>,
    job_id: Uuid,
) -> Result<SubmitResult, SubmitError> {
    let closed = SubmitError::Closed {
        job_id,
        status: JobStatus::Completed,
    };
    let (job, asset) = {
        let client = state.db_client(settings).await?;
        let job = db::jobs::get(&**client, job_id).await?;
        let asset = match &job {
            Some(job) => db::assets::for_job(&**client, job_id, job.user_id).await?,
            None => None,
        };
        (job, asset)
    };
    let (Some(job), Some(asset)) = (job, asset) else {
        return Err(closed);
    };
    let Some(key) = job.run.as_ref().and_then(|r| r.result_key.clone()) else {
        return Err(closed);
    };
    let bucket = Bucket::WorkspaceTemp;
    let result_url =
        storage_links::client_link(state, settings, api_base, bucket, &key, RESULT_LINK_TTL)
            .await?;
    let original_url = job
        .meta_str("original_fal_url")
        .unwrap_or_default()
        .to_owned();
    Ok(SubmitResult {
        answer: Submitted::Completed {
            job_id,
            asset_id: asset.id,
            result_url,
            result_type: asset.asset_type,
            original_url,
        },
        // Whoever completed it runs the post-processing (the webhook after its answer).
        post_process: None,
    })
}

fn to_submit(e: completion::CompletionError) -> SubmitError {
    match e {
        completion::CompletionError::Db(d) => SubmitError::Db(d),
        other => SubmitError::Completion(other),
    }
}

async fn current_job(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
) -> Result<Option<JobRecord>, SubmitError> {
    let client = state.db_client(settings).await?;
    Ok(db::jobs::get(&**client, job_id).await?)
}

/// A sync run's result, completed through the completion core. The provider ran the generation, and bills for it,
/// whatever became of the job meanwhile, so the run's usage row is written before the result is stored: a transfer
/// the function's timeout cuts short (the process is killed, and the reconciler later fails the job) leaves it
/// logged. Should that write fail, the completing transaction writes it, or, when the completion did not (the job
/// was deleted, cancelled or closed by its owner, failed by our verdict, or its result could not be stored), it is
/// tried once more here: once in all (unique on `job_id`), so that no paid run goes unlogged.
async fn complete_sync(
    run: &Run<'_>,
    output: &Value,
    metadata: Value,
    usage: db::usage::NewUsage,
) -> Result<(JobRecord, Result<Outcome, completion::CompletionError>), SubmitError> {
    // The call was made and is paid for: its usage row goes first, whatever reading the job back comes to.
    let logged = log_usage(run, &usage).await;
    // A row without a run is not the job this run was for: its owner deleted that one and wrote another in its place.
    let current = current_job(run.state, run.settings, run.job_id).await;
    let Some(job) = current?.filter(|j| j.run.is_some()) else {
        if !logged {
            log_usage(run, &usage).await;
        }
        return Err(SubmitError::Closed {
            job_id: run.job_id,
            status: JobStatus::Cancelled,
        });
    };
    let completion = completion::Completion {
        job: &job,
        output,
        metadata,
        usage: if logged {
            completion::UsageSettlement::Written
        } else {
            completion::UsageSettlement::Insert(Box::new(usage.clone()))
        },
        queue_delivery: None,
    };
    let outcome = completion::complete(run.state, run.settings, completion).await;
    if !logged && !matches!(outcome, Ok(Outcome::Completed(_))) {
        log_usage(run, &usage).await;
    }
    Ok((job, outcome))
}

/// A request the provider may have taken although its answer was lost
/// ([`ProviderError::may_have_been_accepted`]): its usage row is written as an accepted request's is (without the
/// request's id), and the caller is answered queued. The provider's delivery to the job's webhook URL finishes the
/// job, or the reconciler fails it at its deadline.
async fn left_to_delivery(run: &Run<'_>, error: &ProviderError) -> SubmitResult {
    let (job_id, provider) = (run.job_id, run.plan.model.provider_name.as_str());
    tracing::warn!(%job_id, provider, %error, "the provider may have the request but its answer was lost; the job is left to its delivery");
    let metadata = json!({
        "request_id": null, "async": true, "model_key": run.plan.model_key, "provider": provider,
        "answer_lost": true,
    });
    let usage = run
        .plan
        .usage(job_id, run.user_id)
        .row(None, 0, None, None, metadata);
    log_usage(run, &usage).await;
    SubmitResult::queued(job_id, String::new())
}

/// Inserts a run's usage row unless its job has one; true when the job has one now. Best effort: the caller's
/// answer does not depend on it, so an error is logged, not returned.
async fn log_usage(run: &Run<'_>, usage: &db::usage::NewUsage) -> bool {
    let written = match run.state.db_client(run.settings).await {
        Ok(client) => db::usage::insert_once(&**client, usage)
            .await
            .map_err(DbError::Query),
        Err(e) => Err(e),
    };
    match written {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(job_id = %run.job_id, error = %e, "the run's usage row could not be written");
            false
        }
    }
}

/// The answer to a fallback that found its job closed meanwhile (the owner cancelled it): nothing to run, and the
/// status the job has now (`cancelled` when it is gone).
async fn closed_meanwhile(state: &AppState, settings: &Settings, job_id: Uuid) -> SubmitError {
    match current_job(state, settings, job_id).await {
        Ok(current) => SubmitError::Closed {
            job_id,
            status: current.map_or(JobStatus::Cancelled, |j| j.status),
        },
        Err(e) => e,
    }
}

/// Fails the job with the reason, through the completion core's one failing path.
async fn fail_job(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
    message: &str,
) -> Result<(), SubmitError> {
    if let Some(job) = current_job(state, settings, job_id).await? {
        completion::fail(state, settings, &job, message, None)
            .await
            .map_err(to_submit)?;
    }
    Ok(())
}

fn describe(e: &ProviderError) -> String {
    match e {
        ProviderError::Api {
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

/// `FAL_WEBHOOK_URL?job_id=…&token=…`: the job's own credential (an HMAC of its id), so the URL fal holds
/// authenticates deliveries for this job only, and the callback finds its job before the request id is recorded.
fn with_job(base: &Url, settings: &Settings, job_id: Uuid) -> Url {
    let mut url = base.clone();
    if let Some(secret) = &settings.secrets.fal_webhook_secret {
        url.query_pairs_mut()
            .append_pair("job_id", &job_id.to_string())
            .append_pair("token", &webhook_auth::job_token(secret, job_id));
    }
    url
}

/// The S3 buckets a stored reference may be in, in the order they are tried: the one its path names, or for a
/// path that names none the workspace and then the library bucket (the original tried its buckets in turn);
/// none for the original's buckets the port does not have.
fn buckets_of(settings: &Settings, r: &StoredReference) -> Vec<String> {
    let config = &settings.config;
    match &r.bucket {
        Some(StoredBucket::Workspace) => vec![config.workspace_bucket.clone()],
        Some(StoredBucket::Library) => vec![config.library_bucket.clone()],
        None => vec![
            config.workspace_bucket.clone(),
            config.library_bucket.clone(),
        ],
        Some(StoredBucket::Legacy(_)) => Vec::new(),
    }
}

/// The caller's own stored references (keys under `<user_id>/`) that exist, each with where it lives and a
/// presigned link for the provider. Others' objects, objects in none of the reference's buckets and buckets the
/// port does not have stay unresolved, which the builder reports as an invalid reference (400, before anything is
/// written; the original's signing failed for a missing object too).
async fn locate_references(
    state: &AppState,
    settings: &Settings,
    user_id: Uuid,
    stored: &[StoredReference],
) -> Result<HashMap<String, (ObjectRef, String)>, SubmitError> {
    let lookups = stored.iter().filter_map(|r| {
        // Not `owned_key`, which logs: the refusal is the request's, logged once with its answer.
        let key = Some(r.key.as_str()).filter(|k| ownership::is_owned_key(user_id, k))?;
        Some(async move {
            for bucket in buckets_of(settings, r) {
                if state.storage.exists(&bucket, key).await? {
                    let url = state
                        .storage
                        .presign_get(&bucket, key, REFERENCE_URL_TTL)
                        .await?;
                    let at = ObjectRef {
                        bucket,
                        key: key.to_owned(),
                    };
                    return Ok(Some((r.original.clone(), (at, url))));
                }
            }
            Ok::<_, SubmitError>(None)
        })
    });
    let found = futures::future::try_join_all(lookups).await?;
    Ok(found.into_iter().flatten().collect())
}

/// Where the reference image lives in our storage, for the video thumbnail (copied server-side later). Only the
/// caller's own objects: nothing else was located.
fn reference_object(
    req: &GenerationRequest,
    located: &HashMap<String, (ObjectRef, String)>,
) -> Option<ObjectRef> {
    let image_url = req.input.as_ref()?.get("image_url")?.as_str()?;
    located.get(image_url).map(|(at, _)| at.clone())
}

/// The caller's view of a job (`GET /jobs/{id}`).
#[derive(Debug, Clone)]
pub struct JobView {
    pub job: db::jobs::JobRecord,
    pub asset: Option<(db::assets::AssetRow, String)>,
}

/// The caller's job with its asset and a link to it ([`storage_links::client_link`]); `None` when absent or
/// someone else's.
pub async fn job_status(
    state: &AppState,
    settings: &Settings,
    user_id: Uuid,
    job_id: Uuid,
    api_base: Option<&Url>,
) -> Result<Option<JobView>, SubmitError> {
    let client = state.db_client(settings).await?;
    let Some(job) = db::jobs::get_for_user(&**client, job_id, user_id).await? else {
        return Ok(None);
    };
    let Some(asset) = db::assets::for_job(&**client, job_id, user_id).await? else {
        return Ok(Some(JobView { job, asset: None }));
    };
    drop(client);
    // The key the completion stored, not the asset row's path (the owner can rewrite that); jobs completed
    // before the port have only the row's, which is signed only when it is the owner's.
    let key = job
        .run
        .as_ref()
        .and_then(|r| r.result_key.clone())
        .unwrap_or_else(|| asset.temp_storage_path.clone());
    let url = match ownership::owned_key(job.user_id, &key) {
        Some(key) => {
            let bucket = Bucket::WorkspaceTemp;
            let link =
                storage_links::client_link(state, settings, api_base, bucket, key, RESULT_LINK_TTL);
            Some(link.await?)
        }
        None => None,
    };
    let asset = url.map(|url| {
        let mut asset = asset;
        asset.temp_storage_path = key;
        (asset, url)
    });
    Ok(Some(JobView { job, asset }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelResult {
    Cancelled,
    NotFound,
    AlreadyTerminal(JobStatus),
}

/// Cancels the caller's open job: the run is closed, and its provider asked to stop the request.
pub async fn cancel_job(
    state: &AppState,
    settings: &Settings,
    user_id: Uuid,
    job_id: Uuid,
) -> Result<CancelResult, SubmitError> {
    let mut client = state.db_client(settings).await?;
    let Some(job) = db::jobs::get_for_user(&**client, job_id, user_id).await? else {
        return Ok(CancelResult::NotFound);
    };
    if job.is_closed() {
        return Ok(CancelResult::AlreadyTerminal(job.status));
    }
    if !close_for_cancel(&mut client, settings, &job).await? {
        let status = db::jobs::get(&**client, job_id)
            .await?
            .map(|j| j.status)
            .unwrap_or(JobStatus::Cancelled);
        return Ok(CancelResult::AlreadyTerminal(status));
    }
    // Read again: a request the submission recorded before the close is the one to stop (a later one finds the run
    // closed, and its submission stops it).
    let job = match db::jobs::get(&**client, job_id).await {
        Ok(fresh) => fresh.unwrap_or(job),
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "the cancelled job could not be read again");
            job
        }
    };
    // Whatever status the row shows (its owner can write it), a request with a cancel URL is asked to stop. fal
    // answers a finished request with ALREADY_COMPLETED.
    let settled = cancel_closed_run(state, settings, &client, &job).await;
    let recorded = job.run.as_ref().is_some_and(|r| r.request.is_some());
    if settled && recorded {
        release_hold(&client, job_id).await;
    }
    // No one completes it any more: drop a claim a holder could not release (its lease ends anyway).
    if let Err(e) = db::claims::clear(&**client, job_id).await {
        tracing::warn!(%job_id, error = %e, "the cancelled job's claim could not be cleared");
    }
    // An attempt may have stored the result before its commit failed: a cancelled job keeps no object.
    completion::remove_objects(state, settings, &job).await;
    Ok(CancelResult::Cancelled)
}

/// Closes the job's run for a cancel, in one transaction with the job's row locked: first a hold on a submission
/// still in flight (no provider request recorded: another invocation is waiting on the provider), which keeps
/// counting against its owner until it ends, then the close. So the submission, seeing the job closed, always finds
/// the hold to release, and a concurrent cancel or completion waits and then finds the job closed. The storyboard
/// clip the run was for, if any, is failed with it, as when a job fails: no video will come for it. False, with
/// nothing written, when the job ended meanwhile.
async fn close_for_cancel(
    client: &mut db::Client,
    settings: &Settings,
    job: &JobRecord,
) -> Result<bool, DbError> {
    let job_id = job.id;
    let tx = client.transaction().await?;
    db::jobs::lock(&*tx, job_id).await?;
    let in_flight = settings.config.submission_bound();
    db::reconcile::hold_in_flight(&*tx, job_id, in_flight).await?;
    let patch = json!({"cancelled_by": "user"});
    let moved = db::jobs::transition(&*tx, job_id, JobStatus::Cancelled, None, &patch).await?;
    if moved {
        if let Some(clip) = job.run.as_ref().and_then(|r| r.targets.storyboard_clip_id) {
            db::postprocess::fail_storyboard_clip(&*tx, job_id, clip, job.user_id).await?;
        }
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(moved)
}

/// Asks the provider to stop the request of a run that is closed, or being closed. When it cannot be asked now, the
/// run is kept with the orphans ([`db::reconcile::keep_for_cancel`]): it counts against its owner while the
/// provider may still run it, and the reconciler asks again until its deadline.
/// True when the cancel is settled.
pub(crate) async fn cancel_closed_run(
    state: &AppState,
    settings: &Settings,
    client: &tokio_postgres::Client,
    job: &JobRecord,
) -> bool {
    if cancel_at_provider(state, settings, job).await {
        return true;
    }
    if let Err(e) = db::reconcile::keep_for_cancel(client, job.id).await {
        let job_id = job.id;
        tracing::warn!(%job_id, error = %e, "a run whose cancel did not go through could not be kept for a retry");
    }
    false
}

/// Records a request the provider accepted, with its usage row ([`db::usage::insert_once_and_record_request`]), and
/// asks the provider to stop it when its job was closed meanwhile. A failed record is tried once more on a fresh
/// connection (the submission's may be the one that broke): without its recorded URLs a `payload: null` delivery
/// cannot fetch the result, and the reconciler cannot ask the provider. An error then is only logged: the provider
/// has the request, and the caller must not be sent back to submit it again (a second generation).
async fn record_accepted(
    run: &Run<'_>,
    client: &tokio_postgres::Client,
    usage: &db::usage::NewUsage,
    request: &db::runs::ProviderRequest,
) {
    let (state, settings, job_id) = (run.state, run.settings, run.job_id);
    let first = db::usage::insert_once_and_record_request(client, usage, request).await;
    let recorded = match first {
        Ok(recorded) => Ok(recorded),
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "recording the accepted request failed; trying once more on a fresh connection");
            match state.db_client(settings).await {
                Ok(fresh) => db::usage::insert_once_and_record_request(&**fresh, usage, request)
                    .await
                    .map_err(DbError::Query),
                Err(e) => Err(e),
            }
        }
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => cancel_unwanted(state, settings, client, job_id).await,
        Err(e) => {
            let provider = run.plan.model.provider_name.as_str();
            tracing::error!(%job_id, provider, error = %e, "the provider has the request, but recording it failed; a delivery with its result completes the job, the reconciler fails it otherwise");
        }
    }
}

/// The provider took a request whose run was closed (its job cancelled through the API, or failed by an early
/// delivery) or whose job was deleted while the submission was in flight. The cancel route could not stop it then,
/// having no cancel URL yet, and nothing reads a closed run again: it is asked to stop now. A deleted job's orphan has the cancel URL already,
/// and the reconciler's next pass cancels it.
pub(crate) async fn cancel_unwanted(
    state: &AppState,
    settings: &Settings,
    client: &tokio_postgres::Client,
    job_id: Uuid,
) {
    match db::jobs::get(client, job_id).await {
        // An early delivery completed it: nothing to stop.
        Ok(Some(job)) if job.run.as_ref().is_some_and(|r| r.result_key.is_some()) => {}
        Ok(Some(job)) => {
            tracing::info!(%job_id, "the job's run was closed while its request was submitted; asking the provider to stop it");
            // Settled, the request no longer runs: the hold the cancel put on the run goes.
            if cancel_closed_run(state, settings, client, &job).await {
                release_hold(client, job_id).await;
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "a request submitted for a closed job could not be read to cancel it");
        }
    }
}

/// Asks the job's provider to cancel its request (best effort: the job is cancelled whatever it answers). True when
/// that is settled ([`cancel_request`]), or when there is nothing to ask.
pub(crate) async fn cancel_at_provider(
    state: &AppState,
    settings: &Settings,
    job: &JobRecord,
) -> bool {
    let Some(run) = job.run.as_ref() else {
        return true;
    };
    let Some(cancel_url) = run.provider_url(|q| q.cancel_url.as_ref()) else {
        return true;
    };
    cancel_request(state, settings, &run.provider_name, &cancel_url, job.id).await
}

/// Asks `provider_name` to cancel the request at `cancel_url`. True when that is settled: the provider cancelled
/// it, or answered that there is nothing to cancel (already over, unknown); false when it could not be asked (no
/// answer, 5xx, 429, our key refused, the provider not configured here), which is logged: asking again later can
/// still stop it.
pub(crate) async fn cancel_request(
    state: &AppState,
    settings: &Settings,
    provider_name: &str,
    cancel_url: &crate::fal::ProviderUrl,
    job_id: Uuid,
) -> bool {
    let asked = match ProviderKind::of(provider_name) {
        Some(ProviderKind::Replicate) => match state.replicate(settings) {
            Some(replicate) => replicate.cancel(cancel_url).await.map(|_| ()),
            None => {
                tracing::warn!(%job_id, "a Replicate request cannot be cancelled: Replicate is not configured");
                return false;
            }
        },
        _ => state.fal(settings).cancel(cancel_url).await.map(|_| ()),
    };
    match asked {
        Ok(()) => true,
        // A 2xx we could not read, or a final refusal of this request: asking again changes nothing.
        Err(e) if matches!(e, ProviderError::Decode(_)) || e.rejects_the_request() => true,
        Err(e) => {
            tracing::warn!(%job_id, error = %e, "the provider's cancel did not go through");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queue_call_still_running_at_the_deadline_is_a_provider_timeout() {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        let never = std::future::pending::<Result<(), ProviderError>>();
        let cut = within_deadline(deadline, never).await;
        assert!(matches!(cut, Err(ProviderError::Timeout)), "{cut:?}");
        assert!(tokio::time::Instant::now() >= deadline);
        let answered = within_deadline(deadline, async { Ok::<_, ProviderError>(7) }).await;
        assert_eq!(answered.ok(), Some(7));
    }

    #[test]
    fn provider_calls_leave_the_completion_its_reserve() {
        let now = tokio::time::Instant::now();
        let s = Duration::from_secs;
        // The default bounds: 25 s of sync run in a 29 s invocation.
        assert_eq!(
            provider_deadline(now + s(25), Some(now + s(29))),
            now + s(25)
        );
        // A sync bound the invocation cannot hold, or an invocation that began late.
        assert_eq!(
            provider_deadline(now + s(28), Some(now + s(29))),
            now + s(25)
        );
        assert_eq!(
            provider_deadline(now + s(25), Some(now + s(10))),
            now + s(6)
        );
        assert_eq!(provider_deadline(now + s(25), None), now + s(25));
        // Less left than the reserve: the provider gets no time at all (now, not a moment past the deadline).
        let starved = provider_deadline(now + s(25), Some(now + s(2)));
        assert!(starved >= now && starved <= now + s(1), "{starved:?}");
    }

    fn model() -> ModelRow {
        ModelRow {
            id: Uuid::new_v4(),
            provider_id: Uuid::new_v4(),
            provider_name: "fal".into(),
            model_key: "fal-ai/row".into(),
            modality: "image".into(),
            endpoint_path: None,
            input_defaults: json!({}),
            capabilities: json!({}),
            pricing: None,
            base_url: None,
            sync_base_url: None,
        }
    }

    fn built() -> BuiltInput {
        BuiltInput {
            input: json!({"prompt": "p", "image_url": "https://signed"}),
            generation_mode: "i2i".into(),
            content_mode: "sfw".into(),
            reference_image_url: Some("https://signed".into()),
        }
    }

    #[test]
    fn job_metadata_keeps_the_clients_keys_and_adds_the_servers_copies() {
        let m = model();
        let client = json!({"destination": "character_portrait", "generation_mode": "client's"});
        let meta = job_metadata(
            client.as_object(),
            &m,
            "fal-ai/override",
            &built(),
            0.5,
            true,
        );
        assert_eq!(meta["destination"], "character_portrait");
        assert_eq!(meta["generation_mode"], "i2i", "the server's value wins");
        assert_eq!(meta["model_key"], "fal-ai/override");
        assert_eq!(meta["database_model_key"], "fal-ai/row");
        assert_eq!(meta["is_model_overridden"], true);
        assert_eq!(meta["provider_id"], json!(m.provider_id));
        assert_eq!(meta["input_used"]["prompt"], "p");
        assert_eq!(meta["estimated_cost"], 0.5);
        assert_eq!(meta["reference_image_signed_url"], "https://signed");
    }

    #[test]
    fn a_sync_job_metadata_has_no_signed_reference_url() {
        let m = model();
        let meta = job_metadata(None, &m, "fal-ai/row", &built(), 0.0, false);
        assert_eq!(meta["is_model_overridden"], false);
        assert!(meta.get("reference_image_signed_url").is_none());
        assert!(meta.get("destination").is_none());
    }

    #[test]
    fn endpoint_path_decides_the_route() {
        let (fal, replicate) = (ProviderKind::Fal, ProviderKind::Replicate);
        for p in [fal, replicate] {
            assert_eq!(route_kind(p, None).unwrap(), RouteKind::Sync);
            assert_eq!(route_kind(p, Some("")).unwrap(), RouteKind::Sync);
            assert_eq!(route_kind(p, Some("  ")).unwrap(), RouteKind::Sync);
        }
        assert_eq!(
            route_kind(fal, Some("fal-webhook")).unwrap(),
            RouteKind::Queue
        );
        assert_eq!(
            route_kind(replicate, Some("replicate-webhook")).unwrap(),
            RouteKind::Queue
        );
        for (p, path) in [
            (fal, "replicate-webhook"),
            (replicate, "fal-webhook"),
            (fal, "other"),
        ] {
            assert!(
                matches!(route_kind(p, Some(path)), Err(SubmitError::UnsupportedEndpoint(e)) if e == path),
                "{path}"
            );
        }
    }
}
