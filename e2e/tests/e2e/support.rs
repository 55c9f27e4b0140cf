//! What every end-to-end test needs: users with tokens, the functions' URLs, and reads of the real state.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::stack_var;

pub const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub async fn db() -> tokio_postgres::Client {
    gen_pipeline::db::connect(&stack_var("DATABASE_URL"))
        .await
        .unwrap()
}

/// A fresh user (in `auth.users` and `profiles`) and a valid JWT for it.
pub async fn user() -> (Uuid, String) {
    let id = Uuid::new_v4();
    gen_pipeline::db::users::ensure(&db().await, id)
        .await
        .unwrap();
    (id, jwt_for(id, 3600))
}

pub fn jwt_for(id: Uuid, ttl_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": id, "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + ttl_secs}),
        &jsonwebtoken::EncodingKey::from_secret(stack_var("SUPABASE_JWT_SECRET").as_bytes()),
    )
    .unwrap()
}

pub fn api(path: &str) -> String {
    format!("{}{path}", stack_var("FAL_IMAGE_URL"))
}

/// `POST /fal-image` with a JSON body; returns status and JSON answer.
pub async fn generate(jwt: &str, body: &Value) -> (u16, Value) {
    let r = http()
        .post(api("/fal-image"))
        .bearer_auth(jwt)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A prompt unique to the test (so the emulator's per-prompt counters are its own), with directives.
pub fn prompt(text: &str, directives: &str) -> String {
    format!("{text} {} {directives}", Uuid::new_v4().simple())
}

pub fn sync_model() -> String {
    stack_var("SYNC_MODEL_ID")
}

pub fn async_model() -> String {
    stack_var("ASYNC_MODEL_ID")
}

/// The job row, read as a client reads it.
pub async fn job(id: &str) -> Value {
    let id = Uuid::parse_str(id).unwrap();
    let row = db()
        .await
        .query_one(
            "SELECT to_jsonb(j) FROM public.jobs j WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Polls the job row until it is terminal.
pub async fn wait_terminal(id: &str, timeout: Duration) -> Value {
    let started = Instant::now();
    loop {
        let j = job(id).await;
        if TERMINAL.contains(&j["status"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(
            started.elapsed() < timeout,
            "job {id} still {} after {timeout:?}",
            j["status"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn count(sql: &str, id: &str) -> i64 {
    let id = Uuid::parse_str(id).unwrap();
    db().await.query_one(sql, &[&id]).await.unwrap().get(0)
}

pub async fn asset_count(job_id: &str) -> i64 {
    count(
        "SELECT count(*) FROM public.workspace_assets WHERE job_id = $1",
        job_id,
    )
    .await
}

pub async fn usage_count(job_id: &str) -> i64 {
    count(
        "SELECT count(*) FROM public.api_usage_logs WHERE job_id = $1",
        job_id,
    )
    .await
}

pub async fn jobs_of_user(user: Uuid) -> i64 {
    count(
        "SELECT count(*) FROM public.jobs WHERE user_id = $1",
        &user.to_string(),
    )
    .await
}

/// Keys of the workspace bucket under `<user>/<job>`.
pub async fn objects_of_job(user: &str, job_id: &str) -> Vec<(String, i64)> {
    let s3 = gen_pipeline::aws::s3(&crate::common::sdk_config().await);
    let out = s3
        .list_objects_v2()
        .bucket(stack_var("WORKSPACE_BUCKET"))
        .prefix(format!("{user}/{job_id}"))
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .map(|o| {
            (
                o.key().unwrap_or_default().to_owned(),
                o.size().unwrap_or(0),
            )
        })
        .collect()
}

/// The emulator's record of a request.
pub async fn inspect(request_id: &str) -> Value {
    http()
        .get(format!(
            "{}/_emulator/requests/{request_id}",
            stack_var("FAL_EMULATOR_URL")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the emulator has made `n` deliveries that got an answer, and returns them.
pub async fn answered_deliveries(request_id: &str, n: usize, timeout: Duration) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let r = inspect(request_id).await;
        let answered: Vec<Value> = r["deliveries"]
            .as_array()
            .map(|ds| {
                ds.iter()
                    .filter(|d| !d["http_status"].is_null())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if answered.len() >= n {
            return answered;
        }
        assert!(
            started.elapsed() < timeout,
            "only {} answered deliveries: {r}",
            answered.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Peak resident memory (VmHWM, bytes) of every process running the named function binary.
pub fn function_peak_rss(binary: &str) -> Vec<(i32, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
        if !String::from_utf8_lossy(argv0).ends_with(&format!("/{binary}")) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            out.push((pid, kb * 1024));
        }
    }
    out
}

/// sha256 and length of a URL's body, streamed.
pub async fn digest(url: &str) -> (u16, u64, String) {
    crate::common::fetch_digest(url).await
}
