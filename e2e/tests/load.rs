//! Load through both functions under `cargo lambda watch`: many async jobs, each webhook delivered several
//! times, many jobs in flight at once. Every job completes exactly once (one object, one asset row, one usage
//! row) and no delivery is ever answered anything but 2xx.
//!
//! `LOAD_JOBS` (default 200) sets the number of jobs, `LOAD_IN_FLIGHT` (default 50) how many are in flight at
//! once. A job is in flight from its submission until its last delivery is answered: that bounds what waits in
//! watch's per-function queue. cargo-lambda 1.9.2 deadlocks for good once 100 invocations of one function are
//! queued (`RequestCache::upsert` awaits the bounded queue while holding the lock `pop` needs), so a load that
//! let every job's webhooks arrive at once would measure watch, not us.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use e2e::*;

const DELIVERIES: u64 = 5;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

struct Submitted {
    user: Uuid,
    job: Uuid,
    request_id: String,
}

/// Every object key under the user's prefix, all pages.
async fn keys_of_user(s3: &aws_sdk_s3::Client, user: Uuid) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(stack_var("WORKSPACE_BUCKET"))
            .prefix(format!("{user}/"))
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match page.next_continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return keys,
        }
    }
}

/// The rows `sql` returns for the jobs `ids` (its `$1`), as a map.
async fn query_map<K: Eq + std::hash::Hash, V>(
    pg: &tokio_postgres::Client,
    sql: &str,
    ids: &[Uuid],
    entry: impl Fn(&tokio_postgres::Row) -> (K, V),
) -> HashMap<K, V> {
    pg.query(sql, &[&ids])
        .await
        .unwrap()
        .iter()
        .map(entry)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_with_repeated_webhooks_complete_exactly_once() {
    let jobs = env_usize("LOAD_JOBS", 200);
    let in_flight = env_usize("LOAD_IN_FLIGHT", 50);
    let users: Vec<(Uuid, String)> = {
        let mut v = Vec::new();
        for _ in 0..jobs.clamp(1, 10) {
            v.push(user().await);
        }
        v
    };
    let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let started = Instant::now();

    // `in_flight` jobs at a time, each submitted as a queued job whose webhook arrives DELIVERIES times.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..jobs {
        let (user_id, jwt) = users[i % users.len()].clone();
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let body = json!({
                "prompt": prompt(&format!("load {i}"), &format!("#deliveries={DELIVERIES}")),
                "apiModelId": async_model(),
            });
            let sent = Instant::now();
            let (job_id, request_id) = submit_queued(&jwt, &body).await;
            let submit_took = sent.elapsed();
            // In flight until fal has made every delivery.
            let attempts =
                settled_deliveries(&request_id, DELIVERIES, Duration::from_secs(300)).await;
            (
                Submitted {
                    user: user_id,
                    job: Uuid::parse_str(&job_id).unwrap(),
                    request_id,
                },
                attempts,
                submit_took,
            )
        });
    }
    let mut submitted = Vec::with_capacity(jobs);
    let mut deliveries: HashMap<String, Vec<Value>> = HashMap::new();
    let mut slowest_submit = Duration::ZERO;
    while let Some(done) = tasks.join_next().await {
        let (s, attempts, took) = done.unwrap();
        slowest_submit = slowest_submit.max(took);
        deliveries.insert(s.request_id.clone(), attempts);
        submitted.push(s);
    }
    let all_settled = started.elapsed();
    eprintln!(
        "{jobs} jobs ({in_flight} in flight), every delivery made, in {:.1} s; slowest submission {:.2} s",
        all_settled.as_secs_f64(),
        slowest_submit.as_secs_f64()
    );

    // Every job terminal (one connection, one query).
    let ids: Vec<Uuid> = submitted.iter().map(|s| s.job).collect();
    let pg = db().await;
    let statuses: HashMap<String, i64> = query_map(
        &pg,
        "SELECT status, count(*) FROM public.jobs WHERE id = ANY($1) GROUP BY status",
        &ids,
        |r| (r.get(0), r.get(1)),
    )
    .await;
    eprintln!("job statuses: {statuses:?}");

    // Every delivery answered 2xx on its first try.
    let mut bad = Vec::new();
    let mut attempts_total = 0;
    for s in &submitted {
        let attempts = &deliveries[&s.request_id];
        attempts_total += attempts.len();
        for a in attempts {
            if !is_2xx(a) {
                bad.push(format!("{} {a}", s.job));
            }
        }
        for d in 1..=DELIVERIES {
            let n = attempts.iter().filter(|a| a["delivery"] == d).count();
            if n != 1 {
                bad.push(format!("{} delivery {d} took {n} attempts", s.job));
            }
        }
    }
    eprintln!("{attempts_total} delivery attempts");
    assert!(
        bad.is_empty(),
        "{} deliveries were not answered 2xx at once:\n{}",
        bad.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );

    // Exactly once: completed jobs, one asset row of the stored object, one completed usage row, no claim.
    assert_eq!(statuses.get("completed").copied(), Some(jobs as i64));
    let assets: HashMap<Uuid, (i64, Option<String>)> = query_map(
        &pg,
        "SELECT a.job_id, count(*), min(a.temp_storage_path) FILTER (WHERE a.temp_storage_path = j.metadata->>'storage_path')
           FROM public.workspace_assets a JOIN public.jobs j ON j.id = a.job_id
          WHERE a.job_id = ANY($1) GROUP BY a.job_id",
        &ids,
        |r| (r.get(0), (r.get(1), r.get(2))),
    )
    .await;
    let usage: HashMap<Uuid, (i64, i64)> = query_map(
        &pg,
        "SELECT job_id, count(*), count(*) FILTER (WHERE provider_metadata->>'webhook_completed' = 'true')
           FROM public.api_usage_logs WHERE job_id = ANY($1) GROUP BY job_id",
        &ids,
        |r| (r.get(0), (r.get(1), r.get(2))),
    )
    .await;
    let claims: i64 = pg
        .query_one(
            "SELECT count(*) FROM public.job_completion_claims WHERE job_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    let s3 = s3().await;
    let mut objects: HashMap<String, Vec<String>> = HashMap::new();
    for (u, _) in &users {
        for key in keys_of_user(&s3, *u).await {
            let job = key
                .split('/')
                .nth(1)
                .and_then(|f| f.split('_').next())
                .unwrap_or_default()
                .to_owned();
            objects.entry(job).or_default().push(key);
        }
    }
    let mut wrong = Vec::new();
    for s in &submitted {
        let job = s.job.to_string();
        let keys = objects.get(&job).cloned().unwrap_or_default();
        let asset = assets.get(&s.job);
        if keys.len() != 1 {
            wrong.push(format!("{job}: objects {keys:?}"));
        }
        match asset {
            Some((1, Some(path))) if keys.first() == Some(path) => {}
            other => wrong.push(format!("{job}: asset rows {other:?} vs objects {keys:?}")),
        }
        if usage.get(&s.job) != Some(&(1, 1)) {
            wrong.push(format!(
                "{job}: usage rows (all, completed) {:?}",
                usage.get(&s.job)
            ));
        }
        assert!(
            keys.iter().all(|k| k.starts_with(&format!("{}/", s.user))),
            "{keys:?}"
        );
    }
    let stray: Vec<&String> = objects
        .keys()
        .filter(|j| !submitted.iter().any(|s| s.job.to_string() == **j))
        .collect();
    eprintln!(
        "{} completed jobs, {} asset rows, {} objects, {} usage rows; load test {:.1} s",
        statuses.get("completed").copied().unwrap_or(0),
        assets.values().map(|a| a.0).sum::<i64>(),
        objects.values().map(Vec::len).sum::<usize>(),
        usage.values().map(|u| u.0).sum::<i64>(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        wrong.is_empty(),
        "{} jobs not completed exactly once:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(stray.is_empty(), "objects of no submitted job: {stray:?}");
    assert_eq!(claims, 0, "claims left behind");
}
