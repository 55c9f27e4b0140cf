//! What every figure of the measuring process works with: the use cases' state as the functions build it, the
//! capture listener that receives the emulator's webhook deliveries, a user of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gen_pipeline::{AppState, Settings};
use uuid::Uuid;

use super::capture::{self, Capture, Delivery};
use super::plan::Plan;

/// How long the emulator may take to deliver a job's webhook (it waits 50 ms by default).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The context of the measuring process, from the stack's environment it was started with; its
    /// `FAL_WEBHOOK_URL` names the capture listener.
    pub async fn from_env(plan: Plan) -> anyhow::Result<Self> {
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
        Ok(Ctx {
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
        })
    }

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
        self.delete_result_in(&self.state.storage, job_id).await
    }

    /// [`Self::delete_result`] on the store the result went to.
    pub async fn delete_result_in(
        &self,
        storage: &gen_pipeline::storage::Storage,
        job_id: Uuid,
    ) -> anyhow::Result<()> {
        let key = self.result_key(job_id).await?;
        storage
            .delete(&self.settings.config.workspace_bucket, &key)
            .await?;
        Ok(())
    }
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .with_context(|| format!("{name} is not set (the bench passes the stack's environment)"))
}
