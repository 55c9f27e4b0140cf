//! Submit overhead: the async `POST /fal-image` use case (`submit_generation`, queue model, `#no-webhook`) against
//! its floor, the same INSERT, fal queue submit and UPDATE made directly by a minimal client in the same process.
//! The two alternate in one loop (ABBA order), so drift of the shared machine hits both alike.

use std::time::Instant;

use anyhow::{Context, bail};
use gen_pipeline::db::Type;
use gen_pipeline::submission::{self, Submitted};
use gen_pipeline::webhook_auth::job_token;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::capture;
use super::ctx::Ctx;
use super::stats::ms;

/// Iterations run before sampling: pools, the secret cache and connections warm up.
const WARMUP: usize = 5;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SubmitSamples {
    pub use_case_ms: Vec<f64>,
    pub floor_ms: Vec<f64>,
    /// use case / floor of each iteration.
    pub ratio: Vec<f64>,
}

/// What the floor writes: the columns of the use case's own row, so both INSERTs carry the same data.
struct JobShape {
    job_type: String,
    quality: String,
    format: String,
    api_model_id: Uuid,
    metadata: Value,
    input: Value,
}

pub async fn measure(ctx: &Ctx, iterations: usize) -> anyhow::Result<SubmitSamples> {
    let raw = gen_pipeline::db::connect(&ctx.database_url)
        .await
        .context("floor: cannot connect to Postgres")?;
    let http = gen_pipeline::state::http_client()?;
    let mut shape: Option<JobShape> = None;
    let mut out = SubmitSamples::default();
    for i in 0..WARMUP + iterations {
        let (uc, floor) = if i % 4 == 0 || i % 4 == 3 {
            let uc = use_case(ctx, &raw, &mut shape).await?;
            let floor = floor(ctx, &raw, &http, shape.as_ref()).await?;
            (uc, floor)
        } else {
            let floor = floor(ctx, &raw, &http, shape.as_ref()).await?;
            let uc = use_case(ctx, &raw, &mut shape).await?;
            (uc, floor)
        };
        if i >= WARMUP {
            out.use_case_ms.push(uc);
            out.floor_ms.push(floor);
            out.ratio.push(uc / floor);
        }
    }
    Ok(out)
}

/// One `submit_generation`, as the handler calls it (settings from the cache, then the use case).
async fn use_case(
    ctx: &Ctx,
    raw: &tokio_postgres::Client,
    shape: &mut Option<JobShape>,
) -> anyhow::Result<f64> {
    let req = capture::queue_request(&ctx.async_model_id, "bench submit", "#no-webhook")?;
    let started = Instant::now();
    let settings = ctx.state.settings().await?;
    let result = submission::submit_generation(&ctx.state, &settings, ctx.user, req, None)
        .await
        .map_err(|e| anyhow::anyhow!("submit_generation failed: {e}"))?;
    let elapsed = ms(started.elapsed());
    let Submitted::Queued { job_id, .. } = result.answer else {
        bail!("the async model did not queue");
    };
    if shape.is_none() {
        let row = raw
            .query_one(
                "SELECT job_type, quality, format, api_model_id, metadata FROM public.jobs WHERE id = $1",
                &[&job_id],
            )
            .await?;
        let mut metadata: Value = row.get(4);
        // As the use case INSERTs it: the fal_* keys are added by its UPDATE.
        if let Some(m) = metadata.as_object_mut() {
            m.retain(|k, _| !k.starts_with("fal_"));
        }
        *shape = Some(JobShape {
            job_type: row.get(0),
            quality: row.get(1),
            format: row.get(2),
            api_model_id: row.get(3),
            input: metadata.get("input_used").cloned().unwrap_or(json!({})),
            metadata,
        });
    }
    Ok(elapsed)
}

/// The same three steps, done directly: INSERT the job, POST fal's queue, UPDATE the job's metadata.
async fn floor(
    ctx: &Ctx,
    raw: &tokio_postgres::Client,
    http: &reqwest::Client,
    shape: Option<&JobShape>,
) -> anyhow::Result<f64> {
    let Some(shape) = shape else {
        // The first iteration runs the use case first and learns the row's shape.
        bail!("floor run before the use case");
    };
    let prompt = format!("bench floor {} #no-webhook", Uuid::new_v4().simple());
    let mut input = shape.input.clone();
    input["prompt"] = json!(prompt);
    let started = Instant::now();
    let row = raw
        .query_typed_one(
            "INSERT INTO public.jobs (user_id, job_type, original_prompt, status, started_at, quality,
                                      api_model_id, model_type, format, metadata)
             VALUES ($1, $2, $3, 'queued', now(), $4, $5, 'sdxl', $6, $7)
             RETURNING id",
            &[
                (&ctx.user, Type::UUID),
                (&shape.job_type, Type::TEXT),
                (&prompt, Type::TEXT),
                (&shape.quality, Type::TEXT),
                (&shape.api_model_id, Type::UUID),
                (&shape.format, Type::TEXT),
                (&shape.metadata, Type::JSONB),
            ],
        )
        .await?;
    let job_id: Uuid = row.get(0);
    let mut webhook = url::Url::parse(&ctx.webhook_url)?;
    webhook
        .query_pairs_mut()
        .append_pair("job_id", &job_id.to_string())
        .append_pair(
            "token",
            &job_token(&SecretString::from(ctx.webhook_secret.as_str()), job_id),
        );
    let mut url = url::Url::parse(&format!(
        "{}/queue/{}",
        ctx.emulator_url, ctx.async_model_key
    ))?;
    url.query_pairs_mut()
        .append_pair("fal_webhook", webhook.as_str());
    let answer: Value = http
        .post(url)
        .header("authorization", format!("Key {}", ctx.fal_key))
        .json(&input)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    raw.query_typed(
        "UPDATE public.jobs SET metadata = coalesce(metadata, '{}'::jsonb) || $2 WHERE id = $1",
        &[
            (&job_id, Type::UUID),
            (
                &json!({
                    "fal_request_id": answer["request_id"],
                    "fal_gateway_request_id": answer["gateway_request_id"],
                    "fal_status_url": answer["status_url"],
                    "fal_response_url": answer["response_url"],
                    "fal_cancel_url": answer["cancel_url"],
                }),
                Type::JSONB,
            ),
        ],
    )
    .await?;
    Ok(ms(started.elapsed()))
}
