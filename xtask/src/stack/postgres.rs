//! A throwaway PostgreSQL cluster made with the machine's own `initdb`/`pg_ctl`. PostgreSQL refuses to run as
//! root, so as root both run as the `postgres` user on directories it owns.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};

use crate::clock::Clock;
use crate::net::random_hex;
use crate::paths::Paths;
use crate::procfs;

use super::pg_tls::{self, StackTls};
use super::procs;
use super::state::{PgCluster, State};

const DATABASE: &str = "app";

/// Directory holding `initdb` and `pg_ctl`: from PATH, else the newest `/usr/lib/postgresql/*/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The server binaries, installed with apt when missing and we are root.
async fn ensure_bin_dir(paths: &Paths, clock: &Clock) -> anyhow::Result<PathBuf> {
    if let Some(dir) = find_bin_dir() {
        return Ok(dir);
    }
    if !geteuid().is_root() {
        bail!(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; install the `postgresql` package or set DATABASE_URL"
        );
    }
    super::tools::apt_install(paths, clock, "postgresql").await?;
    find_bin_dir().context("postgresql installed but initdb/pg_ctl still not found")
}

/// A command of the cluster's binaries, run as `postgres` when needed, from a directory that user can enter.
fn pg_command(cluster: &PgCluster, program: &str) -> Command {
    let exe = Path::new(&cluster.bin_dir).join(program);
    let mut cmd = if cluster.run_as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.current_dir(&cluster.base_dir).stdin(Stdio::null());
    cmd
}

fn log_to(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    cmd.stdout(file.try_clone()?).stderr(file);
    Ok(())
}

fn postgres_owner() -> anyhow::Result<(u32, u32)> {
    let user = User::from_name("postgres")
        .context("cannot look up the postgres user")?
        .context("no `postgres` user on this machine (install the postgresql package)")?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

fn make_private_dir(dir: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {} to postgres", dir.display()))?;
    }
    Ok(())
}

/// Whether the `postgres` user can write into `dir` (every parent must let it through).
fn postgres_can_write(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-w"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Stops a postmaster left running in `base` by a run that lost its state file (when the server binaries are
/// known), then deletes `base`.
fn clear_stale(base: &Path, bin_dir: Option<&Path>, log: &Path) {
    let data = base.join("data");
    if let Some(bin_dir) = bin_dir
        && data.join("postmaster.pid").exists()
    {
        let cluster = PgCluster {
            base_dir: base.display().to_string(),
            data_dir: data.display().to_string(),
            socket_dir: String::new(),
            bin_dir: bin_dir.display().to_string(),
            port: 0,
            run_as_postgres: geteuid().is_root(),
            // pg_ctl copes with a stale pid file; we never signal a pid we did not record ourselves.
            postmaster_pid: None,
            postmaster_start_ticks: 0,
        };
        let _ = stop(&cluster, log);
    }
    let _ = std::fs::remove_dir_all(base);
}

/// Stops and deletes a cluster that a crashed run left in `target/stack/pg` without recording it.
pub fn clear_leftover(paths: &Paths) {
    let base = paths.stack.join("pg");
    if base.exists() {
        let bin_dir = find_bin_dir();
        clear_stale(&base, bin_dir.as_deref(), &paths.logs.join("postgres.log"));
    }
}

// e2e/tests/faults.rs reads the file the same way: tests cannot link this binary crate.
fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The stack's database.
pub struct Database {
    /// For tests and tools (`stack.env`'s `DATABASE_URL`).
    pub url: String,
    /// The server's URL without TLS parameters.
    pub server_url: String,
    /// Our cluster's TLS, `None` for a database from the environment.
    pub tls: Option<StackTls>,
}

impl Database {
    /// The URL the functions' secret gets for a server at `url` (this database or the pooler in front of it), and
    /// the CA it gets beside it.
    pub fn for_functions(&self, url: &str) -> (String, Option<String>) {
        match &self.tls {
            Some(tls) => (pg_tls::functions_url(url), Some(tls.ca_pem.clone())),
            None => (url.to_owned(), None),
        }
    }

    /// The URL tests and tools use for a server at `url`: TLS verified against our CA when the cluster is ours.
    pub fn for_tools(&self, url: &str) -> String {
        self.tls
            .as_ref()
            .map_or_else(|| url.to_owned(), |tls| tls.tools_url(url))
    }
}

/// The database of the stack: DATABASE_URL from the environment when it is set (then the stack does not manage
/// it), else a new cluster of ours on `port`, recorded in `state`, that takes TLS connections with a CA of its own.
pub async fn database(
    paths: &Paths,
    port: u16,
    state: &mut State,
    clock: &Clock,
) -> anyhow::Result<Database> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => {
            clock.say(
                "PostgreSQL: using DATABASE_URL from the environment (not managed by the stack)",
            );
            Ok(Database {
                server_url: url.clone(),
                url,
                tls: None,
            })
        }
        _ => {
            let bin = ensure_bin_dir(paths, clock).await?;
            let tls = StackTls::create(paths)?;
            let url = create(paths, &bin, port, &tls, state, clock).await?;
            Ok(Database {
                url: tls.tools_url(&url),
                server_url: url,
                tls: Some(tls),
            })
        }
    }
}

