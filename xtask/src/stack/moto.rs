//! moto: S3 and Secrets Manager on loopback, from the stack's venv.

use std::process::Command;
use std::time::Duration;

use crate::clock::Clock;
use crate::paths::Paths;

use super::procs;
use super::ready::{Probe, below_500};
use super::state::State;

/// Its name in `state.json`.
pub const NAME: &str = "moto";

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

pub fn probe(port: u16) -> Probe {
    Probe {
        url: format!("{}/moto-api/", url(port)),
        ready: below_500,
    }
}

/// Starts moto on `port`, records it in `state`, waits until it answers; returns its URL.
pub async fn start(
    paths: &Paths,
    port: u16,
    state: &mut State,
    clock: &Clock,
    http: &reqwest::Client,
) -> anyhow::Result<String> {
    let step = clock.step();
    let mut cmd = Command::new(paths.venv.join("bin").join("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .current_dir(&paths.stack);
    let moto = procs::spawn_background(NAME, port, &mut cmd, &paths.logs.join("moto.log"))?;
    state.record(moto.clone(), &paths.state)?;
    probe(port)
        .wait(http, &moto, Duration::from_secs(60))
        .await?;
    clock.done(
        step,
        format!("moto started on 127.0.0.1:{port} (pid {})", moto.pid),
    );
    Ok(url(port))
}
