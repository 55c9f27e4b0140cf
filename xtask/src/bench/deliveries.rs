//! Delivery throughput: N jobs, each delivered K times (its real signed delivery, replayed), W in flight, through
//! the webhook handler's steps (settings, secret + signature check, `complete_from_webhook`). Each worker has its
//! own `AppState`, as each concurrent delivery has its own Lambda instance; a delivery answered "retry" (503) is
//! retried as fal does. Afterwards every job is checked for duplicates: assets, objects and usage rows per job.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gen_pipeline::AppState;
use gen_pipeline::webhook::{self, Delivery as Effect, DeliveryError};
use gen_pipeline::webhook_auth::{self, ProviderSignature, UrlCredential, Verified};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::capture::Delivery;
use super::ctx::Ctx;
use super::stats::ms;

/// fal's emulator pauses this long between tries (`FAL_EMULATOR_RETRY_MS` of the stack).
const RETRY_PAUSE: Duration = Duration::from_millis(300);
const MAX_ATTEMPTS: u32 = 10;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DeliveryResult {
    pub jobs: usize,
    pub deliveries_per_job: usize,
    pub in_flight: usize,
    pub elapsed_ms: f64,
    pub deliveries_per_s: f64,
    /// Latency of each delivery until its 2xx answer, retries included.
    pub latency_ms: Vec<f64>,
    /// Answers by kind: completed, skipped, failed, retry (503), refused.
    pub answers: BTreeMap<String, usize>,
    /// Jobs not `completed` with exactly one asset afterwards.
    pub incomplete_jobs: usize,
    /// Surplus rows and objects: Σ over jobs of (assets−1)⁺ + (objects−1)⁺ + (usage rows−1)⁺.
    pub duplicates: usize,
    pub duplicate_assets: usize,
    pub duplicate_objects: usize,
    pub duplicate_usage_rows: usize,
}

/// `jobs` jobs, each delivered `per_job` times by `in_flight` workers; then the duplicate count.
pub async fn measure(
    ctx: &Ctx,
    jobs: usize,
    per_job: usize,
    in_flight: usize,
) -> anyhow::Result<DeliveryResult> {
    let captured = captured_deliveries(ctx, jobs).await?;
    // Job-major order: a job's duplicates are in flight together, the case the completion claim is for.
    let queue = Arc::new(Queue {
        work: captured
            .iter()
            .flat_map(|(id, d)| std::iter::repeat_n((*id, d.clone()), per_job))
            .collect(),
        next: AtomicUsize::new(0),
        answers: Mutex::new(BTreeMap::new()),
        latencies: Mutex::new(Vec::new()),
    });
    let mut workers = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let state = AppState::from_env().await?;
        // Warm: the secret and fal's keys are fetched once per instance, not inside the measured window.
        warm(&state, &captured[0].1).await?;
        workers.push(state);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for state in workers {
        tasks.spawn(queue.clone().work_through(state));
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let elapsed = started.elapsed();
    let mut result = DeliveryResult {
        jobs,
        deliveries_per_job: per_job,
        in_flight,
        elapsed_ms: ms(elapsed),
        deliveries_per_s: queue.work.len() as f64 / elapsed.as_secs_f64(),
        latency_ms: std::mem::take(&mut *queue.latencies.lock().await),
        answers: std::mem::take(&mut *queue.answers.lock().await),
        ..DeliveryResult::default()
    };
    count_duplicates(ctx, &captured, &mut result).await?;
    Ok(result)
}

/// Submits every job first, then collects their deliveries: the emulator delivers each within ~50 ms.
async fn captured_deliveries(ctx: &Ctx, jobs: usize) -> anyhow::Result<Vec<(Uuid, Delivery)>> {
    let mut submitted = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        submitted.push(ctx.submit("").await?);
    }
    let mut captured = Vec::with_capacity(jobs);
    for (job_id, request_id) in submitted {
        let delivery = ctx
            .capture
            .wait(&request_id, Duration::from_secs(30))
            .await?;
        captured.push((job_id, delivery));
    }
    Ok(captured)
}

/// The deliveries the workers share, and what they found.
struct Queue {
    work: Vec<(Uuid, Delivery)>,
    next: AtomicUsize,
    answers: Mutex<BTreeMap<String, usize>>,
    latencies: Mutex<Vec<f64>>,
}

impl Queue {
    /// One worker: takes the next delivery until none is left, retrying a "retry" (503) answer as fal does.
    async fn work_through(self: Arc<Self>, state: AppState) -> anyhow::Result<()> {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some((job_id, delivery)) = self.work.get(i) else {
                return Ok(());
            };
            let t = Instant::now();
            let mut attempt = 1;
            let kind = loop {
                let kind = deliver(&state, *job_id, delivery).await?;
                *self
                    .answers
                    .lock()
                    .await
                    .entry(kind.to_owned())
                    .or_default() += 1;
                if kind != "retry" || attempt >= MAX_ATTEMPTS {
                    break kind;
                }
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            };
            if kind == "retry" {
                bail!("a delivery of job {job_id} still answered 503 after {MAX_ATTEMPTS} tries");
            }
            self.latencies.lock().await.push(ms(t.elapsed()));
        }
    }
}

