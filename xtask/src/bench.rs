//! `cargo xtask bench`: the pipeline's performance figures on the local stack, each measured against its own
//! floor in the same run and repeated (a shared 2-core machine drifts; ratios measured together do not), written
//! to `target/bench/report.json` and printed as a table. `--smoke` runs the same code on debug builds and tiny
//! sizes, inside `cargo xtask test`, so it cannot rot. See BENCHMARKS.md for the method and the latest figures.

mod capture;
mod child;
mod cpu;
mod ctx;
mod deliveries;
mod init;
mod links;
mod memory;
mod plan;
mod report;
mod runtime_api;
mod s3s;
mod stats;
mod submit;
mod transfer;
pub mod way;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::cargo::{bin_args, cargo, without_cargo_vars};
use crate::clock::Clock;
use crate::net::free_ports;
use crate::paths::Paths;
use crate::stack::functions::{self, HTTP as FUNCTIONS};
use crate::stack::{self, StackEnv, aws};

/// Release builds go here, so the test loop's debug artifacts in `target/debug` stay valid.
const BUILD_DIR: &str = "target/bench-build";
/// The functions' settings of the stack that the bench's binaries do not get: they keep the default media read
/// timeout (the stack's short one is for its fault tests).
const NOT_FOR_BENCH: [&str; 1] = ["MEDIA_READ_TIMEOUT_SECS"];

/// `cargo xtask bench [--smoke]`, or with `plan`, the measuring process it starts.
pub async fn run(smoke: bool, plan: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(plan) = plan {
        return child::run(&plan).await;
    }
    let started = Instant::now();
    let paths = Paths::new();
    let clock = Clock::new();
    let dir = paths.root.join("target").join("bench");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    // Builds first: the stack is up only while measuring, so a long build neither holds it nor loses it.
    let built = build(&paths, &clock, smoke, &logs).await?;
    let was_up = stack::is_up().await;
    // No functions under `cargo lambda watch`: the bench runs its own release builds of them.
    let env = stack::up_with(false, false).await?;
    let result = measure(&paths, &clock, &env, smoke, started, built).await;
    if !was_up {
        clock.say("stopping the stack the bench started");
        match tokio::task::spawn_blocking(stack::down).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("stack down failed: {e:#}"),
            Err(e) => eprintln!("stack down panicked: {e}"),
        }
    }
    result
}

/// What the measurements run on.
struct Built {
    /// The function binaries.
    bin_dir: PathBuf,
    /// The xtask binary that measures (release in a full run).
    measurer: PathBuf,
    /// The arm64 release zips (full run).
    zips: anyhow::Result<Vec<report::Zip>>,
}

/// Smoke: the debug binaries (built by the stack, brought up to date here). Full: the host build of the functions and of xtask in the
/// `measure` profile (release without LTO, see `Cargo.toml`),
/// with the arm64 zips (`cargo xtask package`) building in the background meanwhile, so the two builds share the
/// cores; both are finished before anything is measured.
async fn build(paths: &Paths, clock: &Clock, smoke: bool, logs: &Path) -> anyhow::Result<Built> {
    if smoke {
        let bin_dir = paths.root.join("target").join("debug");
        // Always: a binary left from before an edit would be measured otherwise (a no-op when they are current).
        cargo_build(paths, clock, &[], None).await?;
        return Ok(Built {
            bin_dir,
            measurer: std::env::current_exe().context("cannot find the xtask executable")?,
            zips: Ok(Vec::new()),
        });
    }
    let package = Package::start(paths, clock, &logs.join("package.log"))?;
    let build_dir = paths.root.join(BUILD_DIR);
    cargo_build(
        paths,
        clock,
        &["--profile", "measure", "--bin", "xtask"],
        Some(&build_dir),
    )
    .await?;
    let zips = package.finish(clock).await;
    let release = build_dir.join("measure");
    Ok(Built {
        bin_dir: release.clone(),
        measurer: release.join("xtask"),
        zips,
    })
}

/// Writes the plan, runs the measuring process on it, and turns what it measured into the report.
async fn measure(
    paths: &Paths,
    clock: &Clock,
    env: &StackEnv,
    smoke: bool,
    started: Instant,
    built: Built,
) -> anyhow::Result<()> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let dir = paths.root.join("target").join("bench");
    let Built {
        bin_dir,
        measurer,
        zips,
    } = built;
    // The second S3 implementation of the transfer figure; without it that figure is reported for moto only, and
    // the report says what is missing.
    let buckets = [aws::WORKSPACE_BUCKET, aws::LIBRARY_BUCKET];
    let s3s = match s3s::S3sFs::start(paths, clock, &dir.join("logs"), &buckets).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("bench: s3s-fs is not available: {e:#}");
            None
        }
    };
    let mut stores = vec![plan::StoreSpec {
        name: stack::moto::NAME.to_owned(),
        endpoint: None,
    }];
    stores.extend(s3s.as_ref().map(|s| plan::StoreSpec {
        name: s3s::NAME.to_owned(),
        endpoint: Some(s.endpoint.clone()),
    }));
    let plan = plan::Plan {
        smoke,
        stores,
        bin_dir,
        out: dir.join("measured.json"),
        logs: dir.join("logs"),
        function_env: functions::env_keys()
            .filter(|k| !NOT_FOR_BENCH.contains(k))
            .filter_map(|k| Some((k.to_string(), env.get(k)?.to_owned())))
            .collect(),
        sizes: if smoke {
            plan::Sizes::smoke()
        } else {
            plan::Sizes::full()
        },
    };
    let measured = run_measurer(paths, clock, env, &plan, &measurer).await;
    if let Some(s3s) = s3s {
        s3s.stop().await;
    }
    let measured = measured?;

    let zips = zips.unwrap_or_else(|e| {
        eprintln!("bench: the release zips are missing: {e:#}");
        Vec::new()
    });
    let seconds = started.elapsed().as_secs_f64();
    let report = report::build(&measured, &zips, &plan, &started_at, seconds);
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    report::print_table(&report);
    clock.say(format!("report written to {}", path.display()));
    let problems = report::problems(&report, smoke);
    if !problems.is_empty() {
        bail!("the bench is incomplete: {}", problems.join("; "));
    }
    Ok(())
}

