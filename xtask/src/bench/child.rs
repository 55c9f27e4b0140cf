//! The measuring process: started by `cargo xtask bench` as `xtask bench --plan <file>` (the release build of
//! xtask in a full run, so the in-process figures are measured on optimised code), with the stack's environment
//! and `FAL_WEBHOOK_URL` naming the capture listener. Measures figures 1–5 and writes them to the plan's `out`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gen_pipeline::{AppState, Settings};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::capture::{self, Capture, Delivery};
use super::deliveries::{self, DeliveryResult};
use super::init::{self, InitSamples};
use super::memory::{self, MemorySamples};
use super::submit::{self, SubmitSamples};
use super::transfer::{self, TransferSamples};

/// How long the emulator may take to deliver a job's webhook (it waits 50 ms by default).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the orchestrating process hands the measuring one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub smoke: bool,
    /// Where the function binaries are (release or debug).
    pub bin_dir: PathBuf,
    pub out: PathBuf,
    pub logs: PathBuf,
    /// The functions' settings from the stack (AWS endpoint, credentials, secret id, buckets, media policy).
    pub function_env: Vec<(String, String)>,
    pub sizes: Sizes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sizes {
    pub init_starts: usize,
    pub submit_iterations: usize,
    pub transfer_bytes: u64,
    pub transfer_reps: usize,
    pub memory_bytes: u64,
    pub memory_reps: usize,
    pub jobs: usize,
    pub deliveries_per_job: usize,
    pub in_flight: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            init_starts: 25,
            submit_iterations: 200,
            transfer_bytes: 256 << 20,
            transfer_reps: 3,
            memory_bytes: 1 << 30,
            memory_reps: 3,
            jobs: 200,
            deliveries_per_job: 5,
            in_flight: 50,
        }
    }

    pub fn smoke() -> Self {
        Sizes {
            init_starts: 3,
            submit_iterations: 10,
            transfer_bytes: 8 << 20,
            transfer_reps: 1,
            memory_bytes: 16 << 20,
            memory_reps: 1,
            jobs: 10,
            deliveries_per_job: 2,
            in_flight: 5,
        }
    }
}

/// Figures 1–5, raw samples; a figure that failed is absent and its error is in `errors`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Measured {
    pub init: Option<BTreeMap<String, InitSamples>>,
    pub submit: Option<SubmitSamples>,
    pub transfer: Option<TransferSamples>,
    pub memory: Option<MemorySamples>,
    pub deliveries: Option<DeliveryResult>,
    pub seconds: BTreeMap<String, f64>,
    pub errors: BTreeMap<String, String>,
}

/// Everything a figure needs: the use cases' state (as the functions build it), the capture listener, a user.
pub struct Ctx {
    pub plan: Plan,
    pub state: Arc<AppState>,
    pub settings: Settings,
    pub capture: Capture,
    pub user: Uuid,
    pub db: tokio_postgres::Client,
    pub database_url: String,
    pub async_model_id: String,
    pub async_model_key: String,
    pub emulator_url: String,
    pub fal_key: String,
    pub webhook_secret: String,
    /// `FAL_WEBHOOK_URL` of this process: the capture listener.
    pub webhook_url: String,
}

/// A queued job and the signed delivery the emulator made for it.
pub struct QueuedJob {
    pub job_id: Uuid,
    pub delivery: Delivery,
}

impl Ctx {
    /// Submits an async generation with `directives` and waits for its delivery.
    pub async fn queued_job(&self, directives: &str) -> anyhow::Result<QueuedJob> {
        let (job_id, request_id) = self.submit(directives).await?;
        let delivery = self.capture.wait(&request_id, DELIVERY_TIMEOUT).await?;
        Ok(QueuedJob { job_id, delivery })
    }

    pub async fn submit(&self, directives: &str) -> anyhow::Result<(Uuid, String)> {
        capture::submit_queued(
            &self.state,
            &self.settings,
            self.user,
            &self.async_model_id,
            directives,
        )
        .await
    }

    async fn result_key(&self, job_id: Uuid) -> anyhow::Result<String> {
        let row = self
            .db
            .query_one(
                "SELECT temp_storage_path FROM public.workspace_assets WHERE job_id = $1 AND asset_index = 0",
                &[&job_id],
            )
            .await
            .with_context(|| format!("no asset for job {job_id}"))?;
        Ok(row.get(0))
    }

    /// Size of the job's stored result.
    pub async fn result_size(&self, job_id: Uuid) -> anyhow::Result<u64> {
        let key = self.result_key(job_id).await?;
        let meta = self
            .state
            .storage
            .head(&self.settings.config.workspace_bucket, &key)
            .await?
            .with_context(|| format!("object {key} is missing"))?;
        Ok(meta.size)
    }

