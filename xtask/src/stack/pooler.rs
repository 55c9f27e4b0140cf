//! PgBouncer in transaction mode between the functions and Postgres (`cargo xtask stack up --pooler`), as
//! Supabase's pooler sits in production: proves that every statement the functions send works through it. Tests
//! and migrations keep connecting directly. PgBouncer refuses to run as root, so as root it runs as `postgres`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::unistd::{User, geteuid};
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::net::free_ports;
use crate::paths::Paths;

use super::envfile::StackEnv;
use super::pg_tls;
use super::postgres::Database;
use super::procs::{self, ProcRecord};
use super::ready::log_tail;
use super::state::State;

/// Its name in `state.json`.
pub const NAME: &str = "pgbouncer";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_prepared_statements` exists from this version on; older ones forward no prepared statement at all.
const PREPARED_STATEMENTS_SINCE: (u32, u32) = (1, 21);

/// `pgbouncer` from PATH, else from the sbin directories Debian installs it in.
fn find_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path.into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("pgbouncer"))
        .find(|exe| exe.is_file())
}

/// The binary, installed with apt when missing and we are root.
async fn ensure_bin(paths: &Paths, clock: &Clock) -> anyhow::Result<PathBuf> {
    if let Some(bin) = find_bin() {
        return Ok(bin);
    }
    if !geteuid().is_root() {
        bail!("no pgbouncer on PATH or in /usr/sbin; install the `pgbouncer` package");
    }
    super::tools::apt_install(paths, clock, "pgbouncer").await?;
    find_bin().context("pgbouncer installed but still not found")
}

/// `(major, minor)` from `pgbouncer --version` ("PgBouncer 1.18.0").
fn version(bin: &Path) -> Option<(u32, u32)> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.lines().next()?.split_whitespace().nth(1)?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Where Postgres really is, and who to log in as, read as the functions read `DATABASE_URL`.
struct Upstream {
    host: String,
    port: u16,
    user: String,
    password: String,
    dbname: String,
    sslmode: &'static str,
}

fn upstream(database_url: &str) -> anyhow::Result<Upstream> {
    let (config, _) = gen_pipeline::db::target::parse(database_url)
        .context("DATABASE_URL is not a Postgres URL")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => bail!("the pooler needs a TCP host in DATABASE_URL"),
    };
    let user = config
        .get_user()
        .context("DATABASE_URL has no user")?
        .to_owned();
    let password = String::from_utf8(config.get_password().unwrap_or_default().to_vec())
        .context("the database password is not UTF-8")?;
    let sslmode = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => "disable",
        tokio_postgres::config::SslMode::Require => "require",
        _ => "prefer",
    };
    Ok(Upstream {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        dbname: config.get_dbname().unwrap_or(&user).to_owned(),
        user,
        password,
        sslmode,
    })
}

/// PgBouncer's quoting in `auth_file`: `"…"` with `"` doubled.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn config_text(
    dir: &Path,
    port: u16,
    up: &Upstream,
    version: Option<(u32, u32)>,
    client_tls: bool,
) -> anyhow::Result<String> {
    let prepared = match version {
        Some(v) if v >= PREPARED_STATEMENTS_SINCE => "max_prepared_statements = 0\n".to_owned(),
        _ => format!(
            "; max_prepared_statements does not exist before PgBouncer {}.{}: this one forwards none at all\n",
            PREPARED_STATEMENTS_SINCE.0, PREPARED_STATEMENTS_SINCE.1
        ),
    };
    if up.host.contains(char::is_whitespace) {
        bail!("unsupported database host {:?}", up.host);
    }
    Ok(format!(
        "; Written by `cargo xtask stack up --pooler`: the functions reach Postgres only through this.\n\
         [databases]\n\
         * = host={host} port={upstream_port}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         logfile =\n\
         pidfile =\n\
         auth_type = scram-sha-256\n\
         auth_file = {auth_file}\n\
         pool_mode = transaction\n\
         server_check_delay = 0\n\
         ; after a failed server login PgBouncer refuses every client for this long (default 15 s): one second,\n\
         ; so a Postgres restart costs the functions a second of 503s, not fifteen\n\
         server_login_retry = 1\n\
         {prepared}\
         max_client_conn = 500\n\
         default_pool_size = 20\n\
         ignore_startup_parameters = extra_float_digits\n\
         server_tls_sslmode = {sslmode}\n\
         {client_tls}",
        host = up.host,
        upstream_port = up.port,
        auth_file = dir.join("userlist.txt").display(),
        sslmode = up.sslmode,
        client_tls = if client_tls {
            format!(
                "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
                dir.join(pg_tls::CERT_FILE).display(),
                dir.join(pg_tls::KEY_FILE).display()
            )
        } else {
            String::new()
        },
    ))
}