/// `<measurer> bench --plan <file>` with the stack's environment and a capture listener of its own as the
/// functions' `FAL_WEBHOOK_URL`; returns what it measured.
async fn run_measurer(
    paths: &Paths,
    clock: &Clock,
    env: &StackEnv,
    plan: &plan::Plan,
    measurer: &Path,
) -> anyhow::Result<child::Measured> {
    let [capture_port] =
        free_ports::<1>().context("cannot find a free port for the webhook capture")?;
    let capture_url = format!("http://127.0.0.1:{capture_port}/hook");
    let plan_path = paths.root.join("target").join("bench").join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec_pretty(plan)?)?;
    let _ = std::fs::remove_file(&plan.out);

    let step = clock.step();
    clock.say(format!(
        "measuring with {} (functions from {})",
        measurer.display(),
        plan.bin_dir.display()
    ));
    let status = tokio::process::Command::from(without_cargo_vars(Command::new(measurer)))
        .args(["bench", "--plan"])
        .arg(&plan_path)
        .current_dir(&paths.root)
        .envs(env.iter())
        .env("FAL_WEBHOOK_URL", &capture_url)
        // One bench user keeps hundreds of jobs open at once; the per-user bound is not what is measured.
        .env("MAX_OPEN_JOBS_PER_USER", "1000000")
        .stdin(Stdio::null())
        .status()
        .await
        .context("cannot start the measuring process")?;
    clock.done(step, format!("measurements ({status})"));
    let bytes = std::fs::read(&plan.out).with_context(|| {
        format!(
            "the measuring process ({status}) wrote no {}",
            plan.out.display()
        )
    })?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// `cargo build <args> --bin fal-image --bin fal-webhook --bin bench-hello`, into `target_dir` when given.
async fn cargo_build(
    paths: &Paths,
    clock: &Clock,
    args: &[&str],
    target_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let step = clock.step();
    let mut cmd = without_cargo_vars(Command::new(cargo()));
    cmd.args(["build", "--quiet"])
        .args(args)
        .args(bin_args(&FUNCTIONS))
        .args(["--bin", init::HELLO])
        .current_dir(&paths.root)
        .stdin(Stdio::null());
    if let Some(dir) = target_dir {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let described = format!(
        "cargo build {} {} --bin {}{}",
        args.join(" "),
        FUNCTIONS.map(|f| format!("--bin {f}")).join(" "),
        init::HELLO,
        target_dir
            .map(|d| format!(" (CARGO_TARGET_DIR={})", d.display()))
            .unwrap_or_default()
    );
    clock.say(&described);
    let status = tokio::process::Command::from(cmd)
        .status()
        .await
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("{described} failed ({status})");
    }
    clock.done(step, "built");
    Ok(())
}

/// `cargo xtask package` running in the background (its own process group, so a failed bench stops all of it),
/// its output going to a log file.
struct Package {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Package {
    fn start(paths: &Paths, clock: &Clock, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let exe = std::env::current_exe().context("cannot find the xtask executable")?;
        let mut cmd = without_cargo_vars(Command::new(exe));
        // Only the functions whose size is a figure.
        cmd.arg("package")
            .args(FUNCTIONS)
            .current_dir(&paths.root)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = tokio::process::Command::from(cmd)
            .spawn()
            .context("cannot run cargo xtask package")?;
        clock.say(format!(
            "cargo xtask package (arm64 release zips) in the background; log: {}",
            log.display()
        ));
        Ok(Package {
            child,
            log: log.to_owned(),
        })
    }

    /// Waits for it, then reads the zips it names (lines `<path>/<function>/bootstrap.zip  6.71 MiB  (arm64)`).
    async fn finish(mut self, clock: &Clock) -> anyhow::Result<Vec<report::Zip>> {
        let step = clock.step();
        let status = self.child.wait().await?;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if !status.success() {
            bail!(
                "cargo xtask package failed ({status}); see {}",
                self.log.display()
            );
        }
        let mut zips = Vec::new();
        for line in text.lines() {
            let Some(path) = line.split_whitespace().next() else {
                continue;
            };
            for f in FUNCTIONS {
                if path.ends_with(&format!("/{f}/bootstrap.zip")) {
                    println!("{line}");
                    let bytes = std::fs::metadata(path)
                        .with_context(|| format!("cannot read {path}"))?
                        .len();
                    let arch = line
                        .rsplit_once('(')
                        .map(|(_, a)| a.trim_end_matches(')').to_owned())
                        .unwrap_or_default();
                    zips.push(report::Zip {
                        function: f.to_owned(),
                        bytes,
                        arch,
                    });
                }
            }
        }
        clock.done(step, "release zips");
        Ok(zips)
    }
}

impl Drop for Package {
    /// A bench that fails before waiting for the package build stops it (cargo and all), by its process group.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Some(pid) = self.child.id()
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}
