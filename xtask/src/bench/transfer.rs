//! Transfer: the webhook's time to move a result from the emulator into S3 (`complete_from_webhook` in-process,
//! with a real job and its real signed delivery), on each S3 store of the plan (moto, s3s-fs), against the least a
//! streamed multipart copy can take: max(download alone, parts alone) + CompleteMultipartUpload alone, each
//! measured in the same repetition against the same store. The emulator's media is throttled to the rate the
//! store takes a whole upload at, so that neither half hides the other.
//!
//! Beside it, on the same media and store: one streamed PutObject of as many bytes (`Storage::put_sized`, what the
//! webhook does when the length is announced); what a failure half way costs each way of uploading, by injection
//! (a single PUT whose source breaks off half way, one part of the multipart upload sent again); and the original's
//! way — the whole result read into memory, then one upload — in a process of its own so that its peak RSS is its
//! own, next to ours in the same kind of process (`way.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use gen_pipeline::AppState;
use gen_pipeline::media::{self, MediaPolicy};
use gen_pipeline::storage::Storage;
use gen_pipeline::webhook::{self, Delivery as Effect};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::capture::Delivery;
use super::cpu::{self, CpuUse};
use super::ctx::Ctx;
use super::plan::StoreSpec;
use super::stats::ms;
use super::way::{self, Way, WayRun};

