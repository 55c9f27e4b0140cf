//! `job_runs`: the server-owned state of a job, one typed row per job. Only the functions write it (RLS on, no
//! client policy, no client grants), so unlike `jobs.metadata` it is what the functions act on.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// How a job's webhook deliveries authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAuth {
    /// Per-job token in the URL: `?job_id=…&token=HMAC-SHA256(secret, job_id)`.
    Token,
    /// The global secret in the URL (`?secret=`): URLs handed to fal before per-job tokens, until those jobs end.
    Secret,
    /// A sync run: no webhook.
    None,
}

impl WebhookAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookAuth::Token => "token",
            WebhookAuth::Secret => "secret",
            WebhookAuth::None => "none",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "token" => WebhookAuth::Token,
            "secret" => WebhookAuth::Secret,
            _ => WebhookAuth::None,
        }
    }
}

/// The provider's request for a queued job: its id and the URLs the provider answered with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderRequest {
    pub request_id: String,
    pub gateway_request_id: Option<String>,
    pub status_url: Option<String>,
    pub response_url: Option<String>,
    pub cancel_url: Option<String>,
}

/// An object in one of our buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
}

/// What post-processing acts on, checked against the caller when the job was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostTargets {
    pub destination: Option<String>,
    pub character_id: Option<Uuid>,
    pub scene_id: Option<Uuid>,
    pub storyboard_clip_id: Option<Uuid>,
}

/// One `job_runs` row, with its provider's configured hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub provider_id: Option<Uuid>,
    pub provider_name: String,
    pub model_key: String,
    pub webhook_auth: WebhookAuth,
    pub request: Option<ProviderRequest>,
    pub reference: Option<ObjectRef>,
    pub targets: PostTargets,
    /// The post-processing steps decided at submission.
    pub post_steps: Vec<String>,
    pub result_key: Option<String>,
    pub thumbnail_key: Option<String>,
    /// `api_providers.base_url` and `sync_base_url`: the only hosts the provider's key is sent to.
    pub provider_hosts: Vec<String>,
    /// When the submission wrote the run: the server's clock (the owner can rewrite `jobs.started_at`).
    pub created_at: DateTime<Utc>,
    /// When the functions ended the run (V11): its job is never completed after that, whatever its status says.
    pub closed_at: Option<DateTime<Utc>>,
    /// When its queue submission failed and it fell back to the sync route (V15): a queue request the provider
    /// may have accepted all the same is abandoned.
    pub fell_back_at: Option<DateTime<Utc>>,
    /// The job's format at submission (V19; `jobs.format` is its owner's to rewrite). `None` for a run written
    /// before V19 and not open when it was applied, or written by the previous release while it was.
    pub format: Option<String>,
}

/// The `job_runs` columns read with a job (`r` is `job_runs`, `p` its provider), in [`from_row`]'s order.
pub(crate) const COLUMNS: &str = "r.job_id, r.provider_id, r.provider_name, r.model_key, r.webhook_auth,
    r.request_id, r.gateway_request_id, r.status_url, r.response_url, r.cancel_url, r.reference_bucket,
    r.reference_key, r.destination, r.character_id, r.scene_id, r.storyboard_clip_id, r.result_key,
    r.thumbnail_key, p.base_url, p.sync_base_url, r.post_steps, r.created_at, r.closed_at, r.fell_back_at, r.format";

/// The joins that go with [`COLUMNS`], after `FROM public.jobs j`.
pub(crate) const JOINS: &str = "LEFT JOIN public.job_runs r ON r.job_id = j.id
    LEFT JOIN public.api_providers p ON p.id = r.provider_id";

/// The run in `row` starting at column `at`; `None` for a job without one (jobs that ended before the port).
pub(crate) fn from_row(row: &tokio_postgres::Row, at: usize) -> Option<JobRun> {
    let _: Uuid = row.get::<_, Option<Uuid>>(at)?;
    let s = |i: usize| row.get::<_, Option<String>>(at + i);
    let request = s(5).map(|request_id| ProviderRequest {
        request_id,
        gateway_request_id: s(6),
        status_url: s(7),
        response_url: s(8),
        cancel_url: s(9),
    });
    let reference = match (s(10), s(11)) {
        (Some(bucket), Some(key)) => Some(ObjectRef { bucket, key }),
        _ => None,
    };
    Some(JobRun {
        provider_id: row.get(at + 1),
        provider_name: row.get(at + 2),
        model_key: row.get(at + 3),
        webhook_auth: WebhookAuth::parse(&row.get::<_, String>(at + 4)),
        request,
        reference,
        targets: PostTargets {
            destination: s(12),
            character_id: row.get(at + 13),
            scene_id: row.get(at + 14),
            storyboard_clip_id: row.get(at + 15),
        },
        result_key: s(16),
        thumbnail_key: s(17),
        provider_hosts: [s(18), s(19)].into_iter().flatten().collect(),
        post_steps: row.get(at + 20),
        created_at: row.get(at + 21),
        closed_at: row.get(at + 22),
        fell_back_at: row.get(at + 23),
        format: s(24),
    })
}

/// What the submission writes with the job.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub provider_id: Uuid,
    pub provider_name: String,
    pub model_key: String,
    pub webhook_auth: WebhookAuth,
    pub reference: Option<ObjectRef>,
    pub targets: PostTargets,
    pub post_steps: Vec<String>,
}

