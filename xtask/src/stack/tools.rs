//! The stack's own tools, pinned, in a Python virtualenv under `target/stack/venv`: moto (S3 and Secrets
//! Manager) and cargo-lambda (which runs the functions). Nothing installed system-wide is used for these.

use std::fs::OpenOptions;
use std::process::Stdio;

use anyhow::{Context, bail};

use super::{Clock, Paths};

pub const MOTO: &str = "moto[server]==5.2.5";
pub const CARGO_LAMBDA: &str = "cargo-lambda==1.9.2";

/// Creates the venv and installs the pinned packages that are missing (or whose pin changed).
pub async fn ensure(paths: &Paths, clock: &Clock) -> anyhow::Result<()> {
    let bin = paths.venv.join("bin");
    let log = paths.logs.join("pip.log");
    if !bin.join("python").exists() {
        let step = clock.step();
        let python = std::env::var("XTASK_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let status = tokio::process::Command::new(&python)
            .args(["-m", "venv"])
            .arg(&paths.venv)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .await
            .with_context(|| format!("cannot run {python} -m venv"))?;
        if !status.success() {
            bail!("{python} -m venv failed ({status}); see {}", log.display());
        }
        clock.done(
            step,
            format!("virtualenv created at {}", paths.venv.display()),
        );
    }

    // A marker records which pins the venv holds, so a changed pin reinstalls.
    let marker = paths.venv.join(".xtask-pins");
    let pins = format!("{MOTO}\n{CARGO_LAMBDA}\n");
    let marker_ok = std::fs::read_to_string(&marker).is_ok_and(|m| m == pins);
    let mut wanted = Vec::new();
    if !marker_ok || !bin.join("moto_server").exists() {
        wanted.push(MOTO);
    }
    if !marker_ok || !bin.join("cargo-lambda").exists() {
        wanted.push(CARGO_LAMBDA);
    }
    if wanted.is_empty() {
        clock.say(format!("tools present: {MOTO}, {CARGO_LAMBDA}"));
        return Ok(());
    }
    let step = clock.step();
    clock.say(format!(
        "pip install {} (log: logs/pip.log)",
        wanted.join(" ")
    ));
    let out = OpenOptions::new().create(true).append(true).open(&log)?;
    let status = tokio::process::Command::new(bin.join("pip"))
        .args(["install", "--disable-pip-version-check", "--no-input"])
        .args(&wanted)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .await
        .context("cannot run the venv's pip")?;
    if !status.success() {
        bail!("pip install failed ({status}); see {}", log.display());
    }
    std::fs::write(&marker, pins)?;
    clock.done(step, format!("pip installed {}", wanted.join(" ")));
    Ok(())
}
