//! The stack's own tools, pinned, in a Python virtualenv under `target/stack/venv`: moto (S3 and Secrets
//! Manager), cargo-lambda (which runs the functions) and, for release builds, zig. Nothing installed
//! system-wide is used for these.

use std::ffi::OsString;
use std::process::Stdio;

use anyhow::{Context, bail};

use crate::clock::Clock;
use crate::paths::Paths;

use super::procs;

pub const MOTO: &str = "moto[server]==5.2.5";
pub const CARGO_LAMBDA: &str = "cargo-lambda==1.9.2";
/// The zig that cargo-lambda cross-compiles release builds with (`cargo xtask package`, `sam build`).
pub const ZIGLANG: &str = "ziglang==0.17.1";

/// Creates the venv and installs the pinned packages that are missing (or whose pin changed).
pub async fn ensure(paths: &Paths, clock: &Clock) -> anyhow::Result<()> {
    let bin = paths.venv.join("bin");
    let log = paths.logs.join("pip.log");
    if !bin.join("python").exists() {
        let step = clock.step();
        let python = std::env::var("XTASK_PYTHON").unwrap_or_else(|_| "python3".to_string());
        let mut cmd = tokio::process::Command::new(&python);
        cmd.args(["-m", "venv"]).arg(&paths.venv);
        procs::run_logged(cmd, &log, &format!("{python} -m venv")).await?;
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
    pip_install(paths, clock, &wanted).await?;
    std::fs::write(&marker, pins)?;
    Ok(())
}

/// Installs ziglang, pinned, into the venv (made by [`ensure`]) unless that version is there already.
pub async fn ensure_ziglang(paths: &Paths, clock: &Clock) -> anyhow::Result<()> {
    let wanted = ZIGLANG.trim_start_matches("ziglang==");
    let out = tokio::process::Command::new(paths.venv.join("bin").join("python"))
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('ziglang'))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .context("cannot run the venv's python")?;
    let installed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && installed == wanted {
        clock.say(format!("tools present: {ZIGLANG}"));
        return Ok(());
    }
    pip_install(paths, clock, &[ZIGLANG]).await
}

/// PATH with the venv's `bin` first, so cargo-lambda finds the pinned tools (zig among them).
pub fn path_with_venv(paths: &Paths) -> anyhow::Result<OsString> {
    let system = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    std::env::join_paths(std::iter::once(paths.venv.join("bin")).chain(system))
        .context("PATH cannot hold the venv's bin directory")
}

/// `pip install` of pinned packages into the venv, logged to `logs/pip.log`.
async fn pip_install(paths: &Paths, clock: &Clock, wanted: &[&str]) -> anyhow::Result<()> {
    let log = paths.logs.join("pip.log");
    let step = clock.step();
    clock.say(format!(
        "pip install {} (log: logs/pip.log)",
        wanted.join(" ")
    ));
    let mut cmd = tokio::process::Command::new(paths.venv.join("bin").join("pip"));
    cmd.args(["install", "--disable-pip-version-check", "--no-input"])
        .args(wanted);
    procs::run_logged(cmd, &log, "pip install").await?;
    clock.done(step, format!("pip installed {}", wanted.join(" ")));
    Ok(())
}

/// `apt-get update` then `apt-get install -y --no-install-recommends <package>` (as root only), output to
/// `logs/apt.log`: system packages the stack needs and the distribution provides (PostgreSQL, PgBouncer).
pub async fn apt_install(paths: &Paths, clock: &Clock, package: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "`{package}` is missing and only root may install it: install the `{package}` package"
        );
    }
    let step = clock.step();
    clock.say(format!(
        "{package} missing: apt-get install -y {package} (log: logs/apt.log)"
    ));
    let log = paths.logs.join("apt.log");
    for args in [
        &["update"][..],
        &["install", "-y", "--no-install-recommends", package][..],
    ] {
        let mut cmd = tokio::process::Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        procs::run_logged(cmd, &log, &format!("apt-get {}", args.join(" "))).await?;
    }
    clock.done(step, format!("{package} installed"));
    Ok(())
}