/// Records the stored result's keys, in the completing transaction.
pub async fn record_result<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    result_key: &str,
    thumbnail_key: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "UPDATE public.job_runs SET result_key = $2, thumbnail_key = $3 WHERE job_id = $1",
            &[
                (&job_id, Type::UUID),
                (&result_key, Type::TEXT),
                (&thumbnail_key, Type::TEXT),
            ],
        )
        .await?;
    Ok(())
}

/// Records the provider's request of a sync run that registered a webhook (a Replicate prediction its wait saw
/// succeed), before its result is stored: should storing it fail here, the request's delivery or the reconciler
/// (which polls recorded requests) finishes the job. The job's row is locked first, as in [`mark_fell_back`].
/// False when the run is closed or gone.
pub async fn record_sync_request<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    r: &ProviderRequest,
) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "WITH job AS (SELECT id FROM public.jobs WHERE id = $1 FOR UPDATE)
             UPDATE public.job_runs
                SET request_id = $2, gateway_request_id = $3, status_url = $4, response_url = $5, cancel_url = $6
              WHERE job_id IN (SELECT id FROM job) AND closed_at IS NULL
             RETURNING 1",
            &[
                (&job_id, Type::UUID),
                (&r.request_id, Type::TEXT),
                (&r.gateway_request_id, Type::TEXT),
                (&r.status_url, Type::TEXT),
                (&r.response_url, Type::TEXT),
                (&r.cancel_url, Type::TEXT),
            ],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Records that the job's queue submission failed and it falls back to the sync route. The job's row is locked
/// first, as by every writer of a job and its run, so that a delivery's failure ([`abandons`]) is ordered with it.
pub async fn mark_fell_back<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "WITH job AS (SELECT id FROM public.jobs WHERE id = $1 FOR UPDATE)
             UPDATE public.job_runs SET fell_back_at = now()
              WHERE job_id IN (SELECT id FROM job) AND fell_back_at IS NULL",
            &[(&job_id, Type::UUID)],
        )
        .await?;
    Ok(())
}

/// Whether the job fell back to the sync route and recorded a request other than `request_id`, or none, while the
/// sync route may still decide it ([`JobRun::sync_may_decide`]): the queue request `request_id` is then abandoned.
/// Read under the job's lock.
pub async fn abandons<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    request_id: &str,
    sync_lifetime: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let secs = sync_lifetime.as_secs_f64();
    let row = client
        .query_typed_opt(
            "SELECT fell_back_at IS NOT NULL AND request_id IS DISTINCT FROM $2
                    AND (request_id IS NOT NULL OR fell_back_at > now() - make_interval(secs => $3))
               FROM public.job_runs WHERE job_id = $1",
            &[
                (&job_id, Type::UUID),
                (&request_id, Type::TEXT),
                (&secs, Type::FLOAT8),
            ],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get::<_, Option<bool>>(0) == Some(true)))
}

/// Whether the job has a run (open or closed). A job row without one, where the job was read with one, is not that
/// job: its owner deleted it (the run went with it) and wrote another row with its id.
pub async fn exists<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT 1 FROM public.job_runs WHERE job_id = $1",
            &[(&job_id, Type::UUID)],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Closes the run of a job its owner ended (the status says so), once the provider is done with it or told to
/// stop: from then on it no longer counts against the owner's open jobs, and the job is never completed.
///
/// `client` must commit each statement on its own (a pooled connection, not a transaction): inside a transaction
/// the run's lock would be held while the claim's row is waited for, the order a completing transaction may take
/// the other way round, and the two would deadlock.
///
/// True when this call closed a run with no result: the job ended without one (a run the functions ended, or
/// that a completion closed with its result, is closed already).
pub async fn close<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let closed = client
        .query_typed(
            "UPDATE public.job_runs SET closed_at = now() WHERE job_id = $1 AND closed_at IS NULL
             RETURNING result_key IS NULL",
            &[(&job_id, Type::UUID)],
        )
        .await?;
    // Nobody completes a job whose run is closed: its claim (a failed holder's, its lease ended, kept to count the
    // holders while the job was open) goes too. A statement of its own, so that no lock on the run is held while
    // waiting for the claim's row (a completing transaction takes them the other way round).
    crate::db::claims::clear(client, job_id).await?;
    Ok(closed.first().is_some_and(|r| r.get(0)))
}

impl JobRun {
    /// The request's status, response or cancel URL (`pick`), only when it is on the provider's own hosts (the
    /// provider's key goes with it) and names the run's own request: a run V5 brought over from client-written
    /// metadata may carry another request's URLs.
    pub fn provider_url(
        &self,
        pick: impl Fn(&ProviderRequest) -> Option<&String>,
    ) -> Option<crate::fal::ProviderUrl> {
        let request = self.request.as_ref()?;
        let id = Some(request.request_id.as_str());
        crate::fal::ProviderUrl::of_request(pick(request)?, &self.provider_hosts, id)
    }

    pub fn request_id(&self) -> Option<&str> {
        self.request.as_ref().map(|r| r.request_id.as_str())
    }

    /// After a fallback, whether the sync route may still decide the job: it recorded a request of its own (a
    /// Replicate create that outlived its wait, finished by its webhook or the reconciler), or its run is at most
    /// `sync_lifetime` old. Past that, a fal sync run is over (answered, or its function stopped), and a job still
    /// open has no one else to end it.
    pub fn sync_may_decide(&self, sync_lifetime: Duration) -> bool {
        self.request_id().is_some()
            || self.fell_back_at.is_some_and(|at| {
                chrono::Duration::from_std(sync_lifetime)
                    .is_ok_and(|lifetime| Utc::now() - at < lifetime)
            })
    }
}
