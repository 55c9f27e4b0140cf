//! `cargo xtask test`: every test of the workspace against a fresh stack, then the suites that drive the functions
//! again against a stack whose functions reach Postgres through PgBouncer; in both rounds the Node suite
//! (`e2e/node`, Supabase's own client packages) after the cargo tests; after each round, a scan of the stack's
//! logs for every secret value. Each round brings its stack down whatever happened.

mod secret_scan;

use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cargo::{cargo, without_cargo_vars};
use crate::clock::Clock;
use crate::paths::Paths;
use crate::stack::{self, StackEnv, tools};

/// The adapter, end-to-end, fault-injection, hostile-client and load suites: run again through PgBouncer (as
/// `--workspace` targets, not `-p e2e`: that unifies features differently and would rebuild ~100 crates).
const POOLED_SUITES: [&str; 5] = ["adapters", "e2e", "faults", "hostile", "load"];

/// `cargo test --workspace --no-fail-fast <args>` against a fresh stack, then the [`POOLED_SUITES`] with the
/// same `args` against one with PgBouncer. Returns the exit code: non-zero when anything failed.
pub async fn test(args: Vec<String>) -> anyhow::Result<i32> {
    let clock = Clock::new();
    // Before any stack: a machine without node learns it in a second, not after the first round.
    tools::ensure_node_packages(&Paths::new(), &clock).await?;
    // Ctrl-C reaches cargo test (same process group); we stay to bring the stack down, and skip the next round.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let interrupts = tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
            eprintln!("interrupted: the stack is stopped once the tests have exited");
        }
    });
    let direct = round(&clock, false, &args).await;
    let pooled = match &direct {
        Ok(_) if !interrupted.load(Ordering::SeqCst) => Some(round(&clock, true, &args).await),
        _ => None,
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
            failed(direct)
        }
    };
    clock.say(format!("total {:.1}s, exit code {code}", clock.seconds()));
    Ok(code)
}

/// `code`, or 1 when it is 0: something failed after a run that passed.
fn failed(code: i32) -> i32 {
    if code == 0 { 1 } else { code }
}

/// One round: `up`, cargo test with the stack's environment, the Node suite, the bench's smoke run (direct round
/// only), `down`, then the secret scan of the logs.
async fn round(clock: &Clock, pooler: bool, args: &[String]) -> anyhow::Result<i32> {
    let paths = Paths::new();
    let env = stack::up(pooler).await?;
    let watch_log = paths.logs.join("cargo-lambda-watch.log");
    let log_from = std::fs::metadata(&watch_log).map_or(0, |m| m.len());
    let mut code = cargo_test(clock, &paths, &env, pooler, args).await;
    let node = node_test(clock, &paths, &env).await;
    if node != 0 {
        code = failed(code);
    }
    // The bench's smoke run on the same stack, so the bench cannot rot unnoticed.
    if !pooler {
        clock.say("cargo xtask bench --smoke");
        if let Err(e) = crate::bench::run(true, None).await {
            eprintln!("bench smoke run failed: {e:#}");
            code = failed(code);
        }
    }
    // Every value the app secret held (a test may rotate it), read while moto still runs.
    let secret_versions = stack::app_secret_versions(&env).await;
    let stopped = tokio::task::spawn_blocking(stack::down).await;
    if !scan(clock, &paths, &env, secret_versions) {
        code = failed(code);
    } else if code != 0 {
        // Scanned clean, so safe to print: a 500 that no function wrote comes from the emulator, and this says why.
        print_emulator_errors(&watch_log, log_from);
    }
    match stopped {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("stack down failed: {e:#}");
            code = failed(code);
        }
        Err(e) => {
            eprintln!("stack down panicked: {e}");
            code = failed(code);
        }
    }
    Ok(code)
}

