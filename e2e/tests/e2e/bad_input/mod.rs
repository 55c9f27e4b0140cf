//! Malformed and hostile requests to both functions, as tables by boundary (the fal-image body, its fields,
//! authentication, the job routes, result URLs, the fal-webhook query, signature and body): every row names its
//! exact HTTP status and what it may change. Most may change nothing: no job and no object for the caller, and
//! another user's jobs and objects exactly as they were. Result URLs on unlisted hosts or schemes fail their job
//! without being fetched (a trap listener on 127.0.0.3 must never be contacted). Private and link-local ranges are
//! covered by the unit tests of `gen_pipeline::media`, never with traffic.

mod auth;
mod body;
mod fields;
mod result_urls;
mod routes;
mod webhook;

use std::fmt::Write as _;
use std::time::Duration;

use gen_pipeline::fal::signature::{
    HEADER_REQUEST_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_USER_ID,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use e2e::*;

const MIB: usize = 1024 * 1024;
const DROP: &str = "'; DROP TABLE jobs; --";
const OR_TRUE: &str = "' OR '1'='1";
/// base64url of `{"alg":"none","typ":"JWT"}`.
const ALG_NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

/// What a row may change.
enum Effect {
    /// Nothing at all.
    Nothing,
    /// One job of the caller that ends `failed` with nothing stored: a result URL we must refuse to fetch.
    FailedJob,
    /// One job of the caller whose row holds these strings verbatim (JSON pointer, value): hostile text is data.
    Verbatim(Vec<(&'static str, String)>),
}

enum Auth {
    None,
    /// The row's own fresh user.
    Caller,
    /// This `Authorization` header value.
    Header(String),
}

enum Target {
    Api {
        method: Method,
        path: String,
        auth: Auth,
        content_type: Option<&'static str>,
    },
    Webhook {
        method: Method,
        query: Vec<(&'static str, String)>,
        headers: Vec<(String, String)>,
    },
}

struct Row {
    name: String,
    caller: (Uuid, String),
    target: Target,
    body: Vec<u8>,
    status: u16,
    effect: Effect,
}

/// Another user's jobs and objects, which no row may touch.
struct Victim {
    id: Uuid,
    jwt: String,
    queued_job: String,
    queued_request_id: String,
    completed_job: String,
    completed_key: String,
}

/// Everything a row could change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    caller_jobs: i64,
    caller_objects: Vec<String>,
    victim_jobs: Vec<Value>,
    victim_objects: Vec<String>,
}

/// The world every table runs in: its own victim, and the seeded models injections would hit.
struct World {
    db: tokio_postgres::Client,
    victim: Victim,
    models_before: i64,
}

impl World {
    async fn new() -> World {
        let mut world = World {
            db: db().await,
            victim: victim().await,
            models_before: 0,
        };
        world.models_before = world.seeded_models().await;
        world
    }

    /// Other tests add models of their own while a table runs: the seeded ones are those injections would hit.
    async fn seeded_models(&self) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM public.api_models WHERE model_key NOT LIKE 'fal-ai/test/%'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn objects(&self, user: Uuid) -> Vec<String> {
        objects_of_job(&user.to_string(), "")
            .await
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    async fn jobs(&self, user: Uuid) -> Vec<Value> {
        first_column(
            &self.db,
            "SELECT to_jsonb(j) FROM public.jobs j WHERE user_id = $1 ORDER BY created_at, id",
            &[&user],
        )
        .await
    }

    async fn snapshot(&self, caller: Uuid) -> Snapshot {
        Snapshot {
            caller_jobs: self.jobs(caller).await.len() as i64,
            caller_objects: self.objects(caller).await,
            victim_jobs: self.jobs(self.victim.id).await,
            victim_objects: self.objects(self.victim.id).await,
        }
    }

    async fn count(&self, table: &str) -> i64 {
        self.db
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .await
            .unwrap()
            .get(0)
    }
}

async fn victim() -> Victim {
    let (id, jwt) = user().await;
    let (status, queued) = generate(
        &jwt,
        &json!({"prompt": prompt("victim queued", "#no-webhook"), "apiModelId": async_model()}),
    )
    .await;
    assert_eq!(status, 200, "{queued}");
    let (status, completed) = generate(
        &jwt,
        &json!({"prompt": prompt("victim completed", ""), "apiModelId": sync_model()}),
    )
    .await;
    assert_eq!(status, 200, "{completed}");
    let completed_job = completed["jobId"].as_str().unwrap().to_owned();
    let completed_key = job(&completed_job).await["metadata"]["storage_path"]
        .as_str()
        .unwrap()
        .to_owned();
    Victim {
        id,
        jwt,
        queued_job: queued["jobId"].as_str().unwrap().to_owned(),
        queued_request_id: queued["requestId"].as_str().unwrap().to_owned(),
        completed_job,
        completed_key,
    }
}

fn hs_token(claims: Value, secret: &str, alg: jsonwebtoken::Algorithm) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token for `sub` that claims `alg: none` and carries no signature.
fn alg_none_token(sub: Uuid) -> String {
    let real = jwt_for(sub, 3600);
    let payload = real.split('.').nth(1).unwrap();
    format!("{ALG_NONE_HEADER}.{payload}.")
}

fn random_signature_hex() -> String {
    (0..4)
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect()
}

/// fal-shaped signature headers with a random (so invalid) signature.
fn forged_headers(request_id: &str, timestamp: String) -> Vec<(String, String)> {
    vec![
        (HEADER_REQUEST_ID.into(), request_id.into()),
        (HEADER_USER_ID.into(), stack_var("FAL_EMULATOR_USER_ID")),
        (HEADER_TIMESTAMP.into(), timestamp),
        (HEADER_SIGNATURE.into(), random_signature_hex()),
    ]
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A delivery body that, were it accepted, would complete the victim's queued job.
fn completing_body(request_id: &str) -> Vec<u8> {
    json!({
        "request_id": request_id,
        "status": "OK",
        "payload": {"video": {"url": format!("{}/media/{request_id}/forged.mp4", stack_var("FAL_EMULATOR_URL"))}},
    })
    .to_string()
    .into_bytes()
}

fn post_json(auth: Auth) -> Target {
    Target::Api {
        method: Method::POST,
        path: "/fal-image".into(),
        auth,
        content_type: Some("application/json"),
    }
}

fn call(method: Method, path: String, auth: Auth) -> Target {
    Target::Api {
        method,
        path,
        auth,
        content_type: None,
    }
}

fn webhook(query: Vec<(&'static str, String)>, headers: Vec<(String, String)>) -> Target {
    Target::Webhook {
        method: Method::POST,
        query,
        headers,
    }
}

/// A row for a fresh caller that may change nothing (see [`Row::expecting`] for others).
async fn row(
    name: impl Into<String>,
    target: Target,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Row {
    Row {
        name: name.into(),
        caller: user().await,
        target,
        body: body.into(),
        status,
        effect: Effect::Nothing,
    }
}

impl Row {
    /// The row, allowed (and required) to have this effect instead.
    fn expecting(self, effect: Effect) -> Row {
        Row { effect, ..self }
    }
}

async fn send(row: &Row) -> (u16, String) {
    match &row.target {
        Target::Api {
            method,
            path,
            auth,
            content_type,
        } => {
            let mut req = http()
                .request(method.clone(), api(path))
                .timeout(Duration::from_secs(60));
            req = match auth {
                Auth::None => req,
                Auth::Caller => req.bearer_auth(&row.caller.1),
                Auth::Header(h) => req.header("authorization", h),
            };
            if let Some(ct) = content_type {
                req = req.header("content-type", *ct);
            }
            if !row.body.is_empty() || *method == Method::POST {
                req = req.body(row.body.clone());
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Target::Webhook {
            method,
            query,
            headers,
        } if *method == Method::POST => {
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_webhook(&query, headers, row.body.clone()).await
        }
        Target::Webhook { method, .. } => {
            let r = http()
                .request(method.clone(), stack_var("FAL_WEBHOOK_URL"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    }
}

/// `cargo lambda watch`'s own 500 (a problem document the functions never answer with). It has come, rarely, for
/// the 1000-path signing row after the function had run it and logged its answer; its cause inside watch is not
/// identified.
const WATCH_OWN_500: &str = r#""type":"https://httpstatuses.com/500""#;

/// [`send`], once more when the local runtime answered for the function with its own 500, for rows that must
/// change nothing (so sending again cannot double an effect); said on stderr. Every other answer is the row's.
async fn send_past_watch_faults(row: &Row) -> (u16, String) {
    let (status, answer) = send(row).await;
    if status == 500 && answer.contains(WATCH_OWN_500) && matches!(row.effect, Effect::Nothing) {
        eprintln!(
            "{}: cargo lambda watch answered its own 500; sent again",
            row.name
        );
        return send(row).await;
    }
    (status, answer)
}

/// What went wrong with a row's effects, if anything.
async fn check_effect(
    world: &World,
    row: &Row,
    answer: &str,
    before: &Snapshot,
) -> Result<String, String> {
    let caller = row.caller.0;
    match &row.effect {
        Effect::Nothing => {
            let after = world.snapshot(caller).await;
            if &after != before {
                return Err(format!("state changed: {before:?} -> {after:?}"));
            }
            if after.caller_jobs != 0 || !after.caller_objects.is_empty() {
                return Err(format!("the caller has jobs or objects: {after:?}"));
            }
            // Nothing of the other user, and no presigned URL of anything, may come back.
            for leak in [world.victim.id.to_string(), "X-Amz-".to_owned()] {
                if answer.contains(&leak) {
                    return Err(format!("the answer contains {leak}: {answer}"));
                }
            }
            Ok("nothing changed".into())
        }
        Effect::FailedJob => {
            let jobs = world.jobs(caller).await;
            let [j] = jobs.as_slice() else {
                return Err(format!("expected one job, found {}", jobs.len()));
            };
            let id = j["id"].as_str().unwrap();
            let j = wait_terminal(id, Duration::from_secs(60)).await;
            let objects = world.objects(caller).await;
            if j["status"] != "failed" || asset_count(id).await != 0 || !objects.is_empty() {
                return Err(format!("job {j} with objects {objects:?}"));
            }
            let victim_after = world.jobs(world.victim.id).await;
            if victim_after != before.victim_jobs {
                return Err("the other user's jobs changed".into());
            }
            Ok(format!("job failed: {}", j["error_message"]))
        }
        Effect::Verbatim(fields) => {
            let jobs = world.jobs(caller).await;
            let [j] = jobs.as_slice() else {
                return Err(format!("expected one job, found {}", jobs.len()));
            };
            for (pointer, value) in fields {
                if j.pointer(pointer).and_then(Value::as_str) != Some(value.as_str()) {
                    return Err(format!(
                        "{pointer} is {:?}, not {value:?}",
                        j.pointer(pointer)
                    ));
                }
            }
            if world.jobs(world.victim.id).await != before.victim_jobs {
                return Err("the other user's jobs changed".into());
            }
            Ok(format!("job {} stored the text verbatim", j["status"]))
        }
    }
}

/// A valid generation request (on the sync model).
fn valid() -> Value {
    json!({"prompt": prompt("bad input", ""), "apiModelId": sync_model()})
}

/// A request body of exactly `total` bytes naming `model`, padded in the prompt.
fn pad(total: usize, model: &str) -> String {
    let shell = format!("{{\"prompt\":\"\",\"apiModelId\":\"{model}\"}}");
    format!(
        "{{\"prompt\":\"{}\",\"apiModelId\":\"{model}\"}}",
        "a".repeat(total - shell.len())
    )
}

impl World {
    /// Sends every row and checks its status and effects, then that the injections were data (the seeded models
    /// and the jobs table are all there) and the victim still sees its queued job; fails naming every failed row.
    async fn run(&self, table: &str, rows: Vec<Row>) {
        let mut report = String::new();
        let mut failures = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let before = self.snapshot(row.caller.0).await;
            let (status, answer) = send_past_watch_faults(row).await;
            let effect = check_effect(self, row, &answer, &before).await;
            let verdict = if status == row.status && effect.is_ok() {
                "ok"
            } else {
                "FAIL"
            };
            let mut detail = match &effect {
                Ok(d) | Err(d) => d.clone(),
            };
            if status != row.status {
                let _ = write!(
                    detail,
                    "; answer: {}",
                    answer.chars().take(300).collect::<String>()
                );
            }
            let _ = writeln!(
                report,
                "{:>3} {verdict:<4} want {} got {status}  {} — {detail}",
                i + 1,
                row.status,
                row.name
            );
            if verdict != "ok" {
                failures.push(format!(
                    "{}: want {}, got {status}; {detail}",
                    row.name, row.status
                ));
            }
        }
        eprintln!("bad input, {table} ({} rows):\n{report}", rows.len());

        assert_eq!(self.seeded_models().await, self.models_before);
        assert!(self.count("jobs").await > 0);
        let v = &self.victim;
        let (status, view) = view_job(&v.jwt, &v.queued_job).await;
        assert_eq!(status, 200);
        assert_eq!(view["status"], "queued");
        assert!(
            failures.is_empty(),
            "{} of {} rows failed:\n{}",
            failures.len(),
            rows.len(),
            failures.join("\n")
        );
    }
}
