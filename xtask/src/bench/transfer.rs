//! Transfer efficiency: the webhook's time to move a result from the emulator into S3 (`complete_from_webhook`
//! in-process, with a real job and its real signed delivery) against max(download alone, upload alone) of the same
//! number of bytes. The emulator's media is first throttled to the measured upload rate: with loopback downloads
//! ~15x faster than the S3 emulator accepts, buffering and streaming would look alike; at equal rates streaming
//! takes ~1x and buffer-then-upload ~2x. Diagnostics come with it: the same download and upload run at once but
//! independently (what overlapping costs on this machine), a multipart upload made directly with the SDK with its
//! CompleteMultipartUpload timed apart (that call can only follow the last byte, so no streaming transfer can beat
//! download + completion), and the cores each phase kept busy.

use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use gen_pipeline::media::{self, MediaPolicy};
use gen_pipeline::webhook::{self, Delivery as Effect};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::capture::Delivery;
use super::cpu::{self, CpuUse};
use super::ctx::Ctx;
use super::stats::ms;

const SOURCE_CHUNK: usize = 64 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TransferSamples {
    pub bytes: u64,
    /// The measured upload rate the media was throttled to (bytes per second).
    pub media_rate_bytes_per_s: u64,
    pub upload_ms: Vec<f64>,
    pub download_ms: Vec<f64>,
    pub webhook_ms: Vec<f64>,
    /// webhook / max(download, upload) of each repetition.
    pub ratio: Vec<f64>,
    /// Diagnostic: the download and an upload of as many bytes run at once, independently.
    pub concurrent_ms: Vec<f64>,
    /// Diagnostic: a direct SDK multipart upload of as many bytes: its parts, and its CompleteMultipartUpload.
    pub sdk_parts_ms: Vec<f64>,
    pub sdk_complete_ms: Vec<f64>,
    /// webhook / (download + completion): against the least any streaming transfer can take.
    pub ratio_to_streaming_floor: Vec<f64>,
    /// Cores busy during each phase of each repetition.
    pub cpu: Vec<PhaseCpu>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PhaseCpu {
    pub rep: usize,
    pub phase: String,
    #[serde(flatten)]
    pub used: CpuUse,
}

pub async fn measure(ctx: &Ctx, bytes: u64, reps: usize) -> anyhow::Result<TransferSamples> {
    let source = source_block();
    // Calibration: the rate S3 (moto) accepts from this process.
    let calibration = upload_alone(ctx, &source, bytes).await?;
    let rate = ((bytes as f64) / (calibration / 1000.0)).max(1.0) as u64;
    let mut out = TransferSamples {
        bytes,
        media_rate_bytes_per_s: rate,
        ..TransferSamples::default()
    };
    let watched = cpu::watched();
    let s3 = gen_pipeline::aws::s3(&gen_pipeline::aws::load().await);
    for rep in 0..reps {
        let job = ctx
            .queued_job(&format!("#media-bytes={bytes} #media-rate={rate}"))
            .await?;
        let url = job
            .delivery
            .media_url()
            .context("the delivery names no media URL")?;
        let (mut up, mut down, mut hook, mut both) = (0.0, 0.0, 0.0, 0.0);
        let (mut parts, mut complete) = (0.0, 0.0);
        // Rotate the order, so none of the phases always runs first (or right after another's cleanup).
        for step in 0..5 {
            let before = cpu::snapshot(&watched);
            let phase = match (rep + step) % 5 {
                0 => {
                    up = upload_alone(ctx, &source, bytes).await?;
                    "upload"
                }
                1 => {
                    down = download_alone(ctx, &url, bytes).await?;
                    "download"
                }
                2 => {
                    hook = through_webhook(ctx, job.job_id, &job.delivery).await?;
                    "webhook"
                }
                3 => {
                    (parts, complete) = sdk_multipart(ctx, &s3, &source, bytes).await?;
                    "sdk-multipart"
                }
                _ => {
                    let (u, d) = tokio::try_join!(
                        upload_alone(ctx, &source, bytes),
                        download_alone(ctx, &url, bytes)
                    )?;
                    both = u.max(d);
                    "concurrent"
                }
            };
            out.cpu.push(PhaseCpu {
                rep,
                phase: phase.to_owned(),
                used: before.until(&cpu::snapshot(&watched)),
            });
        }
        out.upload_ms.push(up);
        out.download_ms.push(down);
        out.webhook_ms.push(hook);
        out.concurrent_ms.push(both);
        out.sdk_parts_ms.push(parts);
        out.sdk_complete_ms.push(complete);
        out.ratio.push(hook / up.max(down));
        out.ratio_to_streaming_floor.push(hook / (down + complete));
    }
    Ok(out)
}

/// 1 MiB of random bytes, handed out as 64 KiB slices without copying: the cheapest possible source.
fn source_block() -> Bytes {
    let mut block = vec![0u8; 1024 * 1024];
    rand::thread_rng().fill_bytes(&mut block);
    Bytes::from(block)
}

fn generated(
    source: &Bytes,
    total: u64,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin + use<> {
    let source = source.clone();
    let chunks = total.div_ceil(SOURCE_CHUNK as u64);
    futures::stream::iter((0..chunks).map(move |i| {
        let start = i * SOURCE_CHUNK as u64;
        let len = (SOURCE_CHUNK as u64).min(total - start) as usize;
        let at = (start as usize) % source.len();
        let at = at.min(source.len() - len);
        Ok(source.slice(at..at + len))
    }))
}

/// `Storage::put_stream` of `bytes` generated bytes: the webhook's upload half, alone.
async fn upload_alone(ctx: &Ctx, source: &Bytes, bytes: u64) -> anyhow::Result<f64> {
    let bucket = &ctx.settings.config.workspace_bucket;
    let key = format!("bench/upload-{}.bin", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let stored = ctx
        .state
        .storage
        .put_stream(
            bucket,
            &key,
            "application/octet-stream",
            generated(source, bytes),
            None,
        )
        .await?;
    let elapsed = ms(started.elapsed());
    ctx.state.storage.delete(bucket, &key).await?;
    if stored.size != bytes {
        bail!("upload stored {} bytes, not {bytes}", stored.size);
    }
    Ok(elapsed)
}

/// A multipart upload made directly with the SDK, parts of `put_stream`'s size with as many in flight: (ms of the
/// parts, ms of CompleteMultipartUpload).
async fn sdk_multipart(
    ctx: &Ctx,
    s3: &aws_sdk_s3::Client,
    source: &Bytes,
    bytes: u64,
) -> anyhow::Result<(f64, f64)> {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    use gen_pipeline::storage::{DEFAULT_PART_SIZE, PARTS_IN_FLIGHT};

    let bucket = ctx.settings.config.workspace_bucket.clone();
    let key = format!("bench/sdk-{}.bin", uuid::Uuid::new_v4().simple());
    let started = Instant::now();
    let created = s3
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await?;
    let upload_id = created.upload_id().context("no upload id")?.to_owned();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut done = Vec::new();
    let mut parts = generated(source, bytes).chunks(DEFAULT_PART_SIZE / SOURCE_CHUNK);
    let mut number = 0;
    while let Some(chunks) = parts.next().await {
        let mut part = bytes::BytesMut::with_capacity(DEFAULT_PART_SIZE);
        for c in chunks {
            part.extend_from_slice(&c?);
        }
        while in_flight.len() >= PARTS_IN_FLIGHT {
            done.push(in_flight.join_next().await.context("no part")???);
        }
        number += 1;
        let request = s3
            .upload_part()
            .bucket(&bucket)
            .key(&key)
            .upload_id(&upload_id)
            .part_number(number)
            .body(ByteStream::from(part.freeze()));
        in_flight.spawn(async move {
            let out = request.send().await?;
            Ok::<_, anyhow::Error>(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                    .build(),
            )
        });
    }
    while let Some(part) = in_flight.join_next().await {
        done.push(part??);
    }
    done.sort_by_key(|p| p.part_number());
    let parts_ms = ms(started.elapsed());
    let completing = Instant::now();
    s3.complete_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(done))
                .build(),
        )
        .send()
        .await?;
    let complete_ms = ms(completing.elapsed());
    ctx.state.storage.delete(&bucket, &key).await?;
    Ok((parts_ms, complete_ms))
}

/// The media fetched with the webhook's own client and policy and read to the end: the download half, alone.
async fn download_alone(ctx: &Ctx, url: &str, bytes: u64) -> anyhow::Result<f64> {
    let policy = MediaPolicy::from_config(&ctx.settings.config);
    let started = Instant::now();
    let mut media = media::fetch(&ctx.state.media_http, &policy, url)
        .await
        .map_err(|e| anyhow::anyhow!("media fetch: {e}"))?;
    let mut read = 0u64;
    while let Some(chunk) = media.body.next().await {
        read += chunk?.len() as u64;
    }
    let elapsed = ms(started.elapsed());
    if read != bytes {
        bail!("downloaded {read} bytes, not {bytes}");
    }
    Ok(elapsed)
}

/// The delivery through `complete_from_webhook`; the stored object is deleted afterwards.
async fn through_webhook(
    ctx: &Ctx,
    job_id: uuid::Uuid,
    delivery: &Delivery,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    // Authentication is measured by the delivery phase; this one times the transfer.
    let (effect, _) = webhook::complete_from_webhook(
        &ctx.state,
        &ctx.settings,
        gen_pipeline::webhook_auth::Verified {
            url: gen_pipeline::webhook_auth::Authenticated::Job(job_id),
            provider: gen_pipeline::provider::ProviderKind::Fal,
        },
        Some(&job_id.to_string()),
        delivery.signature_headers().map(|h| h.request_id),
        &delivery.body,
    )
    .await
    .map_err(|e| anyhow::anyhow!("complete_from_webhook: {e}"))?;
    let elapsed = ms(started.elapsed());
    if effect != (Effect::Completed { job_id }) {
        bail!("the webhook did not complete job {job_id}: {effect:?}");
    }
    ctx.delete_result(job_id).await?;
    Ok(elapsed)
}
