//! Memory: the peak RSS of the fal-webhook binary while it moves a large result. The binary runs against the
//! bench's runtime API and is served ONE invocation: a function URL event whose body and headers are a real
//! signed delivery of a real queued job, with `?job_id=…&token=…` as fal calls it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::capture::Delivery;
use super::ctx::Ctx;
use super::init;
use super::runtime_api::{RuntimeApi, post_event};
use super::stats::{MIB, ms};
use crate::procfs;
use crate::stack::functions::FAL_WEBHOOK;

/// 1 GiB at the S3 emulator's ~120 MB/s takes ~10 s; this bounds a stuck transfer.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MemorySamples {
    pub bytes: u64,
    /// VmHWM of the process after each invocation.
    pub peak_rss_mib: Vec<f64>,
    /// From the event being served to the response being posted.
    pub invocation_ms: Vec<f64>,
}

/// `reps` fresh processes, each serving one delivery of a fresh job whose result is `bytes` long.
pub async fn measure(
    ctx: &Ctx,
    bin: &Path,
    bytes: u64,
    reps: usize,
) -> anyhow::Result<MemorySamples> {
    let mut out = MemorySamples {
        bytes,
        ..MemorySamples::default()
    };
    for _ in 0..reps {
        let (peak, invocation) = one_invocation(ctx, bin, bytes).await?;
        out.peak_rss_mib.push(peak as f64 / MIB);
        out.invocation_ms.push(invocation);
    }
    Ok(out)
}

/// (VmHWM bytes, invocation ms) of one process serving one delivery.
async fn one_invocation(ctx: &Ctx, bin: &Path, bytes: u64) -> anyhow::Result<(u64, f64)> {
    let job = ctx
        .queued_job(&format!("#media-bytes={bytes} #media-type=video/mp4"))
        .await?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let event = function_url_event(&job.delivery, &request_id)?;
    let api = RuntimeApi::start().await?;
    api.push_event(&request_id, serde_json::to_vec(&event)?);
    let mut child = init::lambda_command(bin, FAL_WEBHOOK, &ctx.plan, &api, "memory")?
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = init::function_pid(&child)?;
    let served = tokio::select! {
        at = api.first_next(init::INIT_TIMEOUT) => at?,
        status = child.wait() => bail!("fal-webhook exited during init ({status:?}); see {}", ctx.plan.logs.display()),
    };
    let posted = tokio::select! {
        p = api.posted(&request_id, INVOCATION_TIMEOUT) => p,
        status = child.wait() => Err(anyhow::anyhow!("fal-webhook exited during the invocation ({status:?})")),
    };
    let invocation_ms = ms(served.elapsed());
    let peak = procfs::peak_rss_bytes(pid);
    let _ = child.kill().await;
    let posted = posted?;
    let peak = peak?;
    if posted.kind != "response" {
        bail!(
            "fal-webhook posted an {}: {}",
            posted.kind,
            String::from_utf8_lossy(&posted.body)
        );
    }
    let answer: Value = serde_json::from_slice(&posted.body).context("the response is not JSON")?;
    let status_code = answer["statusCode"].as_u64().unwrap_or(0);
    let body = answer["body"].as_str().unwrap_or_default();
    let status = serde_json::from_str::<Value>(body).map(|b| b["status"].clone());
    if status_code != 200 || status.ok() != Some(Value::from("completed")) {
        bail!("fal-webhook answered {status_code}: {body}");
    }
    let stored = ctx.result_size(job.job_id).await?;
    if stored != bytes {
        bail!("the stored result has {stored} bytes, not {bytes}");
    }
    ctx.delete_result(job.job_id).await?;
    Ok((peak, invocation_ms))
}

/// A Lambda function URL event (API Gateway v2 shape) carrying the delivery as fal sent it.
fn function_url_event(d: &Delivery, request_id: &str) -> anyhow::Result<Value> {
    let mut headers = Map::new();
    for (k, v) in &d.headers {
        match headers.get_mut(k) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(v);
            }
            _ => {
                headers.insert(k.clone(), json!(v));
            }
        }
    }
    let body = std::str::from_utf8(&d.body).context("the delivery body is not UTF-8")?;
    let domain = "bench.lambda-url.us-east-1.on.aws";
    Ok(post_event(domain, "/", &d.query, headers, body, request_id))
}
