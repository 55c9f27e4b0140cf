//! Cold init: from spawning a function binary against the bench's runtime API to its first
//! `GET /runtime/invocation/next` (config read, SDK clients built), with the peak RSS at that
//! moment and the sockets it holds (any besides the runtime API's would be a network call made at init).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::plan::Plan;
use super::runtime_api::RuntimeApi;
use super::stats::{MIB, ms};
use crate::procfs;
use crate::stack::functions::HTTP;

pub const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The floor of the figure: a minimal `lambda_runtime` function (`xtask/hello`), built and started like ours.
pub const HELLO: &str = "bench-hello";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct InitSamples {
    pub ms: Vec<f64>,
    pub peak_rss_mib: Vec<f64>,
    /// Sockets other than the runtime API's held at the end of init, per start (all must be 0).
    pub foreign_sockets: Vec<usize>,
}

/// `starts` cold starts of each function and of [`HELLO`], alternating between them in an order rotated each round,
/// after one unrecorded start of each (so the first recorded one does not pay for reading the binary from disk).
pub async fn measure(plan: &Plan, starts: usize) -> anyhow::Result<BTreeMap<String, InitSamples>> {
    let mut out: BTreeMap<String, InitSamples> = BTreeMap::new();
    let order: Vec<&str> = HTTP.into_iter().chain([HELLO]).collect();
    for round in 0..=starts {
        // Rotated each round, so none of them always starts first or right after the same one.
        for step in 0..order.len() {
            let function = order[(round + step) % order.len()];
            let bin = plan.bin_dir.join(function);
            let (elapsed, peak, foreign) = cold_start(&bin, function, plan).await?;
            if round > 0 {
                let s = out.entry(function.to_owned()).or_default();
                s.ms.push(elapsed);
                s.peak_rss_mib.push(peak as f64 / MIB);
                s.foreign_sockets.push(foreign);
            }
        }
    }
    Ok(out)
}

/// One start: (ms to the first `invocation/next`, VmHWM bytes, foreign sockets). The process is killed after.
async fn cold_start(bin: &Path, function: &str, plan: &Plan) -> anyhow::Result<(f64, u64, usize)> {
    let api = RuntimeApi::start().await?;
    let mut cmd = lambda_command(bin, function, plan, &api, "init")?;
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = function_pid(&child)?;
    let arrived = tokio::select! {
        at = api.first_next(INIT_TIMEOUT) => at,
        status = child.wait() => Err(anyhow::anyhow!("{function} exited during init ({status:?})")),
    };
    let measured = arrived.and_then(|at| {
        Ok((
            ms(at.duration_since(started)),
            procfs::peak_rss_bytes(pid)?,
            procfs::foreign_sockets(pid, api.addr.port())?,
        ))
    });
    let _ = child.kill().await;
    if let Some(e) = api.init_error() {
        bail!(
            "{function} reported an init error: {}",
            String::from_utf8_lossy(&e.body)
        );
    }
    measured.with_context(|| {
        format!(
            "see {}",
            plan.logs.join(format!("{function}.log")).display()
        )
    })
}

/// The pid of a started function process, as /proc names it.
pub fn function_pid(child: &tokio::process::Child) -> anyhow::Result<i32> {
    let pid = child.id().context("the function has no pid")?;
    i32::try_from(pid).context("pid out of range")
}

/// The function binary with Lambda's environment: the runtime API, the function's identity and 128 MB, and the
/// stack's settings (AWS endpoint, fake credentials, secret id). Nothing inherited from the bench's own environment.
pub fn lambda_command(
    bin: &Path,
    function: &str,
    plan: &Plan,
    api: &RuntimeApi,
    phase: &str,
) -> anyhow::Result<tokio::process::Command> {
    let log_path = plan.logs.join(format!("{function}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    use std::io::Write as _;
    let mut marker = &log;
    let _ = writeln!(
        marker,
        "--- bench {phase}: {}",
        chrono::Utc::now().to_rfc3339()
    );
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .envs(plan.function_env.iter().map(|(k, v)| (k, v)))
        .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("TZ", ":UTC")
        .env("LANG", "en_US.UTF-8")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    Ok(cmd)
}