/// Prints the last errors `cargo lambda watch` logged itself since byte `from` of its log.
fn print_emulator_errors(log: &std::path::Path, from: u64) {
    const SHOWN: usize = 30;
    let Ok(bytes) = std::fs::read(log) else {
        return;
    };
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default());
    let errors = emulator_errors(&text);
    if errors.is_empty() {
        return;
    }
    eprintln!(
        "cargo lambda watch logged {} errors of its own this round; the last {}:",
        errors.len(),
        errors.len().min(SHOWN)
    );
    for line in &errors[errors.len().saturating_sub(SHOWN)..] {
        eprintln!("  {}", line.chars().take(300).collect::<String>());
    }
}

/// The emulator's own error lines: they have no timestamp (the functions' lines do), and its records of the 5xx
/// answers functions gave ("response failed") are left out.
fn emulator_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.trim_start().starts_with("ERROR") && !l.contains("response failed"))
        .collect()
}

/// `cargo test --workspace --no-fail-fast [--test <suite>…] <args>`; returns its exit code.
async fn cargo_test(
    clock: &Clock,
    paths: &Paths,
    env: &StackEnv,
    pooler: bool,
    args: &[String],
) -> i32 {
    let mut cargo_args = vec!["test", "--workspace", "--no-fail-fast"];
    if pooler {
        cargo_args.extend(POOLED_SUITES.iter().flat_map(|s| ["--test", s]));
    }
    let command = format!("cargo {} {}", cargo_args.join(" "), args.join(" "));
    clock.say(if pooler {
        format!("{command} (functions through PgBouncer)")
    } else {
        command
    });
    let step = clock.step();
    let status = tokio::process::Command::from(without_cargo_vars(Command::new(cargo())))
        .args(&cargo_args)
        .args(args)
        .current_dir(&paths.root)
        .envs(env.iter())
        .status()
        .await;
    let code = exit_code(status, "cargo test");
    clock.done(step, format!("cargo test exited with {code}"));
    code
}

/// `node --test` in `e2e/node` (its packages installed by [`tools::ensure_node_packages`]) with the stack's
/// environment; returns its exit code.
async fn node_test(clock: &Clock, paths: &Paths, env: &StackEnv) -> i32 {
    clock.say("node --test (e2e/node: @supabase/functions-js, @supabase/storage-js)");
    let step = clock.step();
    let status = tokio::process::Command::new("node")
        .arg("--test")
        .current_dir(tools::node_suite(paths))
        .envs(env.iter())
        .status()
        .await;
    let code = exit_code(status, "node --test");
    clock.done(step, format!("node --test exited with {code}"));
    code
}

/// A child's exit code: its own, 128 + the signal that ended it, or 1 when it could not run.
fn exit_code(status: std::io::Result<ExitStatus>, what: &str) -> i32 {
    match status {
        Ok(s) => s.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
        }),
        Err(e) => {
            eprintln!("cannot run {what}: {e}");
            1
        }
    }
}

/// Searches every log of the stack for the values of `env` and of each version of the app secret; true when
/// none appears.
fn scan(
    clock: &Clock,
    paths: &Paths,
    env: &StackEnv,
    secret_versions: anyhow::Result<Vec<String>>,
) -> bool {
    let found = secret_versions.and_then(|versions| {
        secret_scan::scan(&secret_scan::secret_values(env, &versions), &paths.logs)
    });
    match found {
        Ok(found) if found.is_empty() => {
            clock.say("secret scan: no secret value in any log file of the stack");
            true
        }
        Ok(found) => {
            for (file, name) in &found {
                eprintln!("secret scan: {name} appears in {file}");
            }
            false
        }
        Err(e) => {
            eprintln!("secret scan failed: {e:#}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::emulator_errors;

    #[test]
    fn only_the_emulators_own_errors_are_picked() {
        let log = "\
2026-12-04T15:25:15Z ERROR Lambda runtime invoke{requestId=\"a\"}: a function's error
ERROR response failed classification=Status code: 503 Service Unavailable latency=8 ms
 INFO starting lambda function instance function=\"fal-image\"
ERROR failed to send message to extension: channel closed
 ERROR runtime error err=io";
        assert_eq!(
            emulator_errors(log),
            [
                "ERROR failed to send message to extension: channel closed",
                " ERROR runtime error err=io"
            ]
        );
    }
}
