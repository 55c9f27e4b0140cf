//! One result moved from the media URL into S3 by a process of its own, so its peak RSS is its own: the
//! original's way (the whole result read into memory, then one upload — what the Edge Function did with
//! `await response.blob()` and `storage.upload`), or ours (`Storage::put_download`, what the webhook does). Started
//! by the transfer figure as `xtask bench --way <original|ours> --media-url … --out …`, with the measuring
//! process's environment.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use gen_pipeline::config::Config;
use gen_pipeline::media::{self, MediaPolicy};
use gen_pipeline::storage::Storage;
use serde::{Deserialize, Serialize};

use super::ctx::Ctx;
use super::stats::ms;
use crate::procfs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Way {
    Original,
    Ours,
}

/// What one process measured.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WayRun {
    /// From the media request to the stored object.
    pub ms: f64,
    /// VmHWM at the end, and VmRSS before the transfer began (the process's own baseline).
    pub peak_rss_bytes: u64,
    pub base_rss_bytes: u64,
}

/// Runs `xtask bench --way …` on `url` into the store at `endpoint` (the stack's S3 when `None`) and returns
/// what it measured.
pub async fn run_child(
    ctx: &Ctx,
    way: Way,
    url: &str,
    endpoint: Option<&str>,
    bytes: u64,
) -> anyhow::Result<WayRun> {
    let out = ctx
        .plan
        .logs
        .join(format!("way-{}.json", uuid::Uuid::new_v4().simple()));
    let exe = std::env::current_exe().context("cannot find the xtask executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    let way_arg = match way {
        Way::Original => "original",
        Way::Ours => "ours",
    };
    cmd.args(["bench", "--way", way_arg, "--media-url", url, "--out"])
        .arg(&out)
        .args(["--expect-bytes", &bytes.to_string()])
        .kill_on_drop(true);
    if let Some(e) = endpoint {
        cmd.args(["--s3-endpoint", e]);
    }
    let status = cmd
        .status()
        .await
        .context("cannot start the transfer process")?;
    let written = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        bail!("the {way_arg} transfer process failed ({status})");
    }
    Ok(serde_json::from_slice(&written?)?)
}

/// The child's side: moves `url` into the workspace bucket `way`'s way, deletes it again, writes a [`WayRun`].
pub async fn child(
    way: Way,
    url: &str,
    s3_endpoint: Option<&str>,
    expect_bytes: u64,
    out: &Path,
) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let sdk = gen_pipeline::aws::load().await;
    let s3 = match s3_endpoint {
        Some(e) => super::transfer::on_store(&sdk, e),
        None => gen_pipeline::aws::s3(&sdk),
    };
    let storage = Storage::new(s3.clone());
    let policy = MediaPolicy::from_config(&config);
    let http = media::http_client(&policy)?;
    let bucket = &config.workspace_bucket;
    let key = format!("bench/{way:?}-{}.bin", uuid::Uuid::new_v4().simple()).to_lowercase();
    let pid = i32::try_from(std::process::id())?;
    let base_rss_bytes = procfs::rss_bytes(pid)?;
    let started = Instant::now();
    let fetched = media::fetch(&http, &policy, url)
        .await
        .map_err(|e| anyhow::anyhow!("media fetch: {e}"))?;
    let stored = match way {
        Way::Original => {
            // The whole result in memory first (sized from its Content-Length, the kindest case for this way).
            let mut body = fetched.body;
            let mut all = Vec::with_capacity(fetched.content_length.unwrap_or(0) as usize);
            while let Some(chunk) = body.next().await {
                all.extend_from_slice(&chunk?);
            }
            let len = all.len() as u64;
            // With ours' request settings: a body in memory would otherwise be hashed whole (SHA-256 to sign it,
            // CRC32 to check it) after its last byte, which the original's upload through Storage did not do.
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .content_length(len as i64)
                .body(ByteStream::from(all))
                .customize()
                .disable_payload_signing()
                .config_override(
                    aws_sdk_s3::config::Builder::default().request_checksum_calculation(
                        aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                    ),
                )
                .send()
                .await?;
            len
        }
        Way::Ours => {
            let limit = Some(config.media_max_bytes);
            let (body, len) = (fetched.body, fetched.content_length);
            let ct = "application/octet-stream";
            storage
                .put_download(bucket, &key, ct, body, len, limit)
                .await?
                .size
        }
    };
    let elapsed = ms(started.elapsed());
    let peak_rss_bytes = procfs::peak_rss_bytes(pid)?;
    storage.delete(bucket, &key).await?;
    if stored != expect_bytes {
        bail!("stored {stored} bytes, not {expect_bytes}");
    }
    let run = WayRun {
        ms: elapsed,
        peak_rss_bytes,
        base_rss_bytes,
    };
    std::fs::write(out, serde_json::to_vec(&run)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// The arguments of the child's side, as `main.rs` parses them.
#[derive(Debug, Clone, clap::Args)]
pub struct WayArgs {
    /// Internal: move one result the original's way or ours, in this process (the transfer figure starts it).
    #[arg(long, hide = true, requires_all = ["media_url", "out"])]
    pub way: Option<Way>,
    #[arg(long, hide = true)]
    pub media_url: Option<String>,
    #[arg(long, hide = true)]
    pub s3_endpoint: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    pub expect_bytes: u64,
    #[arg(long, hide = true)]
    pub out: Option<PathBuf>,
}

impl WayArgs {
    /// Runs the child's side when `--way` was given; `None` otherwise.
    pub async fn run(self) -> Option<anyhow::Result<()>> {
        let way = self.way?;
        let (url, out) = (self.media_url?, self.out?);
        Some(
            child(
                way,
                &url,
                self.s3_endpoint.as_deref(),
                self.expect_bytes,
                &out,
            )
            .await,
        )
    }
}
