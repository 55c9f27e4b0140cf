//! Fault injection into the running local stack: real processes stopped, killed and restarted while the
//! webhooks are being delivered, on fal's jobs and on Replicate's. Whatever the fault, each job ends in the right
//! terminal state exactly once (after the provider's retries or a reconciler pass): a completed job has one
//! object, one asset row and one usage row; an open one has no object and no asset.
//!
//! A test binary of its own, so no fault can reach the tests of the main `e2e` binary (cargo runs test binaries
//! one after another). Inside it the faults take turns (`FAULTS`), and every fault is undone by a guard, even
//! when an assertion fails: a stopped process is continued, a stopped Postgres is started again (and recorded
//! in the stack's state), and after a function process is killed `cargo lambda watch` is restarted as it ran,
//! since it never replaces a killed instance.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use e2e::*;

/// One fault at a time: the stack is shared by every test of this binary.
static FAULTS: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

const MIB: u64 = 1024 * 1024;
/// The completion claim's lease and a margin.
const LEASE_PLUS: Duration = Duration::from_secs(gen_pipeline::completion::LEASE.as_secs() + 1);

// ---------------------------------------------------------------------------------------------------------
// The stack's processes, from `target/stack/state.json`
// ---------------------------------------------------------------------------------------------------------

mod stack {
    use super::*;

    pub fn state_path() -> PathBuf {
        e2e::common::workspace_root().join("target/stack/state.json")
    }

