//! s3s-fs: a second S3 implementation for the transfer figure, so that no conclusion rests on one emulator's
//! quirks. It serves path-style SigV4 requests, multipart uploads and presigned GETs from a directory, and is no
//! completion-free store either (it concatenates the parts on disk). Pinned, installed once into
//! `target/tools/s3s-fs` with `cargo install --locked`, started by the bench on a free loopback port with the
//! stack's fake credentials and an empty directory holding the stack's buckets, and stopped when the bench ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cargo::{cargo, without_cargo_vars};
use crate::clock::Clock;
use crate::net::free_ports;
use crate::paths::Paths;
use crate::stack::aws;

/// Its name in the report's keys (`transfer_ratio_to_floor_s3s`).
pub const NAME: &str = "s3s";
/// The pinned release (crates.io), built with its `binary` feature.
pub const VERSION: &str = "0.14.1";

/// A running s3s-fs; killed and its directory removed on [`S3sFs::stop`] (dropped without it, the process is
/// killed and its directory, under the bench's target folder, is left for the next run to replace).
pub struct S3sFs {
    child: tokio::process::Child,
    pub endpoint: String,
    data: PathBuf,
}

/// `target/tools/s3s-fs/bin/s3s-fs`, installed when missing or of another version.
async fn ensure_built(paths: &Paths, clock: &Clock, log: &Path) -> anyhow::Result<PathBuf> {
    let root = paths.root.join("target").join("tools").join("s3s-fs");
    let bin = root.join("bin").join("s3s-fs");
    let installed = tokio::process::Command::new(&bin)
        .arg("--version")
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if installed.is_some_and(|v| v.split_whitespace().any(|w| w == VERSION)) {
        return Ok(bin);
    }
    let step = clock.step();
    clock.say(format!(
        "installing s3s-fs {VERSION} into {} (once; log: {})",
        root.display(),
        log.display()
    ));
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = without_cargo_vars(std::process::Command::new(cargo()));
    cmd.args([
        "install",
        "s3s-fs",
        "--version",
        VERSION,
        "--features",
        "binary",
        "--locked",
    ])
    .arg("--root")
    .arg(&root)
    .arg("--target-dir")
    .arg(paths.root.join("target").join("tools").join("s3s-fs-build"))
    .stdin(Stdio::null())
    .stdout(Stdio::from(out.try_clone()?))
    .stderr(Stdio::from(out));
    let status = tokio::process::Command::from(cmd)
        .status()
        .await
        .context("cannot run cargo install")?;
    if !status.success() {
        bail!(
            "cargo install s3s-fs {VERSION} failed ({status}); see {}",
            log.display()
        );
    }
    clock.done(step, "s3s-fs installed");
    Ok(bin)
}

impl S3sFs {
    /// Installs (once) and starts s3s-fs on a free loopback port over a fresh directory with `buckets`.
    pub async fn start(
        paths: &Paths,
        clock: &Clock,
        logs: &Path,
        buckets: &[&str],
    ) -> anyhow::Result<Self> {
        let bin = ensure_built(paths, clock, &logs.join("s3s-fs-install.log")).await?;
        let data = paths.root.join("target").join("bench").join("s3s-fs-data");
        let _ = std::fs::remove_dir_all(&data);
        for bucket in buckets {
            std::fs::create_dir_all(data.join(bucket))
                .with_context(|| format!("cannot create {}", data.display()))?;
        }
        let [port] = free_ports::<1>().context("no free port for s3s-fs")?;
        let log = std::fs::File::create(logs.join("s3s-fs.log"))?;
        let child = tokio::process::Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                aws::ACCESS_KEY,
                "--secret-key",
                aws::SECRET_KEY,
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let store = S3sFs {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            data,
        };
        store.wait_listening(port, Duration::from_secs(30)).await?;
        clock.say(format!(
            "s3s-fs {VERSION} serving {} on {}",
            store.data.display(),
            store.endpoint
        ));
        Ok(store)
    }

    async fn wait_listening(&self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if started.elapsed() > timeout {
                bail!("s3s-fs did not listen on {port} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
