//! `cargo xtask bench`: the pipeline's performance figures on the local stack, each measured against its own
//! floor in the same run and repeated (a shared 2-core machine drifts; ratios measured together do not), written
//! to `target/bench/report.json` and printed as a table. `--smoke` runs the same code on debug builds and tiny
//! sizes, inside `cargo xtask test`, so it cannot rot. See BENCHMARKS.md for the method and the latest figures.

mod capture;
mod child;
mod cpu;
mod deliveries;
mod init;
mod memory;
mod procinfo;
mod report;
mod runtime_api;
mod stats;
mod submit;
mod transfer;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

use crate::stack::{self, Clock, Paths, StackEnv, without_cargo_vars};

/// Release builds go here, so the test loop's debug artifacts in `target/debug` stay valid.
const BUILD_DIR: &str = "target/bench-build";
const FUNCTIONS: [&str; 2] = init::FUNCTIONS;
/// The functions' settings passed from the stack to the binaries the bench starts.
const FUNCTION_ENV: [&str; 13] = [
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "APP_SECRET_ID",
    "WORKSPACE_BUCKET",
    "LIBRARY_BUCKET",
    "FAL_WEBHOOK_URL",
    "FAL_JWKS_URL",
    "MEDIA_ALLOWED_HOSTS",
    "MEDIA_ALLOW_HTTP",
    "FAL_RETRY_BASE_MS",
];

/// `cargo xtask bench [--smoke]`, or with `plan`, the measuring process it starts.
pub async fn run(smoke: bool, plan: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(plan) = plan {
        return child::run(&plan).await;
    }
    let started = Instant::now();
    let paths = Paths::new();
    let clock = Clock::new();
    let was_up = stack_answers(&paths).await;
    let env = stack::up(false).await?;
    let result = bench(&paths, &clock, &env, smoke, started).await;
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

/// Whether a stack is up and answering already (then the bench leaves it up).
async fn stack_answers(paths: &Paths) -> bool {
    let Ok(env) = StackEnv::read(&paths.env_file) else {
        return false;
    };
    let Ok(http) = stack::http_client(Duration::from_secs(5)) else {
        return false;
    };
    for url in [
        env.get("FAL_EMULATOR_URL")
            .map(|u| format!("{u}/_emulator/health")),
        env.get("FAL_IMAGE_URL").map(|u| format!("{u}/health")),
    ] {
        let Some(url) = url else { return false };
        match http.get(&url).send().await {
            Ok(r) if r.status().as_u16() < 500 => {}
            _ => return false,
        }
    }
    true
}

async fn bench(
    paths: &Paths,
    clock: &Clock,
    env: &StackEnv,
    smoke: bool,
    started: Instant,
) -> anyhow::Result<()> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let dir = paths.root.join("target").join("bench");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    let (bin_dir, measurer) = if smoke {
        let bin_dir = paths.root.join("target").join("debug");
        if FUNCTIONS.iter().any(|f| !bin_dir.join(f).exists()) {
            cargo_build(paths, clock, &[], None).await?;
        }
        let exe = std::env::current_exe().context("cannot find the xtask executable")?;
        (bin_dir, exe)
    } else {
        let build_dir = paths.root.join(BUILD_DIR);
        cargo_build(
            paths,
            clock,
            &["--release", "--bin", "xtask"],
            Some(&build_dir),
        )
        .await?;
        let release = build_dir.join("release");
        (release.clone(), release.join("xtask"))
    };

    let capture_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for the webhook capture")?
        .port();
    let capture_url = format!("http://127.0.0.1:{capture_port}/hook");
    let plan = child::Plan {
        smoke,
        bin_dir,
        out: dir.join("measured.json"),
        logs: logs.clone(),
        function_env: FUNCTION_ENV
            .iter()
            .filter_map(|k| Some((k.to_string(), env.get(k)?.to_owned())))
            .collect(),
        sizes: if smoke {
            child::Sizes::smoke()
        } else {
            child::Sizes::full()
        },
    };
    let plan_path = dir.join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec_pretty(&plan)?)?;
    let _ = std::fs::remove_file(&plan.out);

    let step = clock.step();
    clock.say(format!(
        "measuring with {} (functions from {})",
        measurer.display(),
        plan.bin_dir.display()
    ));
    let status = tokio::process::Command::from(without_cargo_vars(Command::new(&measurer)))
        .args(["bench", "--plan"])
        .arg(&plan_path)
        .current_dir(&paths.root)
        .envs(env.iter())
        .env("FAL_WEBHOOK_URL", &capture_url)
        .stdin(Stdio::null())
        .status()
        .await
        .context("cannot start the measuring process")?;
    clock.done(step, format!("measurements ({status})"));
    let measured: child::Measured = serde_json::from_slice(
        &std::fs::read(&plan.out)
            .with_context(|| format!("the measuring process wrote no {}", plan.out.display()))?,
    )?;

    let zips = if smoke {
        Vec::new()
    } else {
        let step = clock.step();
        let zips = package_zips(paths, clock).await?;
        clock.done(step, "release zips");
        zips
    };

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

/// `cargo build <args> --bin fal-image --bin fal-webhook`, into `target_dir` when given.
async fn cargo_build(
    paths: &Paths,
    clock: &Clock,
    args: &[&str],
    target_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let step = clock.step();
    let mut cmd = without_cargo_vars(Command::new(
        std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
    ));
    cmd.args(["build", "--quiet"])
        .args(args)
        .args(FUNCTIONS.iter().flat_map(|f| ["--bin", f]))
        .current_dir(&paths.root)
        .stdin(Stdio::null());
    if let Some(dir) = target_dir {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let described = format!(
        "cargo build {} {}{}",
        args.join(" "),
        FUNCTIONS.map(|f| format!("--bin {f}")).join(" "),
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

/// The arm64 release zips, as `cargo xtask package` builds them; sizes read from the files it names.
async fn package_zips(paths: &Paths, clock: &Clock) -> anyhow::Result<Vec<report::Zip>> {
    clock.say("cargo xtask package (release zips for Lambda)");
    let exe = std::env::current_exe().context("cannot find the xtask executable")?;
    let mut child = tokio::process::Command::from(without_cargo_vars(Command::new(exe)))
        .arg("package")
        .current_dir(&paths.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo xtask package")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut zips = Vec::new();
    while let Some(line) = lines.next_line().await? {
        println!("{line}");
        // "<path>/<function>/bootstrap.zip  6.71 MiB  (arm64)"
        let Some(path) = line.split_whitespace().next() else {
            continue;
        };
        for f in FUNCTIONS {
            if path.ends_with(&format!("/{f}/bootstrap.zip")) {
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
    let status = child.wait().await?;
    if !status.success() {
        bail!("cargo xtask package failed ({status})");
    }
    Ok(zips)
}
