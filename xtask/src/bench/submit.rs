//! Submit overhead: the async `POST /fal-image` use case (`submit_generation`, queue model, `#no-webhook`) against
//! its floor, the same writes made directly by a minimal client in the same process: the job and its run in one
//! statement, fal's queue submit, and one statement recording the request in the run and the job's metadata and
//! inserting the usage row — the rows the use case writes, without what it decides (model lookup, input, checks,
//! the open-jobs bound). The two alternate in one loop (ABBA order), so drift of the shared machine hits both alike.

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
    run: RunShape,
    usage: UsageShape,
}

/// The run's columns the use case sets at insert.
struct RunShape {
    provider_id: Uuid,
    provider_name: String,
    model_key: String,
    webhook_auth: String,
    destination: Option<String>,
    post_steps: Vec<String>,
}

/// The usage row's columns.
struct UsageShape {
    request_type: String,
    endpoint_path: String,
    cost_usd: f64,
    provider_metadata: Value,
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
    let result = submission::submit_generation(&ctx.state, &settings, ctx.user, req, None, None)
        .await
        .map_err(|e| anyhow::anyhow!("submit_generation failed: {e}"))?;
    let elapsed = ms(started.elapsed());
    let Submitted::Queued { job_id, .. } = result.answer else {
        bail!("the async model did not queue");
    };
    close(raw, job_id).await?;
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
        let run = raw
            .query_one(
                "SELECT provider_id, provider_name, model_key, webhook_auth, destination, post_steps
                   FROM public.job_runs WHERE job_id = $1",
                &[&job_id],
            )
            .await?;
        let usage = raw
            .query_one(
                "SELECT request_type, endpoint_path, cost_usd::float8, provider_metadata
                   FROM public.api_usage_logs WHERE job_id = $1",
                &[&job_id],
            )
            .await?;
        *shape = Some(JobShape {
            job_type: row.get(0),
            quality: row.get(1),
            format: row.get(2),
            api_model_id: row.get(3),
            input: metadata.get("input_used").cloned().unwrap_or(json!({})),
            metadata,
            run: RunShape {
                provider_id: run.get(0),
                provider_name: run.get(1),
                model_key: run.get(2),
                webhook_auth: run.get(3),
                destination: run.get(4),
                post_steps: run.get(5),
            },
            usage: UsageShape {
                request_type: usage.get(0),
                endpoint_path: usage.get(1),
                cost_usd: usage.get(2),
                provider_metadata: usage.get(3),
            },
        });
    }
    Ok(elapsed)
}

/// The same writes, done directly: INSERT the job and its run, POST fal's queue, record the request and the usage.
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
    let run = &shape.run;
    let row = raw
        .query_typed_one(
            "WITH j AS (
                 INSERT INTO public.jobs (user_id, job_type, original_prompt, status, started_at, quality,
                                          api_model_id, model_type, format, metadata)
                 VALUES ($1, $2, $3, 'queued', now(), $4, $5, 'sdxl', $6, $7)
                 RETURNING id
             )
             INSERT INTO public.job_runs (job_id, user_id, provider_id, provider_name, model_key, webhook_auth,
                                          destination, post_steps, api_model_id, format)
             SELECT id, $1, $8, $9, $10, $11, $12, $13, $5, $6 FROM j
             RETURNING job_id",
            &[
                (&ctx.user, Type::UUID),
                (&shape.job_type, Type::TEXT),
                (&prompt, Type::TEXT),
                (&shape.quality, Type::TEXT),
                (&shape.api_model_id, Type::UUID),
                (&shape.format, Type::TEXT),
                (&shape.metadata, Type::JSONB),
                (&run.provider_id, Type::UUID),
                (&run.provider_name, Type::TEXT),
                (&run.model_key, Type::TEXT),
                (&run.webhook_auth, Type::TEXT),
                (&run.destination, Type::TEXT),
                (&run.post_steps, Type::TEXT_ARRAY),
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
    let request = |k: &str| answer[k].as_str().map(str::to_owned);
    let usage = &shape.usage;
    let zero = 0i32;
    raw.query_typed(
        "WITH run AS (
             UPDATE public.job_runs
                SET request_id = $2, gateway_request_id = $3, status_url = $4, response_url = $5, cancel_url = $6
              WHERE job_id = $1
         ), copy AS (
             UPDATE public.jobs SET metadata = coalesce(metadata, '{}'::jsonb) || jsonb_build_object(
                 'fal_request_id', $2::text, 'fal_gateway_request_id', $3::text, 'fal_status_url', $4::text,
                 'fal_response_url', $5::text, 'fal_cancel_url', $6::text)
              WHERE id = $1
         )
         INSERT INTO public.api_usage_logs (job_id, provider_id, model_id, user_id, request_type, endpoint_path,
             request_payload, cost_usd, response_time_ms, provider_metadata)
         VALUES ($1, $7, $8, $9, $10, $11, $12, $13::float8::numeric(10,6), $14, $15)",
        &[
            (&job_id, Type::UUID),
            (&request("request_id"), Type::TEXT),
            (&request("gateway_request_id"), Type::TEXT),
            (&request("status_url"), Type::TEXT),
            (&request("response_url"), Type::TEXT),
            (&request("cancel_url"), Type::TEXT),
            (&run.provider_id, Type::UUID),
            (&shape.api_model_id, Type::UUID),
            (&ctx.user, Type::UUID),
            (&usage.request_type, Type::TEXT),
            (&usage.endpoint_path, Type::TEXT),
            (&input, Type::JSONB),
            (&usage.cost_usd, Type::FLOAT8),
            (&zero, Type::INT4),
            (&usage.provider_metadata, Type::JSONB),
        ],
    )
    .await?;
    let elapsed = ms(started.elapsed());
    close(raw, job_id).await?;
    Ok(elapsed)
}

/// Closes a measured job and its run (untimed), as the functions' cancel does, so that the user's open runs —
/// which every submission counts against its bound — stay as few as a real user's, not one more per iteration.
async fn close(raw: &tokio_postgres::Client, job_id: Uuid) -> anyhow::Result<()> {
    raw.execute(
        "WITH job AS (
             UPDATE public.jobs SET status = 'cancelled', completed_at = now() WHERE id = $1 RETURNING id
         )
         UPDATE public.job_runs SET closed_at = now() WHERE job_id IN (SELECT id FROM job)",
        &[&job_id],
    )
    .await?;
    Ok(())
}