/// Creates and starts a cluster on 127.0.0.1:`port` with database `app` and TLS with `tls`'s certificate; records
/// it in `state` as soon as it has a directory. Returns the database's URL, without TLS parameters.
async fn create(
    paths: &Paths,
    bin_dir: &Path,
    port: u16,
    tls: &StackTls,
    state: &mut State,
    clock: &Clock,
) -> anyhow::Result<String> {
    let owner = if geteuid().is_root() {
        Some(postgres_owner()?)
    } else {
        None
    };
    let log = paths.logs.join("postgres.log");
    let cluster = place(paths, bin_dir, port, owner, clock)?;
    state.postgres = Some(cluster.clone());
    state.save(&paths.state)?;
    let password = random_hex(24);
    initdb(&cluster, &password, owner, &log, clock).await?;
    tls.install(Path::new(&cluster.base_dir), owner)?;
    let pid = start(&cluster, &log, clock).await?;
    if let Some(pg) = state.postgres.as_mut() {
        pg.postmaster_pid = Some(pid);
        pg.postmaster_start_ticks = procfs::stat(pid).map(|s| s.start_ticks).unwrap_or(0);
    }
    state.save(&paths.state)?;
    create_database(&password, port, tls).await
}

/// The cluster's directories, made for its owner: under `target/stack/pg` when the `postgres` user can reach it,
/// else under the temp dir; the socket directory too where its path would be too long.
fn place(
    paths: &Paths,
    bin_dir: &Path,
    port: u16,
    owner: Option<(u32, u32)>,
    clock: &Clock,
) -> anyhow::Result<PgCluster> {
    let run_as_postgres = owner.is_some();
    let mut base = paths.stack.join("pg");
    clear_stale(&base, Some(bin_dir), Path::new("/dev/null"));
    make_private_dir(&base, owner)?;
    if run_as_postgres && !postgres_can_write(&base) {
        // A parent of the checkout does not let other users through (e.g. a clone under /root).
        let _ = std::fs::remove_dir_all(&base);
        base = std::env::temp_dir().join(format!("gen-pipeline-pg-{}", random_hex(6)));
        make_private_dir(&base, owner)?;
        clock.say(format!(
            "the postgres user cannot reach target/stack: cluster placed in {}",
            base.display()
        ));
    }
    let mut socket_dir = base.join("sock");
    // Unix socket paths are limited to ~107 bytes.
    if socket_dir.as_os_str().len() > 80 {
        socket_dir = std::env::temp_dir().join(format!("gp-pg-{}", random_hex(6)));
    }
    make_private_dir(&socket_dir, owner)?;
    Ok(PgCluster {
        base_dir: base.display().to_string(),
        data_dir: base.join("data").display().to_string(),
        socket_dir: socket_dir.display().to_string(),
        bin_dir: bin_dir.display().to_string(),
        port,
        run_as_postgres,
        postmaster_pid: None,
        postmaster_start_ticks: 0,
    })
}