/// `target/stack/pgbouncer`, or a per-checkout directory under the temp dir when the `postgres` user cannot
/// reach into the checkout (e.g. a clone under /root).
fn files_dir(paths: &Paths) -> PathBuf {
    paths.stack.join(NAME)
}

fn fallback_dir(paths: &Paths) -> PathBuf {
    let tag = hex::encode(&Sha256::digest(paths.root.as_os_str().as_encoded_bytes())[..6]);
    std::env::temp_dir().join(format!("gen-pipeline-pgbouncer-{tag}"))
}

/// Deletes the pooler's files (they hold the database password); harmless when there are none.
pub fn remove_files(paths: &Paths) {
    for dir in [files_dir(paths), fallback_dir(paths)] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn postgres_owner() -> anyhow::Result<(u32, u32)> {
    let user = User::from_name("postgres")
        .context("cannot look up the postgres user")?
        .context("no `postgres` user on this machine (PgBouncer will not run as root)")?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

fn write_private(path: &Path, text: &str, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn make_dir(dir: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Whether `postgres` can read files in `dir` (every parent must let it through).
fn postgres_can_read(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-r"])
        .arg(dir.join("pgbouncer.ini"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One real login and statement through the pooler.
async fn answers_query(url: &str) -> anyhow::Result<()> {
    let client = tokio::time::timeout(Duration::from_secs(5), gen_pipeline::db::connect(url))
        .await
        .context("connect timed out")??;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// The pooler's URLs.
pub struct PoolerUrls {
    /// Without TLS parameters.
    pub url: String,
    /// For tests and tools: TLS verified against the stack's CA when the stack has one.
    pub tools_url: String,
}

/// Its keys in `stack.env`: the database URL through it (`url`), and that the stack has it.
pub fn add_to(env: &mut StackEnv, url: String) {
    env.set("POOLER_DATABASE_URL", url);
    env.set("STACK_POOLER", "1");
}

/// Starts PgBouncer in front of `database_url`, records it in `state`, waits until a login through it works,
/// and returns the URL the functions should use.
pub async fn start(
    paths: &Paths,
    database: &Database,
    state: &mut State,
    clock: &Clock,
) -> anyhow::Result<PoolerUrls> {
    let step = clock.step();
    let bin = ensure_bin(paths, clock).await?;
    let version = version(&bin);
    let up = upstream(&database.url)?;
    let [port] = free_ports::<1>()?;
    let as_postgres = geteuid().is_root();
    let owner = if as_postgres {
        Some(postgres_owner()?)
    } else {
        None
    };

    let mut dir = files_dir(paths);
    let mut attempts = vec![dir.clone()];
    if as_postgres {
        attempts.push(fallback_dir(paths));
    }
    for candidate in attempts {
        dir = candidate;
        make_dir(&dir, owner)?;
        write_private(
            &dir.join("userlist.txt"),
            &format!("{} {}\n", quoted(&up.user), quoted(&up.password)),
            owner,
        )?;
        if let Some(tls) = &database.tls {
            tls.install(&dir, owner)?;
        }
        write_private(
            &dir.join("pgbouncer.ini"),
            &config_text(&dir, port, &up, version, database.tls.is_some())?,
            owner,
        )?;
        if !as_postgres || postgres_can_read(&dir) {
            break;
        }
        let _ = std::fs::remove_dir_all(&dir);
        clock.say(format!(
            "the postgres user cannot read {}: trying elsewhere",
            dir.display()
        ));
    }

    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.arg(dir.join("pgbouncer.ini")).current_dir(&dir);
    let log = paths.logs.join("pgbouncer.log");
    let proc = procs::spawn_background(NAME, port, &mut cmd, &log)?;
    state.record(proc.clone(), &paths.state)?;

    let mut url = url::Url::parse(&format!("postgres://127.0.0.1:{port}"))?;
    url.set_username(&up.user)
        .map_err(|()| anyhow::anyhow!("cannot put the user in the pooler URL"))?;
    url.set_password(Some(&up.password))
        .map_err(|()| anyhow::anyhow!("cannot put the password in the pooler URL"))?;
    url.set_path(&format!("/{}", up.dbname));
    let url = url.to_string();
    let tools_url = database.for_tools(&url);
    wait_ready(&proc, &tools_url).await?;

    let v = version.map_or("?".to_owned(), |(a, b)| format!("{a}.{b}"));
    clock.done(
        step,
        format!(
            "pgbouncer {v} (transaction mode) on 127.0.0.1:{port} -> {}:{} (pid {})",
            up.host, up.port, proc.pid
        ),
    );
    Ok(PoolerUrls { url, tools_url })
}

async fn wait_ready(proc: &ProcRecord, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if !procs::is_ours(proc.pid, proc.start_ticks) {
            bail!(
                "pgbouncer exited; last lines of {}:\n{}",
                proc.log,
                log_tail(&proc.log, 30)
            );
        }
        let last = match answers_query(url).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "no login through pgbouncer within {READY_TIMEOUT:?} ({last:#}); last lines of {}:\n{}",
                proc.log,
                log_tail(&proc.log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// True when no pooler is recorded, or the recorded one runs and accepts TCP connections.
pub fn answers(state: &State) -> bool {
    let Some(p) = state.process(NAME) else {
        return true;
    };
    procs::is_ours(p.pid, p.start_ticks)
        && std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], p.port)),
            Duration::from_secs(2),
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_is_read_like_the_functions_read_it() {
        let up = upstream("postgres://app%20user:p%40ss%22w@127.0.0.1:6543/app?sslmode=require")
            .unwrap();
        assert_eq!(
            (
                up.host.as_str(),
                up.port,
                up.user.as_str(),
                up.dbname.as_str()
            ),
            ("127.0.0.1", 6543, "app user", "app")
        );
        assert_eq!(up.password, "p@ss\"w");
        assert_eq!(up.sslmode, "require");
        assert_eq!(quoted(&up.password), r#""p@ss""w""#);
    }

    #[test]
    fn config_is_transaction_mode_and_names_prepared_statements_only_where_known() {
        let up = upstream("postgres://postgres:pw@127.0.0.1:5432/app").unwrap();
        let new = config_text(Path::new("/x"), 7000, &up, Some((1, 23)), true).unwrap();
        assert!(new.contains("pool_mode = transaction\n"));
        assert!(new.contains("\nmax_prepared_statements = 0\n"));
        assert!(new.contains("listen_port = 7000\n"));
        assert!(new.contains("* = host=127.0.0.1 port=5432\n"));
        assert!(
            new.contains("\nclient_tls_sslmode = require\nclient_tls_cert_file = /x/server.crt\n")
        );
        assert!(
            !new.contains("pw"),
            "the password belongs in the auth file only"
        );
        let old = config_text(Path::new("/x"), 7000, &up, Some((1, 18)), false).unwrap();
        assert!(!old.contains("\nmax_prepared_statements"));
        assert!(!old.contains("client_tls"));
    }
}
