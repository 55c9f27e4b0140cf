//! The local stack of real parts: PostgreSQL, moto (S3 + Secrets Manager), the fal emulator and both functions
//! under `cargo lambda watch`, started in the background with everything they write kept under `target/stack/`.

mod aws;
mod demo;
mod envfile;
mod pooler;
mod postgres;
mod procs;
mod secret_scan;
mod seed;
mod state;
mod supabase;
mod token;
pub(crate) mod tools;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngCore;
use serde_json::json;
use uuid::Uuid;

pub use envfile::StackEnv;
pub use token::make_jwt;

use procs::ProcRecord;
use state::State;

const MOTO: &str = "moto";
const EMULATOR: &str = "fal-emulator";
const WATCH: &str = "cargo-lambda-watch";
const FUNCTIONS: [&str; 2] = ["fal-image", "fal-webhook"];
const EMULATOR_USER_ID: &str = "emulator-user";
/// How long the functions may take to answer their first request (watch starts each process on demand).
const FUNCTION_READY_TIMEOUT: Duration = Duration::from_secs(300);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where the stack keeps its files: all under `target/`, which `cargo lambda watch` does not watch.
pub struct Paths {
    pub root: PathBuf,
    pub stack: PathBuf,
    pub logs: PathBuf,
    pub venv: PathBuf,
    pub state: PathBuf,
    pub env_file: PathBuf,
}

impl Paths {
    pub fn new() -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest.parent().unwrap_or(manifest).to_path_buf();
        let stack = root.join("target").join("stack");
        Self {
            logs: stack.join("logs"),
            venv: stack.join("venv"),
            state: stack.join("state.json"),
            env_file: stack.join("stack.env"),
            stack,
            root,
        }
    }
}

/// Progress lines stamped with the time since the command started.
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn say(&self, msg: impl std::fmt::Display) {
        println!("[{:>6.1}s] {msg}", self.start.elapsed().as_secs_f64());
    }

    pub fn step(&self) -> Instant {
        Instant::now()
    }

    /// Reports a finished step with its own duration.
    pub fn done(&self, step: Instant, msg: impl std::fmt::Display) {
        self.say(format!("{msg} ({:.1}s)", step.elapsed().as_secs_f64()));
    }
}

/// `n` random bytes, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// An HTTP client for loopback only: no proxy, bounded time.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .context("cannot build the HTTP client")
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Variables `cargo run` sets for xtask itself. Build scripts (ring's, through `cc`) track some of them with
/// `rerun-if-env-changed`, so passing them on to a nested cargo would rebuild half the dependency tree and make
/// every later plain `cargo build` rebuild it again.
fn inherited_cargo_vars() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            k.to_str().is_some_and(|k| {
                k.starts_with("CARGO_PKG_")
                    || matches!(
                        k,
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_MANIFEST_LINKS"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_BIN_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                    )
            })
        })
        .collect()
}

/// `cmd` without the variables of [`inherited_cargo_vars`].
pub(crate) fn without_cargo_vars(mut cmd: Command) -> Command {
    for k in inherited_cargo_vars() {
        cmd.env_remove(k);
    }
    cmd
}

/// `n` distinct free ports on 127.0.0.1, found by binding port 0 and releasing it.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in ports.iter_mut() {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

