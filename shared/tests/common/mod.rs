//! Test helpers: the local stack's coordinates (from the environment `cargo xtask test` sets, or from
//! `target/stack/stack.env` after `cargo xtask stack up`), and clients built from them. Shared by the adapter
//! tests and, through `e2e/src/lib.rs`, by the end-to-end suites.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;

/// One variable of the running stack. Panics with a hint when no stack is up: these tests need real parts.
pub fn stack_var(name: &str) -> String {
    try_stack_var(name).unwrap_or_else(|| {
        panic!("{name} is not set: run the tests with `cargo xtask test`, or start `cargo xtask stack up` first")
    })
}

/// One variable of the running stack, `None` where the stack does not set it (a lookup for `Config::from_lookup`).
pub fn try_stack_var(name: &str) -> Option<String> {
    static FILE: OnceLock<HashMap<String, String>> = OnceLock::new();
    if let Ok(v) = std::env::var(name) {
        return Some(v);
    }
    let file = FILE.get_or_init(|| {
        let path = workspace_root().join("target/stack/stack.env");
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), unquote(v.trim())))
            .collect()
    });
    file.get(name).cloned()
}

fn unquote(v: &str) -> String {
    let v = v
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(v);
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    v.to_owned()
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The AWS SDK configuration of the stack (moto), built from its variables alone: nothing is read from or
/// written to the process environment. Timeouts as `gen_pipeline::aws::load` sets them for the functions.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let credentials = aws_sdk_s3::config::Credentials::new(
        stack_var("AWS_ACCESS_KEY_ID"),
        stack_var("AWS_SECRET_ACCESS_KEY"),
        None,
        None,
        "stack",
    );
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(20))
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(stack_var("AWS_ENDPOINT_URL"))
        .region(aws_config::Region::new(stack_var("AWS_REGION")))
        .credentials_provider(credentials)
        .timeout_config(timeouts)
        .load()
        .await
}

/// A URL of the same server with another database name.
pub fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Runs `f` in the database as a signed-in client of `user_id` meets it through PostgREST: inside one
/// transaction, as role `authenticated` with the token's claims in `request.jwt.claims` (so `auth.uid()` is the
/// user and the row level security policies apply). Commits when `f` succeeds, rolls back when it fails; either
/// way the connection is back to its own role afterwards. A refused statement comes back as the Postgres error
/// (`code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)` for "permission denied"); rows hidden by RLS are simply
/// missing from the result.
///
/// ```ignore
/// let rows = as_user(&mut db, user, async |tx| tx.query("SELECT id FROM public.jobs", &[]).await).await?;
/// ```
pub async fn as_user<T>(
    db: &mut tokio_postgres::Client,
    user_id: uuid::Uuid,
    f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T, tokio_postgres::Error>,
) -> Result<T, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    tx.batch_execute("SET LOCAL ROLE authenticated").await?;
    let claims =
        serde_json::json!({"sub": user_id, "role": "authenticated", "aud": "authenticated"})
            .to_string();
    tx.execute(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&claims],
    )
    .await?;
    let out = f(&tx).await?;
    tx.commit().await?;
    Ok(out)
}

/// How many open (`queued`/`processing`) jobs the user has: what the open-jobs bound counts.
pub async fn open_jobs_of(db: &tokio_postgres::Client, user_id: uuid::Uuid) -> i64 {
    let open = gen_pipeline::jobs::OPEN_STATUSES_SQL;
    let sql = format!("SELECT count(*) FROM public.jobs WHERE user_id = $1 AND status IN {open}");
    db.query_one(&sql, &[&user_id]).await.unwrap().get(0)
}

/// A deterministic body of `total` bytes, produced in 64 KiB chunks so it never exists whole in memory.
pub fn pattern_stream(
    total: u64,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
    const CHUNK: u64 = 64 * 1024;
    let chunks = total.div_ceil(CHUNK);
    futures::stream::iter((0..chunks).map(move |i| {
        let start = i * CHUNK;
        let len = CHUNK.min(total - start);
        Ok(bytes::Bytes::from(pattern_bytes(start, len as usize)))
    }))
}

pub fn pattern_bytes(start: u64, len: usize) -> Vec<u8> {
    (start..start + len as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// sha256 of the pattern, computed chunk by chunk.
pub fn pattern_sha256(total: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut at = 0;
    while at < total {
        let len = (1024 * 1024).min(total - at);
        h.update(pattern_bytes(at, len as usize));
        at += len;
    }
    hex::encode(h.finalize())
}

/// Downloads a URL as a stream and returns (status, bytes read, sha256).
pub async fn fetch_digest(url: &str) -> (u16, u64, String) {
    use futures::StreamExt;
    use sha2::Digest;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client
        .get(url)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    (status, n, hex::encode(h.finalize()))
}

/// Peak resident memory of this process so far, in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> u64 {
    peak_rss_of("self").unwrap()
}

/// Peak resident memory (`VmHWM`, bytes) of a process (`self` or a pid), if it can be read.
pub fn peak_rss_of(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}
