//! The fal emulator (`cargo xtask fal-emulator`) in the background: this same xtask binary, serving fal's queue
//! and sync APIs and delivering signed webhooks, playing Replicate under `/replicate/v1`, and standing in for
//! Supabase Auth's JWKS (`SUPABASE_URL` is its URL).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::cargo::without_cargo_vars;
use crate::clock::Clock;
use crate::paths::Paths;

use super::aws::AppSecret;
use super::envfile::StackEnv;
use super::procs;
use super::ready::{Probe, success};
use super::state::State;

/// Its name in `state.json`.
pub const NAME: &str = "fal-emulator";
/// The fal user id its webhook deliveries are signed for.
pub const USER_ID: &str = "emulator-user";

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Replicate's API base on the emulator at `emulator_url` (for `https://api.replicate.com/v1`).
pub fn replicate_url(emulator_url: &str) -> String {
    format!("{emulator_url}/replicate/v1")
}

pub fn probe(port: u16) -> Probe {
    Probe {
        url: format!("{}/_emulator/health", url(port)),
        ready: success,
    }
}

/// Its keys in `stack.env`: where tests reach it (and its Replicate API), and the user id its deliveries are
/// signed for.
pub fn add_to(env: &mut StackEnv, port: u16) {
    env.set("FAL_EMULATOR_URL", url(port));
    env.set("REPLICATE_EMULATOR_URL", replicate_url(&url(port)));
    env.set("FAL_EMULATOR_USER_ID", USER_ID);
}

/// Starts the emulator on `port` accepting the app secret's fal key and Replicate token, signing Replicate's
/// deliveries with its Replicate webhook secret, and serving the public key set `supabase_jwks`; records it in
/// `state` and waits until it answers.
pub async fn start(
    paths: &Paths,
    port: u16,
    secret: &AppSecret,
    supabase_jwks: &Path,
    state: &mut State,
    clock: &Clock,
    http: &reqwest::Client,
) -> anyhow::Result<()> {
    let step = clock.step();
    let exe = std::env::current_exe().context("cannot find the xtask executable")?;
    let mut cmd = without_cargo_vars(Command::new(exe));
    cmd.args(["fal-emulator", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--supabase-jwks")
        .arg(supabase_jwks)
        .current_dir(&paths.stack)
        .env("FAL_EMULATOR_KEY", &secret.fal_key)
        .env("FAL_EMULATOR_REPLICATE_TOKEN", &secret.replicate_api_token)
        .env(
            "FAL_EMULATOR_REPLICATE_WEBHOOK_SECRET",
            &secret.replicate_webhook_secret,
        )
        .env("FAL_EMULATOR_USER_ID", USER_ID)
        .env("FAL_EMULATOR_PUBLIC_URL", url(port))
        .env("FAL_EMULATOR_RETRY_MS", "300")
        .env("RUST_LOG", "info");
    let log = paths.logs.join("fal-emulator.log");
    let emulator = procs::spawn_background(NAME, port, &mut cmd, &log)?;
    state.record(emulator.clone(), &paths.state)?;
    probe(port)
        .wait(http, &emulator, Duration::from_secs(60))
        .await?;
    clock.done(
        step,
        format!(
            "fal emulator started on 127.0.0.1:{port} (pid {})",
            emulator.pid
        ),
    );
    Ok(())
}