/// The last `lines` lines of a log file, for error messages.
fn log_tail(path: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

/// Polls `url` with GET until `ready(status)`; fails early if `proc` died, and after `timeout`.
async fn wait_http(
    http: &reqwest::Client,
    url: &str,
    proc: &ProcRecord,
    timeout: Duration,
    ready: fn(reqwest::StatusCode) -> bool,
) -> anyhow::Result<reqwest::StatusCode> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    loop {
        if !procs::is_ours(proc.pid, proc.start_ticks) {
            bail!(
                "{} exited before answering {url}; last lines of {}:\n{}",
                proc.name,
                proc.log,
                log_tail(&proc.log, 30)
            );
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{} did not answer {url} within {timeout:?} ({last}); last lines of {}:\n{}",
                proc.name,
                proc.log,
                log_tail(&proc.log, 30)
            );
        }
        match http
            .get(url)
            .timeout(left.min(Duration::from_secs(120)))
            .send()
            .await
        {
            Ok(r) if ready(r.status()) => return Ok(r.status()),
            Ok(r) => last = format!("last answer {}", r.status()),
            Err(e) => last = format!("last error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn below_500(s: reqwest::StatusCode) -> bool {
    s.as_u16() < 500
}

fn success(s: reqwest::StatusCode) -> bool {
    s.is_success()
}

fn emulator_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn function_url(watch_port: u16, function: &str) -> String {
    format!("http://127.0.0.1:{watch_port}/lambda-url/{function}")
}

/// Starts the stack (or finds it already up) and returns its environment. With `pooler`, the functions reach
/// Postgres through PgBouncer in transaction mode; a stack up in the other mode is restarted.
pub async fn up(pooler: bool) -> anyhow::Result<StackEnv> {
    up_with(pooler, true).await
}

/// [`up`], or without the functions (`functions == false`: no debug build of them, no `cargo lambda watch`) for
/// the bench, which runs its own release builds. A stack already up is reused either way; one without functions
/// counts as partly up for the next plain [`up`], which starts it again.
pub async fn up_with(pooler: bool, functions: bool) -> anyhow::Result<StackEnv> {
    let paths = Paths::new();
    let clock = Clock::new();
    std::fs::create_dir_all(&paths.logs)
        .with_context(|| format!("cannot create {}", paths.logs.display()))?;

    match State::load(&paths.state) {
        Ok(Some(state)) => {
            let has_pooler = state.process(pooler::NAME).is_some();
            if has_pooler == pooler && stack_answers(&state, &paths, functions).await {
                clock.say("stack already up");
                println!("{}", paths.env_file.display());
                return StackEnv::read(&paths.env_file);
            }
            if has_pooler != pooler {
                clock.say(format!(
                    "the stack is up {} PgBouncer: restarting it",
                    if has_pooler { "with" } else { "without" }
                ));
            } else {
                clock.say("a previous stack is partly up: stopping its leftovers");
            }
            stop_stack(&paths, &state, &clock)?;
        }
        Ok(None) => {}
        Err(e) => {
            clock.say(format!("ignoring an unreadable state file: {e:#}"));
            let _ = std::fs::remove_file(&paths.state);
        }
    }

    match up_fresh(&paths, &clock, pooler, functions).await {
        Ok(env) => Ok(env),
        Err(e) => {
            eprintln!("stack up failed: {e:#}");
            eprintln!(
                "stopping what was started; logs stay in {}",
                paths.logs.display()
            );
            if let Err(down_err) = down_at(&paths, &Clock::new()) {
                eprintln!("stopping failed too: {down_err:#}");
            }
            Err(e)
        }
    }
}

/// Whether every part recorded in `state` still runs and answers.
async fn stack_answers(state: &State, paths: &Paths, functions: bool) -> bool {
    if !paths.env_file.exists() {
        return false;
    }
    let mut ports = Vec::new();
    let names: &[&str] = if functions {
        &[MOTO, EMULATOR, WATCH]
    } else {
        &[MOTO, EMULATOR]
    };
    for &name in names {
        match state.process(name) {
            Some(p) if procs::is_ours(p.pid, p.start_ticks) => ports.push(p.port),
            _ => return false,
        }
    }
    if let Some(pg) = &state.postgres
        && !postgres::is_up(pg)
    {
        return false;
    }
    if !pooler::answers(state) {
        return false;
    }
    let Ok(http) = http_client(Duration::from_secs(20)) else {
        return false;
    };
    let mut checks = vec![
        (
            format!("http://127.0.0.1:{}/moto-api/", ports[0]),
            below_500 as fn(_) -> bool,
        ),
        (
            format!("{}/_emulator/health", emulator_url(ports[1])),
            success,
        ),
    ];
    if let Some(watch) = ports.get(2) {
        checks.push((
            format!("{}/health", function_url(*watch, "fal-image")),
            below_500,
        ));
    }
    for (url, ready) in checks {
        match http.get(&url).send().await {
            Ok(r) if ready(r.status()) => {}
            _ => return false,
        }
    }
    true
}

async fn up_fresh(
    paths: &Paths,
    clock: &Clock,
    pooler: bool,
    functions: bool,
) -> anyhow::Result<StackEnv> {
    let _ = std::fs::remove_file(&paths.env_file);
    tools::ensure(paths, clock).await?;

    let [pg_port, moto_port, emu_port, watch_port] = free_ports::<4>()?;
    let mut state = State {
        started_at: chrono::Utc::now().to_rfc3339(),
        ..State::default()
    };
    state.save(&paths.state)?;

    // PostgreSQL
    let database_url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            clock.say(
                "PostgreSQL: using DATABASE_URL from the environment (not managed by the stack)",
            );
            url
        }
        _ => {
            let bin = postgres::ensure_bin_dir(paths, clock).await?;
            postgres::create(paths, &bin, pg_port, &mut state, clock).await?
        }
    };

    // PgBouncer: only the functions (through the secret) go through it; tests and migrations stay direct.
    let functions_database_url = if pooler {
        pooler::start(paths, &database_url, &mut state, clock).await?
    } else {
        database_url.clone()
    };

    // moto
    let step = clock.step();
    let moto_url = format!("http://127.0.0.1:{moto_port}");
    let mut cmd = Command::new(paths.venv.join("bin").join("moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
        .current_dir(&paths.stack);
    let moto = procs::spawn_background(MOTO, moto_port, &mut cmd, &paths.logs.join("moto.log"))?;
    state.processes.push(moto.clone());
    state.save(&paths.state)?;
    let http = http_client(Duration::from_secs(10))?;
    wait_http(
        &http,
        &format!("{moto_url}/moto-api/"),
        &moto,
        Duration::from_secs(60),
        below_500,
    )
    .await?;
    clock.done(
        step,
        format!("moto started on 127.0.0.1:{moto_port} (pid {})", moto.pid),
    );

    let step = clock.step();
    let fal_key = format!("local-fal-key-{}", random_hex(16));
    let webhook_secret = random_hex(32);
    let jwt_secret = random_hex(32);
    let secret_json = json!({
        "FAL_KEY": fal_key,
        "FAL_WEBHOOK_SECRET": webhook_secret,
        "DATABASE_URL": functions_database_url,
        "SUPABASE_JWT_SECRET": jwt_secret,
    })
    .to_string();
    aws::provision(&moto_url, &secret_json).await?;
    clock.done(
        step,
        format!(
            "moto: buckets {}, {} and secret {} created",
            aws::WORKSPACE_BUCKET,
            aws::LIBRARY_BUCKET,
            aws::SECRET_ID
        ),
    );

    // Supabase's roles and default grants, migrations, the original's RLS policies, seed data
    let emu_url = emulator_url(emu_port);
    let step = clock.step();
    supabase::before_migrations(&database_url).await?;
    clock.done(
        step,
        "supabase: roles anon, authenticated, service_role; auth.uid(); default grants on public",
    );
    let step = clock.step();
    let applied = gen_pipeline::migrations::apply(&database_url)
        .await
        .with_context(|| {
            if state.postgres.is_none() {
                "migrations failed on the DATABASE_URL of the environment (unset it for a throwaway cluster)"
            } else {
                "migrations failed"
            }
        })?;
    clock.done(step, format!("migrations: {applied} applied"));
    let step = clock.step();
    supabase::after_migrations(&database_url).await?;
    clock.done(step, "supabase: the original's RLS policies on its tables");
    let step = clock.step();
    seed::apply(&database_url, &emu_url).await?;
    clock.done(
        step,
        format!("seed: fal provider -> {emu_url}, sync and async models"),
    );

    // The functions' environment (also used for the build, so watch finds the binaries fresh).
    let fal_image_url = function_url(watch_port, "fal-image");
    let fal_webhook_url = function_url(watch_port, "fal-webhook");
    let jwks_url = format!("{emu_url}/.well-known/jwks.json");
    let media_hosts = format!("127.0.0.1:{emu_port}");
    let function_env: Vec<(&str, String)> = vec![
        ("AWS_ENDPOINT_URL", moto_url.clone()),
        ("AWS_REGION", aws::REGION.to_string()),
        ("AWS_DEFAULT_REGION", aws::REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", aws::ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", aws::SECRET_KEY.to_string()),
        ("APP_SECRET_ID", aws::SECRET_ID.to_string()),
        ("WORKSPACE_BUCKET", aws::WORKSPACE_BUCKET.to_string()),
        ("LIBRARY_BUCKET", aws::LIBRARY_BUCKET.to_string()),
        ("FAL_WEBHOOK_URL", fal_webhook_url.clone()),
        ("FAL_JWKS_URL", jwks_url.clone()),
        ("MEDIA_ALLOWED_HOSTS", media_hosts.clone()),
        ("MEDIA_ALLOW_HTTP", "true".to_string()),
        // Short backoff so fault tests of sync retries take a second, not seven.
        ("FAL_RETRY_BASE_MS", "100".to_string()),
        // A stalled media fetch gives up after 5 s, not 30, so the slow-media fault test takes seconds.
        ("MEDIA_READ_TIMEOUT_SECS", "5".to_string()),
        ("RUST_LOG", "info".to_string()),
    ];
    let venv_bin = paths.venv.join("bin");
    let path_var = std::env::join_paths(
        std::iter::once(venv_bin.clone()).chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    )
    .context("PATH cannot hold the venv's bin directory")?;

    if functions {
        // Build the functions now, selected as watch's `cargo run --bin X` selects them (by binary, so features
        // unify over the whole workspace like there) and with its environment, so no request waits for a compile.
        let step = clock.step();
        let status = tokio::process::Command::from(without_cargo_vars(Command::new(cargo())))
            .args(["build", "--quiet", "--manifest-path", "Cargo.toml"])
            .args(FUNCTIONS.iter().flat_map(|f| ["--bin", f]))
            .current_dir(&paths.root)
            .envs(function_env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PATH", &path_var)
            .status()
            .await
            .context("cannot run cargo build")?;
        if !status.success() {
            bail!("cargo build of {} failed ({status})", FUNCTIONS.join(", "));
        }
        clock.done(step, format!("built {}", FUNCTIONS.join(", ")));
    }

    // fal emulator
    let step = clock.step();
    let exe = std::env::current_exe().context("cannot find the xtask executable")?;
    let mut cmd = without_cargo_vars(Command::new(exe));
    cmd.args(["fal-emulator", "--listen", &format!("127.0.0.1:{emu_port}")])
        .current_dir(&paths.stack)
        .env("FAL_EMULATOR_KEY", &fal_key)
        .env("FAL_EMULATOR_USER_ID", EMULATOR_USER_ID)
        .env("FAL_EMULATOR_PUBLIC_URL", &emu_url)
        .env("FAL_EMULATOR_RETRY_MS", "300")
        .env("RUST_LOG", "info");
    let emulator = procs::spawn_background(
        EMULATOR,
        emu_port,
        &mut cmd,
        &paths.logs.join("fal-emulator.log"),
    )?;
    state.processes.push(emulator.clone());
    state.save(&paths.state)?;
    wait_http(
        &http,
        &format!("{emu_url}/_emulator/health"),
        &emulator,
        Duration::from_secs(60),
        success,
    )
    .await?;
    clock.done(
        step,
        format!(
            "fal emulator started on 127.0.0.1:{emu_port} (pid {})",
            emulator.pid
        ),
    );

    if functions {
        // The functions under cargo lambda watch
        let step = clock.step();
        let mut cmd = without_cargo_vars(Command::new(venv_bin.join("cargo-lambda")));
        cmd.args([
            "lambda",
            "watch",
            "-A",
            "127.0.0.1",
            "-P",
            &watch_port.to_string(),
        ])
        .args(["--concurrency", "4", "--ignore-changes"])
        .current_dir(&paths.root)
        .envs(function_env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PATH", &path_var);
        let watch = procs::spawn_background(
            WATCH,
            watch_port,
            &mut cmd,
            &paths.logs.join("cargo-lambda-watch.log"),
        )?;
        state.processes.push(watch.clone());
        state.save(&paths.state)?;
        let slow = http_client(FUNCTION_READY_TIMEOUT)?;
        let status = wait_http(
            &slow,
            &format!("{fal_image_url}/health"),
            &watch,
            FUNCTION_READY_TIMEOUT,
            below_500,
        )
        .await?;
        clock.say(format!("fal-image answers GET /health with {status}"));
        let status = wait_http(
            &slow,
            &fal_webhook_url,
            &watch,
            FUNCTION_READY_TIMEOUT,
            below_500,
        )
        .await?;
        clock.say(format!("fal-webhook answers GET with {status}"));
        clock.done(
            step,
            format!(
                "functions up under cargo lambda watch on 127.0.0.1:{watch_port} (pid {})",
                watch.pid
            ),
        );
    }

    let mut env = StackEnv::default();
    env.set("DATABASE_URL", database_url);
    for (k, v) in &function_env {
        if *k != "RUST_LOG" {
            env.set(k, v.clone());
        }
    }
    env.set("FAL_EMULATOR_URL", emu_url);
    env.set("FAL_EMULATOR_USER_ID", EMULATOR_USER_ID);
    if functions {
        env.set("FAL_IMAGE_URL", fal_image_url);
        env.set("LAMBDA_WATCH_URL", format!("http://127.0.0.1:{watch_port}"));
    }
    env.set("FAL_WEBHOOK_SECRET", webhook_secret);
    env.set("FAL_KEY", fal_key);
    env.set("SUPABASE_JWT_SECRET", jwt_secret);
    env.set("SYNC_MODEL_ID", seed::SYNC_MODEL_ID.to_string());
    env.set("ASYNC_MODEL_ID", seed::ASYNC_MODEL_ID.to_string());
    env.set("SYNC_MODEL_KEY", seed::SYNC_MODEL_KEY);
    env.set("ASYNC_MODEL_KEY", seed::ASYNC_MODEL_KEY);
    env.set("STACK_LOG_DIR", paths.logs.display().to_string());
    if pooler {
        env.set("POOLER_DATABASE_URL", functions_database_url);
        env.set("STACK_POOLER", "1");
    }
    env.write(&paths.env_file)?;
    clock.say(format!(
        "stack up; environment in {} (load it with: set -a; . {}; set +a)",
        paths.env_file.display(),
        paths.env_file.display()
    ));
    Ok(env)
}

/// Stops everything `state` records, deletes our cluster, the state file and stack.env; verifies by pid.
fn stop_stack(paths: &Paths, state: &State, clock: &Clock) -> anyhow::Result<()> {
    for p in &state.processes {
        let alive = procs::is_ours(p.pid, p.start_ticks);
        clock.say(format!(
            "stopping {} (pid {}, port {}){}",
            p.name,
            p.pid,
            p.port,
            if alive { "" } else { ": already gone" }
        ));
    }
    if let Some(pg) = &state.postgres {
        clock.say(format!(
            "stopping postgres (port {}) and deleting {}",
            pg.port, pg.base_dir
        ));
    }
    let mut problems = Vec::new();
    let survivors = procs::stop(&state.processes, STOP_GRACE);
    if !survivors.is_empty() {
        problems.push(format!("still running after SIGKILL: {survivors:?}"));
    }
    if let Some(pg) = &state.postgres {
        match postgres::stop(pg, &paths.logs.join("postgres.log")) {
            Ok(()) => {
                for dir in [&pg.socket_dir, &pg.base_dir] {
                    if !dir.is_empty() {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                }
            }
            Err(e) => problems.push(format!("postgres: {e:#}")),
        }
    }
    // Verify with the recorded pids that nothing of the stack remains.
    let left = procs::tracked(&state.processes);
    if !left.is_empty() {
        problems.push(format!("processes of the stack remain: {left:?}"));
    }
    if let Some(pg) = &state.postgres
        && let Some(pid) = pg.postmaster_pid
        && procs::is_ours(pid, pg.postmaster_start_ticks)
    {
        problems.push(format!("postmaster {pid} remains"));
    }
    if !problems.is_empty() {
        bail!("the stack did not stop cleanly: {}", problems.join("; "));
    }
    pooler::remove_files(paths);
    let _ = std::fs::remove_file(&paths.state);
    let _ = std::fs::remove_file(&paths.env_file);
    Ok(())
}

fn down_at(paths: &Paths, clock: &Clock) -> anyhow::Result<()> {
    let state = match State::load(&paths.state) {
        Ok(state) => state,
        Err(e) => {
            clock.say(format!("unreadable state file, removing it: {e:#}"));
            let _ = std::fs::remove_file(&paths.state);
            None
        }
    };
    let Some(state) = state else {
        // Nothing recorded; still clear a cluster directory a crashed run may have left.
        let pg = paths.stack.join("pg");
        if pg.exists() {
            if let Some(bin) = postgres::find_bin_dir() {
                let cluster = state::PgCluster {
                    base_dir: pg.display().to_string(),
                    data_dir: pg.join("data").display().to_string(),
                    socket_dir: String::new(),
                    bin_dir: bin.display().to_string(),
                    port: 0,
                    run_as_postgres: nix::unistd::geteuid().is_root(),
                    postmaster_pid: None,
                    postmaster_start_ticks: 0,
                };
                let _ = postgres::stop(&cluster, &paths.logs.join("postgres.log"));
            }
            let _ = std::fs::remove_dir_all(&pg);
        }
        let _ = std::fs::remove_file(&paths.env_file);
        clock.say("stack is not up");
        return Ok(());
    };
    stop_stack(paths, &state, clock)?;
    clock.say("stack down: no process of it remains (checked by pid)");
    Ok(())
}

/// Stops the stack recorded in `target/stack/state.json`; harmless when nothing is up.
pub fn down() -> anyhow::Result<()> {
    let paths = Paths::new();
    let clock = Clock::new();
    down_at(&paths, &clock)
}

/// `cargo test --workspace <args>` against a fresh stack, then the integration-test binaries again
/// (`cargo test --workspace --test '*' <args>`, the e2e suite among them) against one whose functions reach
/// Postgres through PgBouncer in transaction mode; each round brings its stack down whatever happened. Fails
/// when either round fails.
pub async fn test(args: Vec<String>) -> anyhow::Result<i32> {
    let clock = Clock::new();
    // Ctrl-C reaches cargo test (same process group); we stay to bring the stack down, and skip the next round.
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = interrupted.clone();
    let interrupts = tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("interrupted: the stack is stopped once the tests have exited");
        }
    });
    let direct = test_round(
        &clock,
        false,
        &["test", "--workspace", "--no-fail-fast"],
        &args,
    )
    .await;
    let pooled = match &direct {
        Ok(_) if interrupted.load(std::sync::atomic::Ordering::SeqCst) => None,
        // The adapter, end-to-end, fault-injection and load suites again (as `--workspace` targets, not
        // `-p e2e`: that unifies features differently and would rebuild ~100 crates).
        Ok(_) => Some(
            test_round(
                &clock,
                true,
                &[
                    "test",
                    "--workspace",
                    "--no-fail-fast",
                    "--test",
                    "adapters",
                    "--test",
                    "e2e",
                    "--test",
                    "faults",
                    "--test",
                    "hostile",
                    "--test",
                    "load",
                ],
                &args,
            )
            .await,
        ),
        Err(_) => None,
    };
    interrupts.abort();
    let direct = direct?;
    let code = match pooled {
        None => {
            clock.say("the round through PgBouncer was skipped");
            if direct == 0 { 130 } else { direct }
        }
        Some(Ok(pooled)) => {
            clock.say(format!(
                "direct to Postgres: exit {direct}; through PgBouncer: exit {pooled}"
            ));
            if direct != 0 { direct } else { pooled }
        }
        Some(Err(e)) => {
            eprintln!("the round through PgBouncer failed to start: {e:#}");
            if direct == 0 { 1 } else { direct }
        }
    };
    clock.say(format!(
        "total {:.1}s, exit code {code}",
        clock.start.elapsed().as_secs_f64()
    ));
    Ok(code)
}

/// `up`, `cargo <cargo_args> <args>` with the stack's environment, the bench's smoke run (direct round), `down`,
/// then the secret scan of the logs.
async fn test_round(
    clock: &Clock,
    pooler: bool,
    cargo_args: &[&str],
    args: &[String],
) -> anyhow::Result<i32> {
    let paths = Paths::new();
    let env = up(pooler).await?;
    let command = format!("cargo {} {}", cargo_args.join(" "), args.join(" "));
    clock.say(if pooler {
        format!("{command} (functions through PgBouncer)")
    } else {
        command
    });
    let step = clock.step();
    let status = tokio::process::Command::from(without_cargo_vars(Command::new(cargo())))
        .args(cargo_args)
        .args(args)
        .current_dir(&paths.root)
        .envs(env.iter())
        .status()
        .await;
    let code = match &status {
        Ok(s) => s
            .code()
            .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(s).unwrap_or(0)),
        Err(e) => {
            eprintln!("cannot run cargo test: {e}");
            1
        }
    };
    clock.done(step, format!("cargo test exited with {code}"));
    // The bench's smoke run on the same stack (direct round only), so the bench cannot rot unnoticed.
    let code = if pooler {
        code
    } else {
        clock.say("cargo xtask bench --smoke");
        match crate::bench::run(true, None).await {
            Ok(()) => code,
            Err(e) => {
                eprintln!("bench smoke run failed: {e:#}");
                if code == 0 { 1 } else { code }
            }
        }
    };
    // Every value the app secret held (a test may rotate it), read while moto still runs.
    let secret_values = match env.require("AWS_ENDPOINT_URL") {
        Ok(endpoint) => aws::secret_values(endpoint).await,
        Err(e) => Err(e),
    };
    let stopped = tokio::task::spawn_blocking(down).await;
    let scanned = secret_values.and_then(|versions| {
        secret_scan::scan(&secret_scan::secret_values(&env, &versions), &paths.logs)
    });
    let code = match scanned {
        Ok(found) if found.is_empty() => {
            clock.say("secret scan: no secret value in any log file of the stack");
            code
        }
        Ok(found) => {
            for (file, name) in &found {
                eprintln!("secret scan: {name} appears in {file}");
            }
            if code == 0 { 1 } else { code }
        }
        Err(e) => {
            eprintln!("secret scan failed: {e:#}");
            if code == 0 { 1 } else { code }
        }
    };
    Ok(match stopped {
        Ok(Ok(())) => code,
        Ok(Err(e)) => {
            eprintln!("stack down failed: {e:#}");
            if code == 0 { 1 } else { code }
        }
        Err(e) => {
            eprintln!("stack down panicked: {e}");
            if code == 0 { 1 } else { code }
        }
    })
}

/// `up`, then one round trip through the emulator and the webhook function. Leaves the stack up.
pub async fn demo() -> anyhow::Result<()> {
    let clock = Clock::new();
    let env = up(false).await?;
    let result = demo::run(&env, &clock).await;
    clock.say("the stack is left up (stop it with `cargo xtask stack down`)");
    result
}

/// Applies the migrations to DATABASE_URL from the environment.
pub async fn migrate_from_env() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let applied = gen_pipeline::migrations::apply(&url)
        .await
        .context("migrations failed")?;
    println!("{applied} migration(s) applied");
    Ok(())
}

