//! The stack's own tools, pinned, in a Python virtualenv under `target/stack/venv`: moto (S3 and Secrets
//! Manager), cargo-lambda (which runs the functions) and, for release builds, zig. Nothing installed
//! system-wide is used for these. Likewise the Node suite's packages, pinned by `e2e/node/package-lock.json`,
//! in `e2e/node/node_modules` (only node and npm themselves come from the system).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

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

/// The oldest Node the suite runs on (`node:test`, global `fetch`, jose 6).
const NODE_MAJOR: u32 = 20;
/// Where `npm ci` records the lock file it installed, inside `node_modules` so that removing one removes both.
const NODE_STAMP: &str = ".xtask-lock-sha256";

/// The Node suite's directory: `package.json`, its lock file and the tests.
pub fn node_suite(paths: &Paths) -> PathBuf {
    paths.root.join("e2e").join("node")
}

/// `npm ci` in [`node_suite`] when `node_modules` is missing or was installed from another lock file; logged to
/// `logs/npm.log`.
pub async fn ensure_node_packages(paths: &Paths, clock: &Clock) -> anyhow::Result<()> {
    let dir = node_suite(paths);
    let lock = dir.join("package-lock.json");
    let lock_hash = hex::encode(Sha256::digest(
        std::fs::read(&lock).with_context(|| format!("cannot read {}", lock.display()))?,
    ));
    let stamp = dir.join("node_modules").join(NODE_STAMP);
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == lock_hash) {
        clock.say("node packages present (e2e/node/package-lock.json)");
        return Ok(());
    }
    check_node().await?;
    std::fs::create_dir_all(&paths.logs)
        .with_context(|| format!("cannot create {}", paths.logs.display()))?;
    let step = clock.step();
    clock.say("npm ci in e2e/node (log: logs/npm.log)");
    let mut cmd = tokio::process::Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir);
    procs::run_logged(cmd, &paths.logs.join("npm.log"), "npm ci").await?;
    std::fs::write(&stamp, &lock_hash)
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    clock.done(
        step,
        "node packages installed from e2e/node/package-lock.json",
    );
    Ok(())
}

/// Node (at least [`NODE_MAJOR`]) and npm are on PATH, or an error saying what to install.
async fn check_node() -> anyhow::Result<()> {
    let missing = || {
        format!(
            "the Node suite (e2e/node) needs node {NODE_MAJOR} or newer and npm on PATH: install Node.js \
             (Debian/Ubuntu: `apt-get install -y nodejs npm`; macOS: `brew install node`)"
        )
    };
    let version = version_of("node").await.with_context(missing)?;
    if node_major(&version).is_none_or(|m| m < NODE_MAJOR) {
        bail!("node {version} is too old: {}", missing());
    }
    version_of("npm").await.with_context(missing)?;
    Ok(())
}

/// The major version of `node --version`'s answer (`v20.20.2`).
fn node_major(version: &str) -> Option<u32> {
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// `<program> --version`, trimmed; an error when it cannot run or fails.
async fn version_of(program: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run `{program} --version`"))?;
    if !out.status.success() {
        bail!("`{program} --version` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_parse_to_their_major() {
        assert_eq!(node_major("v20.20.2\n"), Some(20));
        assert_eq!(node_major("v22.1.0"), Some(22));
        assert_eq!(node_major("garbage"), None);
    }

    /// Every dependency of the Node suite is an exact version, and the lock file holds those versions.
    #[test]
    fn node_suite_dependencies_are_pinned_in_the_lock_file() {
        let dir = node_suite(&Paths::new());
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.join(name)).expect(name)).expect(name)
        };
        let (package, lock) = (read("package.json"), read("package-lock.json"));
        let deps = package["dependencies"].as_object().expect("dependencies");
        assert!(package.get("devDependencies").is_none());
        for name in [
            "@supabase/functions-js",
            "@supabase/storage-js",
            "jose",
            "pg",
        ] {
            assert!(deps.contains_key(name), "{name} is a dependency");
        }
        assert_eq!(
            lock["packages"][""]["dependencies"],
            package["dependencies"]
        );
        for (name, version) in deps {
            let version = version.as_str().expect("a version string");
            assert!(
                version.split('.').count() == 3
                    && version.split('.').all(|p| p.parse::<u32>().is_ok()),
                "{name} is pinned to an exact version, not {version}"
            );
            let locked = &lock["packages"][format!("node_modules/{name}")];
            assert_eq!(locked["version"], version, "{name} in the lock file");
            assert!(
                locked["integrity"].is_string(),
                "{name} has its integrity hash"
            );
        }
    }
}