    /// Deletes the job's stored result, so large results do not pile up in the S3 emulator's memory.
    pub async fn delete_result(&self, job_id: Uuid) -> anyhow::Result<()> {
        let key = self.result_key(job_id).await?;
        self.state
            .storage
            .delete(&self.settings.config.workspace_bucket, &key)
            .await?;
        Ok(())
    }
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set (the bench passes the stack's environment)"))
}

pub async fn run(plan_path: &Path) -> anyhow::Result<()> {
    let plan: Plan = serde_json::from_slice(
        &std::fs::read(plan_path)
            .with_context(|| format!("cannot read {}", plan_path.display()))?,
    )?;
    let webhook_url = var("FAL_WEBHOOK_URL")?;
    let capture_addr: SocketAddr = url::Url::parse(&webhook_url)?
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .context("FAL_WEBHOOK_URL has no address")?;
    let capture = Capture::start(capture_addr).await?;
    let state = Arc::new(AppState::from_env().await?);
    let settings = state.settings().await?;
    let database_url = var("DATABASE_URL")?;
    let db = gen_pipeline::db::connect(&database_url).await?;
    let user = Uuid::new_v4();
    gen_pipeline::db::users::ensure(&db, user).await?;
    let ctx = Ctx {
        state,
        settings,
        capture,
        user,
        db,
        database_url,
        async_model_id: var("ASYNC_MODEL_ID")?,
        async_model_key: var("ASYNC_MODEL_KEY")?,
        emulator_url: var("FAL_EMULATOR_URL")?,
        fal_key: var("FAL_KEY")?,
        webhook_secret: var("FAL_WEBHOOK_SECRET")?,
        webhook_url,
        plan,
    };
    let sizes = ctx.plan.sizes.clone();
    let mut m = Measured::default();
    let started = Instant::now();
    let say = |msg: String| println!("[bench {:>6.1}s] {msg}", started.elapsed().as_secs_f64());

    // A size of 0 skips a figure (for profiling one figure with a hand-written plan).
    if sizes.init_starts > 0 {
        say(format!(
            "cold init: {} starts of each function",
            sizes.init_starts
        ));
        m.init = record(&mut m, "init", init::measure(&ctx.plan, sizes.init_starts)).await;
    }
    if sizes.submit_iterations > 0 {
        say(format!(
            "submit overhead: {} use-case/floor pairs",
            sizes.submit_iterations
        ));
        m.submit = record(
            &mut m,
            "submit",
            submit::measure(&ctx, sizes.submit_iterations),
        )
        .await;
    }
    if sizes.transfer_reps > 0 {
        say(format!(
            "transfer: {} MiB x {} repetitions",
            sizes.transfer_bytes >> 20,
            sizes.transfer_reps
        ));
        m.transfer = record(
            &mut m,
            "transfer",
            transfer::measure(&ctx, sizes.transfer_bytes, sizes.transfer_reps),
        )
        .await;
    }
    if sizes.memory_reps > 0 {
        say(format!(
            "memory: fal-webhook moving {} MiB, {} processes",
            sizes.memory_bytes >> 20,
            sizes.memory_reps
        ));
        let webhook_bin = ctx.plan.bin_dir.join("fal-webhook");
        m.memory = record(
            &mut m,
            "memory",
            memory::measure(&ctx, &webhook_bin, sizes.memory_bytes, sizes.memory_reps),
        )
        .await;
    }
    if sizes.jobs > 0 && sizes.deliveries_per_job > 0 && sizes.in_flight > 0 {
        say(format!(
            "deliveries: {} jobs x {} deliveries, {} in flight",
            sizes.jobs, sizes.deliveries_per_job, sizes.in_flight
        ));
        m.deliveries = record(
            &mut m,
            "deliveries",
            deliveries::measure(&ctx, sizes.jobs, sizes.deliveries_per_job, sizes.in_flight),
        )
        .await;
    }
    say("measurements done".into());
    std::fs::write(&ctx.plan.out, serde_json::to_vec_pretty(&m)?)
        .with_context(|| format!("cannot write {}", ctx.plan.out.display()))?;
    Ok(())
}

/// Runs one figure, timing it; a failure is recorded (and printed) instead of ending the run.
async fn record<T>(
    m: &mut Measured,
    name: &str,
    figure: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    let started = Instant::now();
    let result = figure.await;
    m.seconds
        .insert(name.to_owned(), started.elapsed().as_secs_f64());
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("bench: {name} failed: {e:#}");
            m.errors.insert(name.to_owned(), format!("{e:#}"));
            None
        }
    }
}