async fn warm(state: &AppState, delivery: &Delivery) -> anyhow::Result<()> {
    let settings = state.settings().await?;
    authenticate(state, &settings, delivery)
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("warm-up delivery refused: {e}"))
}

/// The handler's authentication of a captured delivery: its URL's credential and fal's signature.
async fn authenticate(
    state: &AppState,
    settings: &gen_pipeline::Settings,
    d: &Delivery,
) -> Result<Verified, webhook_auth::AuthError> {
    let (job_id, token, secret) = (
        d.query_param("job_id"),
        d.query_param("token"),
        d.query_param("secret"),
    );
    let credential = UrlCredential {
        job_id: job_id.as_deref(),
        token: token.as_deref(),
        secret: secret.as_deref(),
    };
    let signature = ProviderSignature::Fal(d.signature_headers());
    webhook_auth::authenticate(state, settings, credential, signature, &d.body).await
}

/// The handler's steps for one delivery; returns the kind of answer fal would get.
async fn deliver(state: &AppState, job_id: Uuid, d: &Delivery) -> anyhow::Result<&'static str> {
    let Ok(settings) = state.settings().await else {
        return Ok("retry");
    };
    let authenticated = match authenticate(state, &settings, d).await {
        Ok(a) => a,
        Err(e) => bail!("a real delivery was refused: {e}"),
    };
    let job = d.query_param("job_id");
    match webhook::complete_from_webhook(
        state,
        &settings,
        authenticated,
        webhook::DeliveryUrl {
            job_id: job.as_deref(),
            sync_route: false,
        },
        d.signature_headers().map(|h| h.request_id),
        &d.body,
    )
    .await
    {
        Ok((Effect::Completed { .. }, _)) => Ok("completed"),
        Ok((Effect::Skipped, _)) => Ok("skipped"),
        // Every job here succeeded at the emulator: a delivery that fails its job is a fault, not an answer.
        Ok((Effect::Failed { .. }, _)) => bail!("a delivery failed job {job_id}"),
        Err(DeliveryError::Busy | DeliveryError::Transient(_)) => Ok("retry"),
        Err(e) => bail!("delivery of job {job_id} refused: {e}"),
    }
}

async fn count_duplicates(
    ctx: &Ctx,
    jobs: &[(Uuid, Delivery)],
    result: &mut DeliveryResult,
) -> anyhow::Result<()> {
    let db = gen_pipeline::db::connect(&ctx.database_url).await?;
    let ids: Vec<Uuid> = jobs.iter().map(|(id, _)| *id).collect();
    let rows = db
        .query(
            "SELECT j.id, j.status,
                    (SELECT count(*) FROM public.workspace_assets a WHERE a.job_id = j.id),
                    (SELECT count(*) FROM public.api_usage_logs u WHERE u.job_id = j.id)
             FROM public.jobs j WHERE j.id = ANY($1)",
            &[&ids],
        )
        .await
        .context("duplicate check query")?;
    if rows.len() != ids.len() {
        bail!(
            "{} of {} jobs are missing",
            ids.len() - rows.len(),
            ids.len()
        );
    }
    let objects = objects_per_job(ctx).await?;
    let surplus = |n: i64| n.saturating_sub(1).max(0) as usize;
    for row in rows {
        let id: Uuid = row.get(0);
        let status: Option<String> = row.get(1);
        let assets: i64 = row.get(2);
        let usage: i64 = row.get(3);
        let objs = objects.get(&id).copied().unwrap_or(0);
        result.duplicate_assets += surplus(assets);
        result.duplicate_usage_rows += surplus(usage);
        result.duplicate_objects += surplus(objs);
        if status.as_deref() != Some("completed") || assets != 1 || objs != 1 {
            result.incomplete_jobs += 1;
        }
    }
    result.duplicates =
        result.duplicate_assets + result.duplicate_objects + result.duplicate_usage_rows;
    Ok(())
}

/// Objects of the bench user's prefix, counted per job (results are `<user>/<job>_<index>.<ext>`; thumbnails,
/// `<user>/<job>_0.thumb.webp`, are not).
async fn objects_per_job(ctx: &Ctx) -> anyhow::Result<HashMap<Uuid, i64>> {
    let s3 = gen_pipeline::aws::s3(&gen_pipeline::aws::load().await);
    let mut counts = HashMap::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(&ctx.settings.config.workspace_bucket)
            .prefix(format!("{}/", ctx.user))
            .set_continuation_token(token)
            .send()
            .await
            .context("listing the bench user's objects")?;
        for o in page.contents() {
            let name = o
                .key()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default();
            if let Some((job, rest)) = name.split_once('_')
                && rest.chars().next().is_some_and(|c| c.is_ascii_digit())
                && !rest.contains(".thumb.")
                && let Ok(id) = Uuid::parse_str(job)
            {
                *counts.entry(id).or_default() += 1;
            }
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(counts);
        }
    }
}