/// Prints a user JWT for the local stack (stdout: the token only) after making sure the user exists.
pub async fn token(user_id: Uuid) -> anyhow::Result<()> {
    let paths = Paths::new();
    let from_env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let file = if from_env("SUPABASE_JWT_SECRET").is_some() && from_env("DATABASE_URL").is_some() {
        None
    } else {
        StackEnv::read(&paths.env_file).ok()
    };
    let lookup = |key: &str| -> anyhow::Result<String> {
        from_env(key)
            .or_else(|| file.as_ref().and_then(|f| f.get(key)).map(str::to_string))
            .with_context(|| {
                format!(
                    "{key} is not set and {} does not have it (run `cargo xtask stack up`)",
                    paths.env_file.display()
                )
            })
    };
    let secret = lookup("SUPABASE_JWT_SECRET")?;
    let database_url = lookup("DATABASE_URL")?;
    token::ensure_user(&database_url, user_id).await?;
    println!("{}", make_jwt(&secret, user_id, Duration::from_secs(3600))?);
    Ok(())
}

/// One reconciler pass in this process, configured as the functions are (from `stack.env`).
pub async fn reconcile(older_than_secs: u64) -> anyhow::Result<()> {
    let env = StackEnv::read(&Paths::new().env_file)
        .context("the stack is not up (cargo xtask stack up)")?;
    for key in [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "APP_SECRET_ID",
        "WORKSPACE_BUCKET",
        "LIBRARY_BUCKET",
        "FAL_JWKS_URL",
        "MEDIA_ALLOWED_HOSTS",
        "MEDIA_ALLOW_HTTP",
    ] {
        // Set before any client of this process reads the environment.
        unsafe { std::env::set_var(key, env.require(key)?) };
    }
    let state = gen_pipeline::AppState::from_env().await?;
    let settings = state.settings().await?;
    let options = gen_pipeline::reconcile::ReconcileOptions {
        older_than: Duration::from_secs(older_than_secs),
        ..gen_pipeline::reconcile::ReconcileOptions::from_env()
    };
    let report = gen_pipeline::reconcile::reconcile_stale_jobs(&state, &settings, options).await;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
