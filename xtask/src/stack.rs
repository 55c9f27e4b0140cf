//! The local stack of real parts: PostgreSQL (and PgBouncer with `--pooler`), moto (S3 + Secrets Manager), the
//! fal emulator (also serving the stack's Supabase Auth JWKS) and both functions under `cargo lambda watch`, started
//! in the background with everything they write kept under `target/stack/`. One module per part; this one starts
//! and stops them in order.

pub(crate) mod auth_keys;
pub mod aws;
mod demo;
mod envfile;
mod fal_emulator;
pub(crate) mod functions;
pub mod moto;
mod pg_tls;
mod pooler;
mod postgres;
mod procs;
mod ready;
mod seed;
mod state;
mod supabase;
pub(crate) mod token;
pub(crate) mod tools;
mod watch;

use std::time::Duration;

use anyhow::{Context, bail};
use uuid::Uuid;

pub use envfile::StackEnv;
pub use token::TokenAlg;

use crate::clock::Clock;
use crate::net::{free_ports, http_client};
use crate::paths::Paths;
use auth_keys::AuthFiles;
use aws::AppSecret;
use state::State;

const STOP_GRACE: Duration = Duration::from_secs(10);

/// Starts the stack (or finds it already up) and returns its environment. With `pooler`, the functions reach
/// Postgres through PgBouncer in transaction mode; a stack up in the other mode is restarted.
pub async fn up(pooler: bool) -> anyhow::Result<StackEnv> {
    up_with(pooler, true).await
}