const SOURCE_CHUNK: usize = 64 * 1024;
/// Phases of one repetition, run in a rotated order.
const PHASES: usize = 6;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TransferSamples {
    pub bytes: u64,
    /// By store name (`moto`, `s3s`).
    pub stores: BTreeMap<String, StoreSamples>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StoreSamples {
    /// The rate the store took the calibration's upload at, which the media was throttled to (bytes per second).
    pub media_rate_bytes_per_s: u64,
    /// The media fetched with the webhook's client and read to the end.
    pub download_ms: Vec<f64>,
    /// `complete_from_webhook`: fetch, store, record.
    pub webhook_ms: Vec<f64>,
    /// A multipart upload made directly with the SDK (the webhook's part size and parts in flight): its parts, and
    /// its CompleteMultipartUpload timed apart.
    pub parts_ms: Vec<f64>,
    pub complete_ms: Vec<f64>,
    /// One streamed PutObject with the length announced (`Storage::put_sized`).
    pub single_put_ms: Vec<f64>,
    /// The same PutObject whose source breaks off after half the bytes: the time until it fails (nothing is
    /// stored). What a failure half way costs a single PUT: this, then the whole transfer again.
    #[serde(default)]
    pub single_put_half_failure_ms: Vec<f64>,
    /// One part of the multipart upload sent again (the same part number and bytes, before the completion): what
    /// a failure half way costs a multipart upload, whose SDK resends the failed part from its buffer.
    #[serde(default)]
    pub part_retry_ms: Vec<f64>,
    /// webhook / (max(download, parts) + completion) of each repetition: the floor, a multipart upload's.
    pub ratio_to_floor: Vec<f64>,
    /// webhook / max(download, single PUT) of each repetition: the floor of the way the webhook stores a result
    /// of known length (one streamed PutObject), which nothing overlapping download and upload can beat.
    #[serde(default)]
    pub ratio_to_single_put_floor: Vec<f64>,
    /// single PUT / (parts + completion) of each repetition: which way of uploading wins on this store.
    pub single_put_vs_multipart: Vec<f64>,
    /// The original's way and ours, each in a process of its own, on the same media.
    pub original: Vec<WayRun>,
    pub ours: Vec<WayRun>,
    /// original / ours of each repetition, both in a process of their own (the same kind of measurement).
    pub speedup_vs_original: Vec<f64>,
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

/// One S3 implementation as the webhook sees it: the functions' state with its storage on that store.
struct Store {
    spec: StoreSpec,
    state: Arc<AppState>,
    s3: aws_sdk_s3::Client,
}

impl Store {
    /// The stack's S3 (no endpoint: the functions' own state), or the functions' state built again with its S3
    /// client on the store's endpoint (secrets, database and media stay the stack's).
    async fn new(ctx: &Ctx, spec: &StoreSpec) -> anyhow::Result<Store> {
        let sdk = gen_pipeline::aws::load().await;
        let (state, s3) = match &spec.endpoint {
            None => (ctx.state.clone(), gen_pipeline::aws::s3(&sdk)),
            Some(endpoint) => {
                let s3 = on_store(&sdk, endpoint);
                let mut state = AppState::new(gen_pipeline::config::Config::from_env()?, &sdk)?;
                state.storage = Storage::new(s3.clone());
                (Arc::new(state), s3)
            }
        };
        Ok(Store {
            spec: spec.clone(),
            state,
            s3,
        })
    }

    fn storage(&self) -> &Storage {
        &self.state.storage
    }
}

pub async fn measure(ctx: &Ctx, bytes: u64, reps: usize) -> anyhow::Result<TransferSamples> {
    let mut out = TransferSamples {
        bytes,
        stores: BTreeMap::new(),
    };
    for spec in &ctx.plan.stores {
        let store = Store::new(ctx, spec).await?;
        let samples = measure_store(ctx, &store, bytes, reps)
            .await
            .with_context(|| format!("on {}", spec.name))?;
        out.stores.insert(spec.name.clone(), samples);
    }
    Ok(out)
}

async fn measure_store(
    ctx: &Ctx,
    store: &Store,
    bytes: u64,
    reps: usize,
) -> anyhow::Result<StoreSamples> {
    let source = source_block();
    // Calibration: the rate this store takes a whole multipart upload (parts and completion) from this process.
    // At that rate the media is no faster than the store takes it, and the two halves do not fight for the cores
    // (a download at the emulator's full speed slows down when moto works beside it on this 2-core machine).
    let Multipart {
        parts, complete, ..
    } = sdk_multipart(ctx, store, &source, bytes).await?;
    let rate = ((bytes as f64) / ((parts + complete) / 1000.0)).max(1.0) as u64;
    let mut out = StoreSamples {
        media_rate_bytes_per_s: rate,
        ..StoreSamples::default()
    };
    let watched = cpu::watched();
    for rep in 0..reps {
        let job = ctx
            .queued_job(&format!("#media-bytes={bytes} #media-rate={rate}"))
            .await?;
        let url = job
            .delivery
            .media_url()
            .context("the delivery names no media URL")?;
        let mut r = Rep::default();
        // Rotate the order, so none of the phases always runs first (or right after another's cleanup).
        for step in 0..PHASES {
            let before = cpu::snapshot(&watched);
            let phase = r
                .run(
                    (rep + step) % PHASES,
                    ctx,
                    store,
                    &source,
                    bytes,
                    &url,
                    &job,
                )
                .await?;
            out.cpu.push(PhaseCpu {
                rep,
                phase: phase.to_owned(),
                used: before.until(&cpu::snapshot(&watched)),
            });
        }
        r.record(&mut out);
    }
    Ok(out)
}

/// What one repetition measured.
#[derive(Default)]
struct Rep {
    download: f64,
    hook: f64,
    parts: f64,
    complete: f64,
    part_retry: f64,
    single: f64,
    single_half_failure: f64,
    original: WayRun,
    ours: WayRun,
}

impl Rep {
    /// Phase `n` of the repetition; returns its name.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        n: usize,
        ctx: &Ctx,
        store: &Store,
        source: &Bytes,
        bytes: u64,
        url: &str,
        job: &super::ctx::QueuedJob,
    ) -> anyhow::Result<&'static str> {
        let endpoint = store.spec.endpoint.as_deref();
        Ok(match n {
            0 => {
                self.download = download_alone(ctx, url, bytes).await?;
                "download"
            }
            1 => {
                self.hook = through_webhook(ctx, store, job.job_id, &job.delivery).await?;
                "webhook"
            }
            2 => {
                let m = sdk_multipart(ctx, store, source, bytes).await?;
                (self.parts, self.complete, self.part_retry) = (m.parts, m.complete, m.part_retry);
                "multipart"
            }
            3 => {
                (self.single, self.single_half_failure) =
                    single_puts(ctx, store, source, bytes, url).await?;
                "single-put"
            }
            4 => {
                self.original = way::run_child(ctx, Way::Original, url, endpoint, bytes).await?;
                "original"
            }
            _ => {
                self.ours = way::run_child(ctx, Way::Ours, url, endpoint, bytes).await?;
                "ours-process"
            }
        })
    }

    fn record(self, out: &mut StoreSamples) {
        out.download_ms.push(self.download);
        out.webhook_ms.push(self.hook);
        out.parts_ms.push(self.parts);
        out.complete_ms.push(self.complete);
        out.single_put_ms.push(self.single);
        out.single_put_half_failure_ms
            .push(self.single_half_failure);
        out.part_retry_ms.push(self.part_retry);
        out.ratio_to_floor
            .push(self.hook / (self.download.max(self.parts) + self.complete));
        out.ratio_to_single_put_floor
            .push(self.hook / self.download.max(self.single));
        out.single_put_vs_multipart
            .push(self.single / (self.parts + self.complete));
        out.speedup_vs_original
            .push(self.original.ms / self.ours.ms);
        out.original.push(self.original);
        out.ours.push(self.ours);
    }
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

/// An S3 client on the store at `endpoint`. Set on the S3 client's own configuration: an endpoint set on the
/// shared `SdkConfig` would lose to the environment's `AWS_ENDPOINT_URL` (the stack's moto).
pub fn on_store(sdk: &aws_config::SdkConfig, endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn bench_key(what: &str) -> String {
    format!("bench/{what}-{}.bin", uuid::Uuid::new_v4().simple())
}

/// `Storage::put_sized` of `bytes` generated bytes, alone (ms), and the same PUT fed by the media as the webhook
/// feeds it, failing half way (ms from the media's request until the PUT fails: what a failure loses before the
/// provider's redelivery starts the whole transfer again). The failed one must leave nothing behind.
async fn single_puts(
    ctx: &Ctx,
    store: &Store,
    source: &Bytes,
    bytes: u64,
    url: &str,
) -> anyhow::Result<(f64, f64)> {
    let bucket = &ctx.settings.config.workspace_bucket;
    let key = bench_key("single");
    let started = Instant::now();
    let stored = store
        .storage()
        .put_sized(bucket, &key, OCTETS, generated(source, bytes), bytes)
        .await;
    let whole = ms(started.elapsed());
    let stored = stored?;
    store.storage().delete(bucket, &key).await?;
    if stored.size != bytes {
        bail!("the single PUT stored {} bytes, not {bytes}", stored.size);
    }
    let key = bench_key("single-failed");
    let policy = MediaPolicy::from_config(&ctx.settings.config);
    let started = Instant::now();
    let media = media::fetch(&ctx.state.media_http, &policy, url)
        .await
        .map_err(|e| anyhow::anyhow!("media fetch: {e}"))?;
    let mut sent = 0u64;
    let broken = media
        .body
        .map(move |chunk| -> Result<Bytes, std::io::Error> {
            let chunk = chunk.map_err(std::io::Error::other)?;
            if sent >= bytes / 2 {
                let reset = std::io::ErrorKind::ConnectionReset;
                return Err(std::io::Error::new(
                    reset,
                    "the transfer broke off half way",
                ));
            }
            sent += chunk.len() as u64;
            Ok(chunk)
        });
    let outcome = store
        .storage()
        .put_sized(bucket, &key, OCTETS, broken, bytes)
        .await;
    let failed = ms(started.elapsed());
    if outcome.is_ok() {
        bail!("a single PUT whose source broke off half way succeeded");
    }
    if store
        .s3
        .head_object()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .is_ok()
    {
        bail!("a single PUT that failed half way left an object behind");
    }
    Ok((whole, failed))
}

const OCTETS: &str = "application/octet-stream";

/// What one direct multipart upload measured (ms).
struct Multipart {
    /// Every part, in flight as the webhook's multipart sends them.
    parts: f64,
    /// The middle part sent again, alone, after the others (as the SDK resends a part that failed).
    part_retry: f64,
    complete: f64,
}

/// A multipart upload made directly with the SDK, parts of the webhook's size with as many in flight (the
/// webhook's own multipart path: parts from memory, signed and checksummed by the SDK's defaults). Aborted when
/// it fails, so no upload is left open in the store.
async fn sdk_multipart(
    ctx: &Ctx,
    store: &Store,
    source: &Bytes,
    bytes: u64,
) -> anyhow::Result<Multipart> {
    let upload = Upload {
        s3: &store.s3,
        bucket: ctx.settings.config.workspace_bucket.clone(),
        key: bench_key("multipart"),
    };
    let started = Instant::now();
    let created = (upload.s3.create_multipart_upload())
        .bucket(&upload.bucket)
        .key(&upload.key)
        .send()
        .await?;
    let upload_id = created.upload_id().context("no upload id")?.to_owned();
    match upload
        .send_and_complete(&upload_id, source, bytes, started)
        .await
    {
        Ok(m) => {
            store.storage().delete(&upload.bucket, &upload.key).await?;
            Ok(m)
        }
        Err(e) => {
            let _ = (upload.s3.abort_multipart_upload())
                .bucket(&upload.bucket)
                .key(&upload.key)
                .upload_id(&upload_id)
                .send()
                .await;
            Err(e)
        }
    }
}

/// The object [`sdk_multipart`] uploads.
struct Upload<'a> {
    s3: &'a aws_sdk_s3::Client,
    bucket: String,
    key: String,
}

impl Upload<'_> {
    /// Every part, in flight as the webhook's multipart sends them, the middle one again, then the completion.
    async fn send_and_complete(
        &self,
        upload_id: &str,
        source: &Bytes,
        bytes: u64,
        started: Instant,
    ) -> anyhow::Result<Multipart> {
        use aws_sdk_s3::types::CompletedMultipartUpload;
        use gen_pipeline::storage::{DEFAULT_PART_SIZE, PARTS_IN_FLIGHT};

        let mut in_flight = tokio::task::JoinSet::new();
        let mut done = Vec::new();
        let mut parts = generated(source, bytes).chunks(DEFAULT_PART_SIZE / SOURCE_CHUNK);
        let mut number = 0;
        let middle = bytes.div_ceil(DEFAULT_PART_SIZE as u64).div_ceil(2).max(1) as i32;
        let mut again = None;
        while let Some(chunks) = parts.next().await {
            let mut part = bytes::BytesMut::with_capacity(DEFAULT_PART_SIZE);
            for c in chunks {
                part.extend_from_slice(&c?);
            }
            let part = part.freeze();
            while in_flight.len() >= PARTS_IN_FLIGHT {
                done.push(in_flight.join_next().await.context("no part")???);
            }
            number += 1;
            if number == middle {
                again = Some(part.clone());
            }
            let request = self.part(upload_id, number, part);
            in_flight.spawn(async move {
                let out = request.send().await?;
                Ok::<_, anyhow::Error>(completed(number, out.e_tag(), out.checksum_crc32()))
            });
        }
        while let Some(part) = in_flight.join_next().await {
            done.push(part??);
        }
        let parts_ms = ms(started.elapsed());
        let resending = Instant::now();
        let again = again.context("no middle part")?;
        let resent = self.part(upload_id, middle, again).send().await?;
        let part_retry = ms(resending.elapsed());
        // The part sent again replaces the first copy (same bytes): the completion names its ETag.
        for p in &mut done {
            if p.part_number() == Some(middle) {
                *p = completed(middle, resent.e_tag(), resent.checksum_crc32());
            }
        }
        done.sort_by_key(|p| p.part_number());
        let completing = Instant::now();
        (self.s3.complete_multipart_upload())
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await?;
        let complete = ms(completing.elapsed());
        Ok(Multipart {
            parts: parts_ms,
            part_retry,
            complete,
        })
    }

    fn part(
        &self,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> aws_sdk_s3::operation::upload_part::builders::UploadPartFluentBuilder {
        (self.s3.upload_part())
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number)
            .body(aws_sdk_s3::primitives::ByteStream::from(body))
    }
}

