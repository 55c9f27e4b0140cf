//! The HTTP functions under `cargo lambda watch` (the venv's pinned cargo-lambda), built first so that no request
//! waits for a compile.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cargo::{bin_args, cargo, without_cargo_vars};
use crate::clock::Clock;
use crate::net::http_client;
use crate::paths::Paths;

use super::envfile::StackEnv;
use super::functions::{FAL_IMAGE, FAL_WEBHOOK, HTTP};
use super::procs;
use super::ready::{Probe, below_500};
use super::state::State;
use super::tools;

/// Its name in `state.json`.
pub const NAME: &str = "cargo-lambda-watch";
/// How long the functions may take to answer their first request (watch starts each process on demand).
const READY_TIMEOUT: Duration = Duration::from_secs(300);

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

pub fn function_url(port: u16, function: &str) -> String {
    format!("{}/lambda-url/{function}", url(port))
}

pub fn probe(port: u16) -> Probe {
    Probe {
        url: format!("{}/health", function_url(port, FAL_IMAGE)),
        ready: below_500,
    }
}

/// Its keys in `stack.env`: where the e2e tests reach the functions, and the API's base as a Supabase client
/// sees it (`${API_URL}/functions/v1`, `${API_URL}/storage/v1`; the functions' `PUBLIC_API_URL`).
pub fn add_to(env: &mut StackEnv, port: u16) {
    env.set("FAL_IMAGE_URL", function_url(port, FAL_IMAGE));
    env.set("API_URL", function_url(port, FAL_IMAGE));
    env.set("LAMBDA_WATCH_URL", url(port));
}

/// The functions' environment (`env`, and their log level), with the venv's tools first on PATH.
fn with_function_env(
    cmd: &mut Command,
    paths: &Paths,
    env: &[(&str, String)],
) -> anyhow::Result<()> {
    cmd.current_dir(&paths.root)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        .env("PATH", tools::path_with_venv(paths)?);
    Ok(())
}

/// Builds the functions as watch's `cargo run --bin X` selects them (by binary, so features unify over the whole
/// workspace like there) and with its environment, so watch finds the binaries fresh.
pub async fn build(paths: &Paths, clock: &Clock, env: &[(&str, String)]) -> anyhow::Result<()> {
    let step = clock.step();
    let mut cmd = without_cargo_vars(Command::new(cargo()));
    cmd.args(["build", "--quiet", "--manifest-path", "Cargo.toml"])
        .args(bin_args(&HTTP));
    with_function_env(&mut cmd, paths, env)?;
    let status = tokio::process::Command::from(cmd)
        .status()
        .await
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build of {} failed ({status})", HTTP.join(", "));
    }
    clock.done(step, format!("built {}", HTTP.join(", ")));
    Ok(())
}

/// Starts watch on `port`, records it in `state`, and waits until both functions answer.
pub async fn start(
    paths: &Paths,
    port: u16,
    env: &[(&str, String)],
    state: &mut State,
    clock: &Clock,
) -> anyhow::Result<()> {
    let step = clock.step();
    let mut cmd = without_cargo_vars(Command::new(paths.venv.join("bin").join("cargo-lambda")));
    cmd.args([
        "lambda",
        "watch",
        "-A",
        "127.0.0.1",
        "-P",
        &port.to_string(),
    ])
    .args(["--concurrency", "4", "--ignore-changes"]);
    with_function_env(&mut cmd, paths, env)?;
    let log = paths.logs.join("cargo-lambda-watch.log");
    let watch = procs::spawn_background(NAME, port, &mut cmd, &log)?;
    state.record(watch.clone(), &paths.state)?;
    let slow = http_client(READY_TIMEOUT)?;
    let webhook = Probe {
        url: function_url(port, FAL_WEBHOOK),
        ready: below_500,
    };
    for (function, probe, what) in [
        (FAL_IMAGE, probe(port), "GET /health"),
        (FAL_WEBHOOK, webhook, "GET"),
    ] {
        let status = probe.wait(&slow, &watch, READY_TIMEOUT).await?;
        clock.say(format!("{function} answers {what} with {status}"));
    }
    clock.done(
        step,
        format!(
            "functions up under cargo lambda watch on 127.0.0.1:{port} (pid {})",
            watch.pid
        ),
    );
    Ok(())
}