    pub fn state() -> Value {
        let path = state_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: start the stack with `cargo xtask stack up`",
                path.display()
            )
        });
        serde_json::from_str(&text).unwrap()
    }

    /// (state, parent pid, start time in clock ticks) from `/proc/<pid>/stat`.
    pub fn stat(pid: i32) -> Option<(char, i32, u64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some((
            f.first()?.chars().next()?,
            f.get(1)?.parse().ok()?,
            f.get(19)?.parse().ok()?,
        ))
    }

    /// The pid of a process the stack started, checked to be that very process (not a reused pid).
    pub fn pid_of(name: &str) -> i32 {
        let state = state();
        let p = state["processes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .unwrap_or_else(|| panic!("no {name} in {}", state_path().display()));
        let pid = p["pid"].as_i64().unwrap() as i32;
        let ticks = p["start_ticks"].as_u64().unwrap_or(0);
        let (s, _, started) =
            stat(pid).unwrap_or_else(|| panic!("{name} (pid {pid}) is not running"));
        assert!(
            s != 'Z' && (ticks == 0 || started == ticks),
            "pid {pid} is not the stack's {name}"
        );
        pid
    }

    pub fn signal(pid: i32, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// A process held with SIGSTOP; continued when dropped.
    pub struct Stopped {
        pub pid: i32,
        pub since: Instant,
    }

    impl Stopped {
        pub fn new(pid: i32) -> Self {
            signal(pid, "STOP");
            Stopped {
                pid,
                since: Instant::now(),
            }
        }
    }

    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid.to_string()])
                .status();
            eprintln!(
                "pid {} continued after {:.1} s stopped",
                self.pid,
                self.since.elapsed().as_secs_f64()
            );
        }
    }

    /// Processes running `binary` started by the stack's `cargo lambda watch` (not another stack's).
    pub fn functions(binary: &str) -> Vec<i32> {
        let watch = pid_of("cargo-lambda-watch");
        processes_running(binary)
            .into_iter()
            .filter(|pid| stat(*pid).is_some_and(|(s, ppid, _)| ppid == watch && s != 'Z'))
            .collect()
    }

    /// The stack's `cargo lambda watch` as it runs (program, arguments, environment, directory, log), to be
    /// started again the same way. Needed after a function process was SIGKILLed: watch (cargo-lambda 1.9.2)
    /// keeps counting the dead instance and never replaces it, so each kill would cost the stack one instance
    /// of that function for good. Restarted when dropped if the test has not done it.
    pub struct Watch {
        pid: i32,
        argv: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        cwd: PathBuf,
        log: PathBuf,
        restarted: bool,
    }

    impl Watch {
        pub fn capture() -> Self {
            let pid = pid_of("cargo-lambda-watch");
            let split = |bytes: Vec<u8>| -> Vec<OsString> {
                bytes
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| OsString::from_vec(a.to_vec()))
                    .collect()
            };
            let argv = split(std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
            let env = split(std::fs::read(format!("/proc/{pid}/environ")).unwrap())
                .into_iter()
                .filter_map(|kv| {
                    let kv = kv.into_vec();
                    let eq = kv.iter().position(|b| *b == b'=')?;
                    Some((
                        OsString::from_vec(kv[..eq].to_vec()),
                        OsString::from_vec(kv[eq + 1..].to_vec()),
                    ))
                })
                .collect();
            let state = state();
            let log = state["processes"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "cargo-lambda-watch"))
                .and_then(|p| p["log"].as_str())
                .map(PathBuf::from)
                .unwrap();
            Watch {
                pid,
                argv,
                env,
                cwd: std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
                log,
                restarted: false,
            }
        }

        fn gone(pid: i32) -> bool {
            stat(pid).is_none_or(|(s, _, _)| s == 'Z')
        }

        /// SIGTERM (watch stops its function processes), then the same command again; the new pid is recorded
        /// in the stack's state, and both functions are warmed as `stack up` does.
        pub fn restart(&mut self) -> Result<(), String> {
            self.restarted = true;
            let children: Vec<i32> = functions("fal-image")
                .into_iter()
                .chain(functions("fal-webhook"))
                .collect();
            signal(self.pid, "TERM");
            let started = Instant::now();
            while !(Self::gone(self.pid) && children.iter().all(|c| Self::gone(*c))) {
                if started.elapsed() > Duration::from_secs(10) {
                    for p in std::iter::once(&self.pid).chain(&children) {
                        if !Self::gone(*p) {
                            let _ = Command::new("kill")
                                .args(["-KILL", &p.to_string()])
                                .status();
                        }
                    }
                }
                if started.elapsed() > Duration::from_secs(20) {
                    return Err("the old watch does not go away".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(&self.log)
                .map_err(|e| e.to_string())?;
            use std::io::Write as _;
            let _ = writeln!(
                log,
                "=== {} restarted by the e2e faults test after a SIGKILL of a function process",
                chrono::Utc::now().to_rfc3339()
            );
            let mut cmd = Command::new(&self.argv[0]);
            cmd.args(&self.argv[1..])
                .env_clear()
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&self.cwd)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().map_err(|e| e.to_string())?;
            let pid = child.id() as i32;
            // Not waited for: it belongs to the stack, like the watch `stack up` started.
            drop(child);
            let ticks = stat(pid).map(|s| s.2).unwrap_or(0);
            let path = state_path();
            let mut state = state();
            if let Some(p) = state["processes"]
                .as_array_mut()
                .and_then(|ps| ps.iter_mut().find(|p| p["name"] == "cargo-lambda-watch"))
            {
                p["pid"] = json!(pid);
                p["start_ticks"] = json!(ticks);
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&state).unwrap())
                .map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            self.pid = pid;
            for (url, ready) in [
                (format!("{}/health", stack_var("FAL_IMAGE_URL")), 200..300),
                (stack_var("FAL_WEBHOOK_URL"), 200..500),
            ] {
                let started = Instant::now();
                loop {
                    if get_status(&url).is_some_and(|s| ready.contains(&s)) {
                        break;
                    }
                    if started.elapsed() > Duration::from_secs(300) {
                        return Err(format!("{url} does not answer after the restart"));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            eprintln!("cargo lambda watch restarted as pid {pid}, functions answer");
            Ok(())
        }
    }

    impl Drop for Watch {
        fn drop(&mut self) {
            if !self.restarted
                && let Err(e) = self.restart()
            {
                eprintln!("COULD NOT RESTART CARGO LAMBDA WATCH: {e}");
            }
        }
    }

    /// Status of a plain `GET` (blocking, so a `Drop` can use it); `None` when there is no answer.
    fn get_status(url: &str) -> Option<u16> {
        use std::io::{Read as _, Write as _};
        let u = url::Url::parse(url).ok()?;
        let addr = format!("{}:{}", u.host_str()?, u.port_or_known_default()?);
        let mut s =
            std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
        write!(
            s,
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
            u.path()
        )
        .ok()?;
        let mut head = [0u8; 32];
        let n = s.read(&mut head).ok()?;
        String::from_utf8_lossy(&head[..n])
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// CPU time the process has used so far, in ns (`/proc/<pid>/schedstat`).
    pub fn cpu_ns(pid: i32) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

// ---------------------------------------------------------------------------------------------------------
// The stack's own Postgres cluster
// ---------------------------------------------------------------------------------------------------------

mod pg {
    use super::*;

    pub struct Cluster {
        base_dir: String,
        data_dir: String,
        bin_dir: String,
        run_as_postgres: bool,
        /// The postmaster's arguments after `-D <data dir>`, quoted for the shell `pg_ctl -o` goes through.
        options: String,
    }

    /// The stack's cluster. A stack on a DATABASE_URL it was given fails the test: it cannot play the fault, and a
    /// skipped test would pass without testing anything.
    pub fn cluster() -> Cluster {
        let state = stack::state();
        let Some(pg) = state.get("postgres").filter(|p| !p.is_null()) else {
            panic!(
                "the stack runs on a DATABASE_URL it was given, which these faults cannot stop: run them on the \
                 stack's own Postgres (DATABASE_URL unset at `cargo xtask stack up`)"
            );
        };
        let s = |k: &str| pg[k].as_str().unwrap().to_owned();
        let data_dir = s("data_dir");
        let pid = postmaster_pid(&data_dir).expect("the stack's postgres is not running");
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let mut options = Vec::new();
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            if a == "-D" {
                it.next();
            } else {
                options.push(format!("'{}'", a.replace('\'', r"'\''")));
            }
        }
        Cluster {
            base_dir: s("base_dir"),
            bin_dir: s("bin_dir"),
            run_as_postgres: pg["run_as_postgres"].as_bool().unwrap_or(false),
            options: options.join(" "),
            data_dir,
        }
    }

    // Read as xtask's stack reads it (xtask/src/stack/postgres.rs): a binary crate, which tests cannot link.
    fn postmaster_pid(data_dir: &str) -> Option<i32> {
        std::fs::read_to_string(Path::new(data_dir).join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    impl Cluster {
        /// `pg_ctl` as the stack runs it: as `postgres` when we are root, output to the stack's postgres log.
        fn pg_ctl(&self) -> Command {
            let exe = Path::new(&self.bin_dir).join("pg_ctl");
            let mut cmd = if self.run_as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(exe);
                c
            } else {
                Command::new(exe)
            };
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(PathBuf::from(stack_var("STACK_LOG_DIR")).join("postgres.log"))
                .unwrap();
            cmd.current_dir(&self.base_dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .arg("-D")
                .arg(&self.data_dir);
            cmd
        }

        pub fn running(&self) -> bool {
            self.pg_ctl()
                .arg("status")
                .status()
                .is_ok_and(|s| s.success())
        }

        pub fn stop_fast(&self) {
            let status = self
                .pg_ctl()
                .args(["-m", "fast", "-w", "-t", "30", "stop"])
                .status()
                .unwrap();
            assert!(status.success(), "pg_ctl stop: {status}");
        }

        /// Starts the cluster with the options it ran with, and records the new postmaster in the stack's
        /// state so that `stack up` still finds the stack up and `stack down` stops it.
        pub fn start(&self) -> Result<(), String> {
            let status = self
                .pg_ctl()
                .arg("-o")
                .arg(&self.options)
                .args(["-w", "-t", "60", "start"])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("pg_ctl start: {status}"));
            }
            let pid = postmaster_pid(&self.data_dir).ok_or("no postmaster.pid")?;
            let ticks = stack::stat(pid).map(|s| s.2).unwrap_or(0);
            let path = stack::state_path();
            let mut state = stack::state();
            state["postgres"]["postmaster_pid"] = json!(pid);
            state["postgres"]["postmaster_start_ticks"] = json!(ticks);
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&state).unwrap())
                .map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
            Ok(())
        }
    }

    /// The cluster stopped (`pg_ctl stop -m fast`); started again when dropped if the test has not.
    pub struct Stopped {
        pub cluster: Cluster,
        pub since: Instant,
    }

    impl Stopped {
        pub fn new(cluster: Cluster) -> Self {
            let since = Instant::now();
            let stopped = Stopped { cluster, since };
            stopped.cluster.stop_fast();
            stopped
        }
    }

    impl Drop for Stopped {
        fn drop(&mut self) {
            if self.cluster.running() {
                return;
            }
            match self.cluster.start() {
                Ok(()) => eprintln!(
                    "postgres started again after {:.1} s down",
                    self.since.elapsed().as_secs_f64()
                ),
                Err(e) => eprintln!("COULD NOT START POSTGRES AGAIN: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Jobs, deliveries, checks
// ---------------------------------------------------------------------------------------------------------

/// The job's completion claim: (lease still running, takeovers so far), if any.
async fn claim(job_id: &str) -> Option<(bool, i32)> {
    let id = Uuid::parse_str(job_id).unwrap();
    let rows = db()
        .await
        .query(
            "SELECT lease_expires_at > now(), attempts FROM public.job_completion_claims WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    rows.first().map(|r| (r.get(0), r.get(1)))
}

/// Waits until a webhook holds the job's claim, i.e. is working on it (fetching and storing the media).
async fn wait_claimed(job_id: &str, timeout: Duration) -> Instant {
    let started = Instant::now();
    loop {
        if claim(job_id).await.is_some() {
            return Instant::now();
        }
        assert!(
            started.elapsed() < timeout,
            "no webhook claimed job {job_id} within {timeout:?}: {}",
            job(job_id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job under a fault: its user, its ids, and when the test began (its deliveries are logged relative to it).
struct Faulted {
    provider: Provider,
    t0: u64,
    user_id: Uuid,
    jwt: String,
    job_id: String,
    request_id: String,
}

impl Faulted {
    /// A fresh user's queued job on `provider` with these directives.
    async fn submit(provider: Provider, text: &str, directives: &str) -> Faulted {
        let t0 = unix_ms();
        let (user_id, jwt) = user().await;
        let (job_id, request_id) = provider.queued(&jwt, text, directives).await;
        Faulted {
            provider,
            t0,
            user_id,
            jwt,
            job_id,
            request_id,
        }
    }

    /// A job whose media (`size` bytes) the provider serves at 4 MiB/s, once a webhook has claimed it, i.e. is
    /// transferring it; with when it was claimed.
    async fn transferring(
        provider: Provider,
        text: &str,
        size: u64,
        directives: &str,
    ) -> (Faulted, Instant) {
        let directives = format!("#media-bytes={size} #media-rate={} {directives}", 4 * MIB);
        let job = Faulted::submit(provider, text, &directives).await;
        let claimed = wait_claimed(&job.job_id, Duration::from_secs(30)).await;
        (job, claimed)
    }

    /// The provider's attempts once deliveries `1..=n` have settled, logged.
    async fn settled(&self, n: u64, timeout: Duration) -> Vec<Value> {
        let attempts = self
            .provider
            .settled_deliveries(&self.request_id, n, timeout)
            .await;
        eprintln!("deliveries:\n{}", describe(&attempts, self.t0));
        attempts
    }

    /// After the fault: the provider's deliveries settle, reconciler passes run while the job is open, and the job is
    /// completed exactly once with no other object of its user. Returns the attempts, the passes and the job row.
    async fn completes_once(&self, n: u64, timeout: Duration) -> (Vec<Value>, usize, Value) {
        let attempts = self.settled(n, timeout).await;
        let passes = reconcile_if_open(&self.job_id, 2).await;
        let j = assert_exactly_once(self.user_id, &self.job_id, "completed").await;
        assert_eq!(all_objects_of_user(self.user_id).await.len(), 1);
        (attempts, passes, j)
    }

    /// Multipart uploads under the job's key prefix that were neither completed nor aborted.
    async fn incomplete_uploads(&self) -> Vec<String> {
        let out = s3()
            .await
            .list_multipart_uploads()
            .bucket(stack_var("WORKSPACE_BUCKET"))
            .prefix(format!("{}/{}", self.user_id, self.job_id))
            .send()
            .await
            .unwrap();
        out.uploads()
            .iter()
            .map(|u| u.key().unwrap_or_default().to_owned())
            .collect()
    }

    async fn report(&self, what: &str, attempts: &[Value], passes: usize) {
        eprintln!(
            "{what}: {} attempts, {} media fetches, {passes} reconciler passes",
            attempts.len(),
            self.record().await["media_fetches"]
        );
    }

    /// The request as the emulator holds it.
    async fn record(&self) -> Value {
        self.provider.request(&self.request_id).await
    }
}

/// One line per attempt: delivery.attempt, status or error, duration, when (relative to `t0`).
fn describe(attempts: &[Value], t0_ms: u64) -> String {
    attempts
        .iter()
        .map(|a| {
            let outcome = match a["http_status"].as_u64() {
                Some(s) => s.to_string(),
                None => a["error"]
                    .as_str()
                    .unwrap_or("?")
                    .chars()
                    .take(60)
                    .collect(),
            };
            format!(
                "  d{}.{} at +{:.1}s -> {outcome} in {} ms",
                a["delivery"],
                a["attempt"],
                (a["started_at_ms"].as_u64().unwrap_or(0) as f64 - t0_ms as f64) / 1000.0,
                a["duration_ms"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One reconciler pass that sees only this job: it is made 10 days old (and last checked as long ago), beyond
/// any other test's job, and the pass looks at jobs older than 9 days.
async fn reconcile_only(job_id: &str) -> gen_pipeline::reconcile::ReconcileReport {
    let id = Uuid::parse_str(job_id).unwrap();
    age_job(job_id, "10 days").await;
    db().await
        .execute(
            "UPDATE public.job_reconcile_checks SET checked_at = now() - interval '10 days' WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let day = 24 * 3600;
    let report = reconcile_pass(Duration::from_secs(9 * day), Duration::from_secs(30 * day)).await;
    eprintln!("reconciler pass: {report:?}");
    report
}

/// After the provider's deliveries have settled: if the job is still open, waits for any claim's lease to end and runs
/// reconciler passes (each a later run) until it is terminal. Returns how many passes it took.
async fn reconcile_if_open(job_id: &str, max_passes: usize) -> usize {
    let mut passes = 0;
    while job(job_id).await["status"] == "queued" {
        assert!(
            passes < max_passes,
            "job {job_id} still open after {passes} reconciler passes: {}",
            job(job_id).await
        );
        let started = Instant::now();
        while claim(job_id).await.is_some_and(|(live, _)| live) {
            assert!(
                started.elapsed() < LEASE_PLUS,
                "the claim of {job_id} outlived its lease"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        reconcile_only(job_id).await;
        passes += 1;
    }
    passes
}

/// Sizes of every object under the user's prefix (to see that no stray object was written beside the job's).
async fn all_objects_of_user(user_id: Uuid) -> Vec<(String, i64)> {
    objects_of_job(&user_id.to_string(), "").await
}

// ---------------------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------------------

// Every fault is played on a job of each provider: the completion core they share must hold for both.
for_each_provider!(
    s3_frozen_during_a_transfer_completes_the_job_once,
    postgres_restarted_during_deliveries_completes_the_job_once,
    webhook_process_killed_mid_transfer_is_taken_over_after_the_lease,
    a_job_cancelled_after_a_failed_commit_keeps_no_object,
    queue_503_falls_back_to_sync_with_one_job_one_asset_one_usage,
    media_failing_past_the_providers_retries_is_completed_by_the_reconciler,
    media_stalling_past_the_read_timeout_is_retried_and_completed_once,
    a_failed_record_after_the_provider_accepted_still_answers_queued,
    a_database_fault_part_way_through_a_submission_fails_its_job,
    a_holder_whose_claim_was_taken_over_commits_nothing,
);

/// (a) S3 (moto) frozen with SIGSTOP for ~5 s in the middle of a webhook's transfer, then continued.
async fn s3_frozen_during_a_transfer_completes_the_job_once(provider: Provider) {
    let _turn = FAULTS.lock().await;
    const SIZE: u64 = 16 * MIB;
    let (f, claimed) =
        Faulted::transferring(provider, "fault s3", SIZE, "#media-type=video/mp4").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        let moto = stack::Stopped::new(stack::pid_of("moto"));
        eprintln!(
            "moto (pid {}) stopped {:.1} s after the claim",
            moto.pid,
            claimed.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let (attempts, passes, j) = f.completes_once(1, Duration::from_secs(180)).await;
    assert_eq!(j["metadata"]["file_size_bytes"], SIZE);
    // The attempt in flight during the freeze was held by it (~5 s), or ended in an error because of it.
    assert!(
        attempts
            .iter()
            .any(|a| !is_2xx(a) || a["duration_ms"].as_u64().is_some_and(|ms| ms >= 5000)),
        "the fault did not hit: no delivery was held or failed by the frozen store\n{}",
        describe(&attempts, f.t0)
    );
    assert_eq!(f.incomplete_uploads().await, Vec::<String>::new());
    f.report("s3 frozen", &attempts, passes).await;
}

/// (b) Postgres stopped (`pg_ctl stop -m fast`) while a webhook is transferring and deliveries keep coming,
/// then started again with the stack's options.
async fn postgres_restarted_during_deliveries_completes_the_job_once(provider: Provider) {
    let _turn = FAULTS.lock().await;
    let cluster = pg::cluster();
    let (f, claimed) =
        Faulted::transferring(provider, "fault postgres", 12 * MIB, "#deliveries=2").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stopping_ms = unix_ms();
    let down_ms;
    {
        let down = pg::Stopped::new(cluster);
        down_ms = unix_ms();
        eprintln!(
            "postgres stopped {:.1} s after the claim (stop took {:.1} s)",
            claimed.elapsed().as_secs_f64(),
            down.since.elapsed().as_secs_f64()
        );
        // Long enough for the transfer to end and its completion to find the database gone.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let restart = Instant::now();
        down.cluster.start().expect("postgres did not start again");
        eprintln!(
            "postgres up again after {:.1} s down (start took {:.1} s)",
            down.since.elapsed().as_secs_f64(),
            restart.elapsed().as_secs_f64()
        );
    }
    let (attempts, passes, _) = f.completes_once(2, Duration::from_secs(240)).await;
    // The outage met a delivery: one found the database gone (answered 5xx), or one begun before the stop was still
    // in flight once Postgres was down, so its completion waited for the restart (PgBouncer holds a query until
    // the server is back; a delivery needs the database to end with 2xx).
    let spanned = |a: &Value| {
        let (started, took) = (a["started_at_ms"].as_u64(), a["duration_ms"].as_u64());
        started
            .zip(took)
            .is_some_and(|(s, d)| s <= stopping_ms && s + d >= down_ms)
    };
    assert!(
        attempts.iter().any(|a| !is_2xx(a) || spanned(a)),
        "the fault did not hit: no delivery met the outage\n{}",
        describe(&attempts, f.t0)
    );
    assert_eq!(f.incomplete_uploads().await, Vec::<String>::new());
    f.report("postgres restarted", &attempts, passes).await;
}

/// (c) The webhook process SIGKILLed half-way through a large transfer: its claim stays until the lease ends,
/// the provider's retries reach a new process (cargo lambda watch starts one), and one of them takes the job over.
async fn webhook_process_killed_mid_transfer_is_taken_over_after_the_lease(provider: Provider) {
    let _turn = FAULTS.lock().await;
    const SIZE: u64 = 20 * MIB;
    let (f, claimed) =
        Faulted::transferring(provider, "fault kill", SIZE, "#media-type=video/mp4").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The transferring process is the one working (streaming ~4 MiB/s into S3); idle ones wait for their next
    // invocation without using the CPU.
    let before: HashMap<i32, u64> = stack::functions("fal-webhook")
        .into_iter()
        .filter_map(|p| Some((p, stack::cpu_ns(p)?)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let used: HashMap<i32, u64> = before
        .iter()
        .filter_map(|(p, n)| Some((*p, stack::cpu_ns(*p)?.saturating_sub(*n))))
        .collect();
    eprintln!("fal-webhook CPU ns used in 1 s: {used:?}");
    let mut by_use: Vec<(u64, i32)> = used.iter().map(|(p, ns)| (*ns, *p)).collect();
    by_use.sort_unstable_by(|a, b| b.cmp(a));
    let (top, pid) = by_use.first().copied().unwrap_or_default();
    let second = by_use.get(1).map_or(0, |b| b.0);
    assert!(
        top > 5_000_000 && top > 4 * second,
        "no single fal-webhook process is transferring: {used:?}"
    );
    let busy = [pid];
    let mut watch = stack::Watch::capture();
    stack::signal(busy[0], "KILL");
    eprintln!(
        "fal-webhook pid {} killed {:.1} s after the claim",
        busy[0],
        claimed.elapsed().as_secs_f64()
    );
    let killed_at = Instant::now();
    let killed_unix_ms = unix_ms();
    assert_eq!(job(&f.job_id).await["status"], "queued");

    let (attempts, passes, j) = f.completes_once(1, Duration::from_secs(240)).await;
    eprintln!(
        "completed {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(j["metadata"]["file_size_bytes"], SIZE);
    // The killed holder last renewed its claim at most RENEW_EVERY (10 s) before the kill: nobody may take the job
    // over before its lease (30 s) ran out after that.
    let completed_unix_ms: i64 = db()
        .await
        .query_one(
            "SELECT (extract(epoch FROM completed_at) * 1000)::int8 FROM public.jobs WHERE id = $1::text::uuid",
            &[&f.job_id],
        )
        .await
        .unwrap()
        .get(0);
    let after_kill = completed_unix_ms - killed_unix_ms as i64;
    assert!(
        after_kill >= 19_000,
        "completed {after_kill} ms after the kill, before the killed holder's lease could end"
    );
    assert!(
        !stack::functions("fal-webhook").contains(&busy[0]),
        "the killed process is back?"
    );
    // The killed holder could not abort its multipart upload: at most that one is left (in AWS the bucket's
    // AbortIncompleteMultipartUpload lifecycle rule removes it); never an object.
    let left = f.incomplete_uploads().await;
    eprintln!("incomplete multipart uploads left by the killed process: {left:?}");
    assert!(left.len() <= 1, "{left:?}");
    f.report("process killed", &attempts, passes).await;
    // Give the stack its full concurrency back (see `stack::Watch`).
    tokio::task::spawn_blocking(move || watch.restart())
        .await
        .unwrap()
        .expect("cargo lambda watch did not restart");
}

/// (b') Postgres stopped after the media was stored but before the completing commit, then the user cancels
/// the job: the cancelled job must not keep the object stored for it.
async fn a_job_cancelled_after_a_failed_commit_keeps_no_object(provider: Provider) {
    let _turn = FAULTS.lock().await;
    let cluster = pg::cluster();
    let (f, _) =
        Faulted::transferring(provider, "fault commit", 8 * MIB, "#media-type=video/mp4").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let down = pg::Stopped::new(cluster);
        // The transfer ends and stores the object; its commit finds the database gone.
        wait_until(
            "an answered delivery",
            Duration::from_secs(30),
            async || {
                f.record().await["deliveries"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty())
            },
        )
        .await;
        down.cluster.start().expect("postgres did not start again");
    }
    let stored = objects_of_job(&f.user_id.to_string(), &f.job_id).await;
    let status = job(&f.job_id).await["status"].clone();
    eprintln!("after the failed commit: job {status}, objects {stored:?}");
    // What the cancel must clean up: the object stored for a commit that failed, on a job still open.
    assert_eq!(
        (status.as_str(), stored.len()),
        (Some("queued"), 1),
        "{stored:?}"
    );
    // 503 means "retry" (the database just came back); a client retries it.
    let mut answer = (0, Value::Null);
    for _ in 0..10 {
        answer = cancel_job(&f.jwt, &f.job_id).await;
        if answer.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
    f.settled(1, Duration::from_secs(120)).await;
    assert_exactly_once(f.user_id, &f.job_id, "cancelled").await;
}

/// (b'') A holder whose claim another holder took over while it transferred (its lease ran out while its database
/// was unreachable; played here by moving the claim) commits nothing and removes nothing: the job and the object
/// under its key are the other holder's. Then that holder is gone too, and the job is completed once.
async fn a_holder_whose_claim_was_taken_over_commits_nothing(provider: Provider) {
    let _turn = FAULTS.lock().await;
    let (f, _) =
        Faulted::transferring(provider, "fault takeover", 8 * MIB, "#media-type=video/mp4").await;
    let job_id = Uuid::parse_str(&f.job_id).unwrap();
    let moved = "UPDATE public.job_completion_claims
                    SET holder = gen_random_uuid(), attempts = attempts + 1,
                        lease_expires_at = now() + interval '10 minutes'
                  WHERE job_id = $1";
    assert_eq!(db().await.execute(moved, &[&job_id]).await.unwrap(), 1);
    let first = f
        .provider
        .answered_deliveries(&f.request_id, 1, Duration::from_secs(60))
        .await;
    assert_eq!(first[0]["http_status"], 503, "{first:?}");
    assert_eq!(job(&f.job_id).await["status"], "queued");
    assert_eq!(rows("workspace_assets", &f.job_id).await, 0);
    assert_eq!(
        objects_of_job(&f.user_id.to_string(), &f.job_id)
            .await
            .len(),
        1,
        "the object under the job's key is the other holder's too"
    );
    let ended =
        "UPDATE public.job_completion_claims SET lease_expires_at = now() - interval '1 second'
                  WHERE job_id = $1";
    db().await.execute(ended, &[&job_id]).await.unwrap();
    let (attempts, passes, _) = f.completes_once(1, Duration::from_secs(240)).await;
    f.report("claim taken over", &attempts, passes).await;
}

/// (d) The provider's queue answering 503: the submission falls back to the sync route (fal's sync host,
/// Replicate's `Prefer: wait`); one job, one asset, one usage.
async fn queue_503_falls_back_to_sync_with_one_job_one_asset_one_usage(provider: Provider) {
    let _turn = FAULTS.lock().await;
    let (user_id, jwt) = user().await;
    let body = json!({"prompt": prompt("fault queue 503", "#queue-status=503"), "apiModelId": provider.queued_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    let job_id = answer["jobId"].as_str().unwrap();
    let j = assert_exactly_once(user_id, job_id, "completed").await;
    assert_eq!(j["metadata"]["sync_fallback"], true, "{j}");
    assert_eq!(jobs_of_user(user_id).await, 1);
    assert_eq!(all_objects_of_user(user_id).await.len(), 1);
}

/// (e) The media failing longer than the provider keeps retrying: the job stays queued with nothing stored, and
/// the reconciler (a pass per run, each a later run) completes it once the media answers.
async fn media_failing_past_the_providers_retries_is_completed_by_the_reconciler(
    provider: Provider,
) {
    let _turn = FAULTS.lock().await;
    let f = Faulted::submit(provider, "fault media", "#media-fail-first=12").await;
    let (user_id, job_id) = (f.user_id, &f.job_id);
    let attempts = f.settled(1, Duration::from_secs(60)).await;
    assert_eq!(attempts.len(), FAL_TRIES, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|a| a["http_status"].as_u64().is_some_and(|s| s >= 500)),
        "every try should be answered 5xx"
    );
    // The provider gave up: the job is open, nothing is stored, and each failure ended its holder's lease at once,
    // the next try taking the job over (each a holder after another).
    assert_exactly_once(user_id, job_id, "queued").await;
    assert_eq!(claim(job_id).await, Some((false, FAL_TRIES as i32)));
    assert_eq!(f.record().await["media_fetches"], FAL_TRIES);

    let passes = reconcile_if_open(job_id, 5).await;
    // Fetches 11 and 12 still fail (two passes leave it queued), the 13th serves the file.
    assert_eq!(passes, 3);
    let j = assert_exactly_once(user_id, job_id, "completed").await;
    assert_eq!(j["metadata"]["reconciled"], true, "{j}");
    assert_eq!(f.record().await["media_fetches"], 13);
    assert_eq!(all_objects_of_user(user_id).await.len(), 1);
    // A later pass changes nothing.
    reconcile_only(job_id).await;
    assert_exactly_once(user_id, job_id, "completed").await;
}

/// (f) Media stalling beyond the webhook's media read timeout (`MEDIA_READ_TIMEOUT_SECS`, 5 s on the local stack):
/// the fetch gives up, the delivery is answered 5xx with nothing stored, fal's retry fetches again and completes
/// the job once.
async fn media_stalling_past_the_read_timeout_is_retried_and_completed_once(provider: Provider) {
    let _turn = FAULTS.lock().await;
    let timeout_ms: u64 = stack_var("MEDIA_READ_TIMEOUT_SECS").parse::<u64>().unwrap() * 1000;
    let stall_ms = timeout_ms + 4000;
    let directives = format!("#media-slow-ms={stall_ms} #media-slow-first=1");
    let f = Faulted::submit(provider, "fault slow media", &directives).await;
    let (user_id, job_id) = (f.user_id, &f.job_id);
    let attempts = f.settled(1, Duration::from_secs(60)).await;
    let first = &attempts[0];
    assert!(
        first["http_status"].as_u64().is_some_and(|s| s >= 500),
        "the stalled fetch should be answered 5xx: {first}"
    );
    let took = first["duration_ms"].as_u64().unwrap();
    assert!(
        took >= timeout_ms && took < stall_ms,
        "the first delivery took {took} ms: not ended by the {timeout_ms} ms read timeout"
    );
    assert!(is_2xx(attempts.last().unwrap()), "{attempts:?}");
    assert_eq!(f.record().await["media_fetches"], 2);
    assert_exactly_once(user_id, job_id, "completed").await;
    assert_eq!(all_objects_of_user(user_id).await.len(), 1);
}

/// A database fault injected into one job's statements: a trigger, named after the job's marker, refusing the
/// updates of `public.<table>` that `condition` (over `NEW` and `OLD`) picks, so other tests' jobs are untouched.
struct UpdateFault {
    marker: String,
    table: String,
}

impl UpdateFault {
    async fn inject(
        db: &tokio_postgres::Client,
        marker: &str,
        table: &str,
        condition: &str,
    ) -> Self {
        db.batch_execute(&format!(
            "CREATE FUNCTION public.{marker}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF {condition} THEN
                 RAISE EXCEPTION 'injected fault ({marker})';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER {marker} BEFORE UPDATE ON public.{table}
               FOR EACH ROW EXECUTE FUNCTION public.{marker}();"
        ))
        .await
        .unwrap();
        UpdateFault {
            marker: marker.to_owned(),
            table: table.to_owned(),
        }
    }

    async fn remove(self, db: &tokio_postgres::Client) {
        let UpdateFault { marker, table } = self;
        db.batch_execute(&format!(
            "DROP TRIGGER {marker} ON public.{table}; DROP FUNCTION public.{marker}();"
        ))
        .await
        .unwrap();
    }
}

/// (g) Recording the provider's request failing after the provider accepted it (a trigger refuses the run's
/// update for this one job): the caller still gets its `queued` answer, since a 503 would invite a second
/// generation, and the provider's webhook, finding the job by the token in its URL, completes it with its one
/// usage row.
async fn a_failed_record_after_the_provider_accepted_still_answers_queued(provider: Provider) {
    // Its trigger touches only its own job, but its calls must not land while another fault has Postgres down
    // or a function process killed.
    let _turn = FAULTS.lock().await;
    let marker = format!("record_fault_{}", Uuid::new_v4().simple());
    let db = db().await;
    let recording = format!(
        "NEW.request_id IS NOT NULL AND OLD.request_id IS NULL AND EXISTS (
           SELECT 1 FROM public.jobs WHERE id = NEW.job_id AND original_prompt LIKE '%{marker}%')"
    );
    let fault = UpdateFault::inject(&db, &marker, "job_runs", &recording).await;
    let (user_id, jwt) = user().await;
    let body =
        json!({"prompt": prompt(&marker, "#delay-ms=300"), "apiModelId": provider.queued_model()});
    let (status, answer) = generate(&jwt, &body).await;
    fault.remove(&db).await;

    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("queued")),
        "{answer}"
    );
    let job_id = answer["jobId"].as_str().unwrap();
    let recorded =
        "SELECT count(*) FROM public.job_runs WHERE job_id = $1 AND request_id IS NOT NULL";
    assert_eq!(count(recorded, job_id).await, 0, "the fault did not hit");
    wait_terminal(job_id, Duration::from_secs(60)).await;
    assert_exactly_once(user_id, job_id, "completed").await;
    assert_eq!(jobs_of_user(user_id).await, 1);
}

/// (h) The database failing part way through a submission, after its job row is written and before anything runs
/// it (a trigger refuses the fallback's update of this one job, after the queue answered 503): the caller gets a
/// 503 and the job is failed with its run closed, not left open against its owner's bound until the reconcile
/// deadline with nothing running it.
async fn a_database_fault_part_way_through_a_submission_fails_its_job(provider: Provider) {
    // Its trigger touches only its own job, but its calls must not land while another fault has Postgres down
    // or a function process killed.
    let _turn = FAULTS.lock().await;
    let marker = format!("fallback_fault_{}", Uuid::new_v4().simple());
    let db = db().await;
    // Only the update that marks the fallback.
    let marking = format!(
        "NEW.metadata ? 'sync_fallback' AND NOT coalesce(OLD.metadata ? 'sync_fallback', false)
         AND NEW.original_prompt LIKE '%{marker}%'"
    );
    let fault = UpdateFault::inject(&db, &marker, "jobs", &marking).await;
    let (user_id, jwt) = user().await;
    let body = json!({"prompt": prompt(&marker, "#queue-status=503"), "apiModelId": provider.queued_model()});
    let (status, answer) = generate(&jwt, &body).await;
    fault.remove(&db).await;

    assert_eq!(status, 503, "{answer}");
    // The body says only "Temporarily unavailable"; the function's one line for the refusal names the fault.
    let fault_named = format!("injected fault ({marker})");
    wait_until(
        "the 503's cause in the functions' log",
        Duration::from_secs(5),
        async || {
            functions_log()
                .lines()
                .any(|l| l.contains("request failed") && l.contains(&fault_named))
        },
    )
    .await;
    let rows = db
        .query(
            "SELECT j.status, r.closed_at IS NOT NULL FROM public.jobs j
               JOIN public.job_runs r ON r.job_id = j.id WHERE j.user_id = $1",
            &[&user_id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one job");
    let (status, closed): (String, bool) = (rows[0].get(0), rows[0].get(1));
    assert_eq!((status.as_str(), closed), ("failed", true));
}