/// A part as the completion names it.
fn completed(
    number: i32,
    e_tag: Option<&str>,
    crc32: Option<&str>,
) -> aws_sdk_s3::types::CompletedPart {
    aws_sdk_s3::types::CompletedPart::builder()
        .part_number(number)
        .set_e_tag(e_tag.map(str::to_owned))
        .set_checksum_crc32(crc32.map(str::to_owned))
        .build()
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

/// The delivery of the repetition's own job through `complete_from_webhook` with the store's state; the stored
/// object is deleted afterwards.
async fn through_webhook(
    ctx: &Ctx,
    store: &Store,
    job_id: uuid::Uuid,
    delivery: &Delivery,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    // Authentication is measured by the delivery phase; this one times the transfer.
    let (effect, _) = webhook::complete_from_webhook(
        &store.state,
        &ctx.settings,
        gen_pipeline::webhook_auth::Verified {
            url: gen_pipeline::webhook_auth::Authenticated::Job(job_id),
            provider: gen_pipeline::provider::ProviderKind::Fal,
        },
        webhook::DeliveryUrl {
            job_id: Some(&job_id.to_string()),
            sync_route: false,
        },
        delivery.signature_headers().map(|h| h.request_id),
        &delivery.body,
    )
    .await
    .map_err(|e| anyhow::anyhow!("complete_from_webhook: {e}"))?;
    let elapsed = ms(started.elapsed());
    if effect != (Effect::Completed { job_id }) {
        bail!("the webhook did not complete job {job_id}: {effect:?}");
    }
    ctx.delete_result_in(store.storage(), job_id).await?;
    Ok(elapsed)
}