/// `initdb` with user `postgres` whose password is `password` (handed over in a file deleted right after).
async fn initdb(
    cluster: &PgCluster,
    password: &str,
    owner: Option<(u32, u32)>,
    log: &Path,
    clock: &Clock,
) -> anyhow::Result<()> {
    let pwfile = Path::new(&cluster.base_dir).join("pwfile");
    std::fs::write(&pwfile, format!("{password}\n"))?;
    std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
    }

    let step = clock.step();
    let mut initdb = pg_command(cluster, "initdb");
    initdb
        .arg("-D")
        .arg(&cluster.data_dir)
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
        ])
        .arg(format!("--pwfile={}", pwfile.display()));
    let result = procs::run_logged(initdb, log, "initdb").await;
    let _ = std::fs::remove_file(&pwfile);
    result?;
    clock.done(step, format!("initdb {}", cluster.data_dir));
    Ok(())
}

/// `pg_ctl start` on the cluster's port and socket directory, with TLS on (the certificate and key in the base
/// directory, [`StackTls::install`]); returns the postmaster's pid.
async fn start(cluster: &PgCluster, log: &Path, clock: &Clock) -> anyhow::Result<i32> {
    let step = clock.step();
    let port = cluster.port;
    let base = Path::new(&cluster.base_dir);
    let options = format!(
        "-k '{}' -c listen_addresses=127.0.0.1 -p {port} -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
        cluster.socket_dir,
        base.join(pg_tls::CERT_FILE).display(),
        base.join(pg_tls::KEY_FILE).display(),
    );
    let mut start = pg_command(cluster, "pg_ctl");
    start
        .arg("-D")
        .arg(&cluster.data_dir)
        .arg("-o")
        .arg(options)
        .args(["-w", "-t", "60", "start"]);
    // Without -l the server writes to pg_ctl's stdout: our log file, opened by us, so it needs no permissions
    // of the postgres user.
    procs::run_logged(start, log, "pg_ctl start").await?;
    let pid = read_postmaster_pid(Path::new(&cluster.data_dir))
        .context("postgres started but postmaster.pid is unreadable")?;
    clock.done(
        step,
        format!("postgres started on 127.0.0.1:{port} (pid {pid})"),
    );
    Ok(pid)
}

/// Creates the `app` database unless it exists; returns its URL (without TLS parameters).
async fn create_database(password: &str, port: u16, tls: &StackTls) -> anyhow::Result<String> {
    let admin_url = format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres");
    let client = gen_pipeline::db::connect(&tls.tools_url(&admin_url))
        .await
        .context("cannot connect to the new cluster")?;
    let exists = client
        .query_typed("SELECT 1 FROM pg_database WHERE datname = 'app'", &[])
        .await?;
    if exists.is_empty() {
        client
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await?;
    }
    Ok(format!(
        "postgres://postgres:{password}@127.0.0.1:{port}/{DATABASE}"
    ))
}

/// Whether our cluster's postmaster runs and accepts TCP connections.
pub fn is_up(cluster: &PgCluster) -> bool {
    let Some(pid) = cluster.postmaster_pid else {
        return false;
    };
    procs::is_ours(pid, cluster.postmaster_start_ticks)
        && std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], cluster.port)),
            Duration::from_secs(2),
        )
        .is_ok()
}

/// `pg_ctl stop -m fast`, then signals if the postmaster is still there. Errors if it survives.
pub fn stop(cluster: &PgCluster, log: &Path) -> anyhow::Result<()> {
    let data = Path::new(&cluster.data_dir);
    if data.join("postmaster.pid").exists() && Path::new(&cluster.base_dir).is_dir() {
        let mut cmd = pg_command(cluster, "pg_ctl");
        cmd.arg("-D")
            .arg(data)
            .args(["-m", "fast", "-w", "-t", "30", "stop"]);
        log_to(&mut cmd, log)?;
        let _ = cmd.status();
    }
    let Some(pid) = cluster.postmaster_pid else {
        return Ok(());
    };
    let ticks = cluster.postmaster_start_ticks;
    for (signal, wait_ms) in [(Signal::SIGQUIT, 5000), (Signal::SIGKILL, 5000)] {
        if !procs::is_ours(pid, ticks) {
            return Ok(());
        }
        let _ = kill(Pid::from_raw(pid), signal);
        let mut waited = 0;
        while waited < wait_ms && procs::is_ours(pid, ticks) {
            std::thread::sleep(Duration::from_millis(100));
            waited += 100;
        }
    }
    if procs::is_ours(pid, ticks) {
        bail!("postmaster {pid} is still running");
    }
    Ok(())
}
