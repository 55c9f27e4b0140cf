//! What the stack holds, read as the superuser: job rows, counts, objects, assets, the functions' memory, and
//! the exactly-once invariant every suite checks a finished job against.

use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::common::{peak_rss_of, sdk_config, stack_var};

pub const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

/// A session of this process (named [`crate::app::IN_PROCESS_APPLICATION_NAME`], unlike the functions').
pub async fn db() -> tokio_postgres::Client {
    gen_pipeline::db::connect(&crate::app::in_process(&stack_var("DATABASE_URL")))
        .await
        .unwrap()
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

/// Makes a job look `age` old to the reconciler, which goes by when the functions wrote its run (setup standing
/// in for the time that passes); `started_at` too, as the client sees it.
pub async fn age_job(job_id: &str, age: &str) {
    let db = db().await;
    for sql in [
        format!("UPDATE public.jobs SET started_at = now() - interval '{age}' WHERE id = $1"),
        format!(
            "UPDATE public.job_runs SET created_at = now() - interval '{age}' WHERE job_id = $1"
        ),
    ] {
        db.execute(&sql, &[&Uuid::parse_str(job_id).unwrap()])
            .await
            .unwrap();
    }
}

/// The row of a job that must have failed, and its error message.
pub async fn failed_job(id: &str) -> (Value, String) {
    let j = job(id).await;
    assert_eq!(j["status"], "failed", "{j}");
    let message = j["error_message"].as_str().unwrap_or_default().to_owned();
    (j, message)
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

/// An S3 client of the stack, built as the functions build theirs.
pub async fn s3() -> aws_sdk_s3::Client {
    gen_pipeline::aws::s3(&sdk_config().await)
}

/// Stores `body` under `key` in the stack's bucket `bucket_var` (`WORKSPACE_BUCKET`, `LIBRARY_BUCKET`): an object
/// a test plants, standing for one an earlier run left behind.
pub async fn plant_object(bucket_var: &str, key: &str, body: &[u8]) {
    s3().await
        .put_object()
        .bucket(stack_var(bucket_var))
        .key(key)
        .body(body.to_vec().into())
        .send()
        .await
        .unwrap();
}

/// What a completion's holder leaves when it stored the job's result as `<job>_0.<ext>` and failed before its
/// commit: its claim, the lease ended, and that object. Planted by a test.
pub async fn plant_failed_holder(user_id: Uuid, job_id: &str, ext: &str) {
    let id = Uuid::parse_str(job_id).unwrap();
    db().await
        .execute(
            "INSERT INTO public.job_completion_claims (job_id, holder, lease_expires_at)
             VALUES ($1, gen_random_uuid(), now() - interval '1 second')",
            &[&id],
        )
        .await
        .unwrap();
    let key = format!("{user_id}/{job_id}_0.{ext}");
    plant_object("WORKSPACE_BUCKET", &key, b"an earlier holder's copy").await;
}

/// The first column of every row `sql` returns.
pub async fn first_column<T>(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    db.query(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The one number `sql` counts for the id `$1`.
pub async fn count(sql: &str, id: &str) -> i64 {
    let id = Uuid::parse_str(id).unwrap();
    db().await.query_one(sql, &[&id]).await.unwrap().get(0)
}

/// Rows of `table` for the job.
pub async fn rows(table: &str, job_id: &str) -> i64 {
    count(
        &format!("SELECT count(*) FROM public.{table} WHERE job_id = $1"),
        job_id,
    )
    .await
}

pub async fn asset_count(job_id: &str) -> i64 {
    rows("workspace_assets", job_id).await
}

pub async fn usage_count(job_id: &str) -> i64 {
    rows("api_usage_logs", job_id).await
}

pub async fn jobs_of_user(user: Uuid) -> i64 {
    count(
        "SELECT count(*) FROM public.jobs WHERE user_id = $1",
        &user.to_string(),
    )
    .await
}

/// Keys and sizes of the workspace bucket's objects under `<user>/<job>` (`job` empty: all of the user's).
pub async fn objects_of_job(user: &str, job_id: &str) -> Vec<(String, i64)> {
    let out = s3()
        .await
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

/// One `workspace_assets` row of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Asset {
    pub path: String,
    pub size: i64,
    pub mime: String,
}

/// The job's asset rows.
pub async fn assets_of(job_id: &str) -> Vec<Asset> {
    let id = Uuid::parse_str(job_id).unwrap();
    db().await
        .query(
            "SELECT temp_storage_path, file_size_bytes, mime_type FROM public.workspace_assets WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Asset {
            path: r.get(0),
            size: r.get(1),
            mime: r.get(2),
        })
        .collect()
}

/// The invariant of a finished job, whatever happened on the way: completed ⇔ one object, one asset row of that
/// object; never an object or an asset for a job that is not completed; exactly one usage row; no claim left
/// behind by a job that is no longer queued. Returns the job row.
pub async fn assert_exactly_once(user_id: Uuid, job_id: &str, expected: &str) -> Value {
    let j = job(job_id).await;
    assert_eq!(j["status"], expected, "job: {j}");
    let objects = objects_of_job(&user_id.to_string(), job_id).await;
    let assets: Vec<(String, i64)> = assets_of(job_id)
        .await
        .into_iter()
        .map(|a| (a.path, a.size))
        .collect();
    if expected == "completed" {
        assert_eq!(objects.len(), 1, "objects of {job_id}: {objects:?}");
        assert_eq!(assets.len(), 1, "asset rows of {job_id}: {assets:?}");
        assert_eq!(assets[0], objects[0], "asset row vs object");
        assert_eq!(j["metadata"]["storage_path"], objects[0].0.as_str());
    } else {
        assert!(
            objects.is_empty(),
            "objects of a {expected} job: {objects:?}"
        );
        assert!(assets.is_empty(), "assets of a {expected} job: {assets:?}");
    }
    assert_eq!(usage_count(job_id).await, 1, "usage rows of {job_id}");
    if expected != "queued" {
        assert_eq!(
            rows("job_completion_claims", job_id).await,
            0,
            "a claim outlived its job"
        );
    }
    j
}

/// Pids of the processes whose program is the named binary.
pub fn processes_running(binary: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
        if String::from_utf8_lossy(argv0).ends_with(&format!("/{binary}")) {
            out.push(pid);
        }
    }
    out
}

/// Peak resident memory (VmHWM, bytes) of every process running the named function binary.
pub fn function_peak_rss(binary: &str) -> Vec<(i32, u64)> {
    processes_running(binary)
        .into_iter()
        .filter_map(|pid| Some((pid, peak_rss_of(&pid.to_string())?)))
        .collect()
}

/// sha256 and length of a URL's body, streamed.
pub async fn digest(url: &str) -> (u16, u64, String) {
    crate::common::fetch_digest(url).await
}