/// [`up`], or without the functions (`with_functions == false`: no debug build of them, no `cargo lambda watch`) for
/// the bench, which runs its own release builds. A stack already up is reused either way; one without functions
/// counts as partly up for the next plain [`up`], which starts it again.
pub async fn up_with(pooler: bool, with_functions: bool) -> anyhow::Result<StackEnv> {
    let paths = Paths::new();
    let clock = Clock::new();
    std::fs::create_dir_all(&paths.logs)
        .with_context(|| format!("cannot create {}", paths.logs.display()))?;

    match State::load(&paths.state) {
        Ok(Some(state)) => {
            let has_pooler = state.process(pooler::NAME).is_some();
            if has_pooler == pooler && answers(&state, &paths, with_functions).await {
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

    match up_fresh(&paths, &clock, pooler, with_functions).await {
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

/// Whether a stack is up and answering (without asking for the functions).
pub async fn is_up() -> bool {
    let paths = Paths::new();
    match State::load(&paths.state) {
        Ok(Some(state)) => answers(&state, &paths, false).await,
        _ => false,
    }
}

/// How to ask a part listening on a port whether it answers.
type ProbeAt = fn(u16) -> ready::Probe;

/// Whether every part recorded in `state` still runs and answers.
async fn answers(state: &State, paths: &Paths, with_functions: bool) -> bool {
    if !paths.env_file.exists() || !AuthFiles::of(paths).exist() {
        return false;
    }
    let mut parts: Vec<(&str, ProbeAt)> = vec![
        (moto::NAME, moto::probe),
        (fal_emulator::NAME, fal_emulator::probe),
    ];
    if with_functions {
        parts.push((watch::NAME, watch::probe));
    }
    let mut probes = Vec::new();
    for (name, probe) in parts {
        match state.process(name) {
            Some(p) if procs::is_ours(p.pid, p.start_ticks) => probes.push(probe(p.port)),
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
    for probe in probes {
        if !probe.answers(&http).await {
            return false;
        }
    }
    true
}

/// The recorded pids of the stack's emulators (moto, the fal emulator), whose CPU use the bench reports.
pub fn emulator_pids() -> Vec<(&'static str, i32)> {
    let Ok(Some(state)) = State::load(&Paths::new().state) else {
        return Vec::new();
    };
    [moto::NAME, fal_emulator::NAME]
        .into_iter()
        .filter_map(|name| Some((name, state.process(name)?.pid)))
        .collect()
}

/// A new stack, part by part; each part is recorded in `state.json` as soon as it runs, so that a failure
/// further on can stop it.
async fn up_fresh(
    paths: &Paths,
    clock: &Clock,
    pooler: bool,
    with_functions: bool,
) -> anyhow::Result<StackEnv> {
    let _ = std::fs::remove_file(&paths.env_file);
    tools::ensure(paths, clock).await?;
    // The Node suite's pinned client packages, so a stack brought up by hand can run it too.
    tools::ensure_node_packages(paths, clock).await?;
    let [pg_port, moto_port, emu_port, watch_port] = free_ports::<4>()?;
    let mut state = State {
        started_at: chrono::Utc::now().to_rfc3339(),
        ..State::default()
    };
    state.save(&paths.state)?;

    let database = postgres::database(paths, pg_port, &mut state, clock).await?;
    let database_url = database.url.clone();
    // PgBouncer: only the functions (through the secret) go through it; tests and migrations stay direct.
    let pooler_url = if pooler {
        Some(pooler::start(paths, &database, &mut state, clock).await?)
    } else {
        None
    };
    let http = http_client(Duration::from_secs(10))?;
    let moto_url = moto::start(paths, moto_port, &mut state, clock, &http).await?;
    let functions_server = pooler_url.as_ref().map_or(&database.server_url, |p| &p.url);
    let secret = AppSecret::generate(database.for_functions(functions_server));
    aws::provision(&moto_url, &secret, clock).await?;
    let emu_url = fal_emulator::url(emu_port);
    prepare_database(&database_url, &emu_url, state.postgres.is_some(), clock).await?;

    // The functions' environment (also used for the build, so watch finds the binaries fresh).
    let function_env = functions::env(&moto_url, emu_port, watch_port);
    if with_functions {
        watch::build(paths, clock, &function_env).await?;
    }
    let step = clock.step();
    let auth = AuthFiles::of(paths);
    let keys = auth.create()?;
    clock.done(
        step,
        format!(
            "auth: ES256 and RS256 signing keys ({}) in {}",
            keys.keys
                .iter()
                .map(|k| format!("{:?} kid {}", k.algorithm(), k.kid()))
                .collect::<Vec<_>>()
                .join(", "),
            auth.signing_keys.display()
        ),
    );
    fal_emulator::start(
        paths, emu_port, &secret, &auth.jwks, &mut state, clock, &http,
    )
    .await?;
    if with_functions {
        watch::start(paths, watch_port, &function_env, &mut state, clock).await?;
    }

    let mut env = StackEnv::default();
    env.set("DATABASE_URL", &database_url);
    for (k, v) in &function_env {
        env.set(k, v.clone());
    }
    fal_emulator::add_to(&mut env, emu_port);
    if with_functions {
        watch::add_to(&mut env, watch_port);
    }
    secret.add_to(&mut env);
    auth.add_to(&mut env);
    seed::add_to(&mut env);
    env.set("STACK_LOG_DIR", paths.logs.display().to_string());
    if let Some(p) = pooler_url {
        pooler::add_to(&mut env, p.tools_url);
    }
    env.write(&paths.env_file)?;
    clock.say(format!(
        "stack up; environment in {} (load it with: set -a; . {}; set +a)",
        paths.env_file.display(),
        paths.env_file.display()
    ));
    Ok(env)
}

/// Supabase's roles and default grants, the migrations, the original's RLS policies, the seed data (with the
/// fal and Replicate providers at `emulator_url`). `own_cluster`: the database is the stack's, not the
/// environment's.
async fn prepare_database(
    database_url: &str,
    emulator_url: &str,
    own_cluster: bool,
    clock: &Clock,
) -> anyhow::Result<()> {
    let step = clock.step();
    supabase::before_migrations(database_url).await?;
    clock.done(
        step,
        "supabase: roles anon, authenticated, service_role; auth.uid(); default grants on public",
    );
    let step = clock.step();
    let applied = gen_pipeline::migrations::apply(database_url)
        .await
        .with_context(|| {
            if own_cluster {
                "migrations failed"
            } else {
                "migrations failed on the DATABASE_URL of the environment (unset it for a throwaway cluster)"
            }
        })?;
    clock.done(step, format!("migrations: {applied} applied"));
    let step = clock.step();
    supabase::after_migrations(database_url).await?;
    clock.done(step, "supabase: the original's RLS policies on its tables");
    let step = clock.step();
    seed::apply(database_url, emulator_url).await?;
    clock.done(
        step,
        format!(
            "seed: fal provider -> {emulator_url}, Replicate provider -> {}, a sync and an async model each",
            fal_emulator::replicate_url(emulator_url)
        ),
    );
    Ok(())
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
    AuthFiles::of(paths).remove();
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
        postgres::clear_leftover(paths);
        AuthFiles::of(paths).remove();
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

/// Every value the app secret of the running stack has held (a test may rotate it); moto must still run.
pub async fn app_secret_versions(env: &StackEnv) -> anyhow::Result<Vec<String>> {
    aws::secret_values(env.require("AWS_ENDPOINT_URL")?).await
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

/// Prints a user JWT for the local stack signed with `alg` (stdout: the token only) after making sure the user
/// exists. Settings come from the environment, else from `stack.env`.
pub async fn token(user_id: Uuid, alg: TokenAlg) -> anyhow::Result<()> {
    let paths = Paths::new();
    let from_env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let file = StackEnv::read(&paths.env_file).ok();
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
    let jwt = token::token_from(lookup, alg, user_id)?;
    token::ensure_user(&lookup("DATABASE_URL")?, user_id).await?;
    println!("{jwt}");
    Ok(())
}

/// One reconciler pass in this process, configured as the functions are (from `stack.env`).
pub async fn reconcile(older_than_secs: u64) -> anyhow::Result<()> {
    let env = StackEnv::read(&Paths::new().env_file)
        .context("the stack is not up (cargo xtask stack up)")?;
    for key in functions::env_keys() {
        // Set before any client of this process reads the environment.
        unsafe { std::env::set_var(key, env.require(key)?) };
    }
    let state = gen_pipeline::AppState::from_env().await?;
    let settings = state.settings().await?;
    let options = gen_pipeline::reconcile::ReconcileOptions {
        older_than: Duration::from_secs(older_than_secs),
        ..state.config.reconcile
    };
    // A pass run by hand has no invocation deadline.
    let time = gen_pipeline::reconcile::PassTime::new(&settings, None);
    let report =
        gen_pipeline::reconcile::reconcile_stale_jobs(&state, &settings, options, time).await;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
