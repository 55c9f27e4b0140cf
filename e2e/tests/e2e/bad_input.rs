//! Malformed and hostile requests to both functions, as one table: every row names its exact HTTP status and
//! what it may change. Most may change nothing: no job and no object for the caller, and another user's jobs and
//! objects exactly as they were. Result URLs on unlisted hosts or schemes fail their job without being fetched
//! (a trap listener on 127.0.0.3 must never be contacted). Private and link-local ranges are covered by the unit
//! tests of `gen_pipeline::media`, never with traffic.

use std::fmt::Write as _;
use std::time::Duration;

use gen_pipeline::fal::signature::{
    HEADER_REQUEST_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_USER_ID,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::stack_var;
use crate::fal_webhook::{capture_delivery, post_webhook, token_of, token_query};
use crate::support::*;

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

struct World {
    db: tokio_postgres::Client,
    s3: aws_sdk_s3::Client,
    victim: Victim,
}

impl World {
    async fn objects(&self, user: Uuid) -> Vec<String> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(stack_var("WORKSPACE_BUCKET"))
            .prefix(format!("{user}/"))
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .map(|o| o.key().unwrap_or_default().to_owned())
            .collect()
    }

    async fn jobs(&self, user: Uuid) -> Vec<Value> {
        self.db
            .query(
                "SELECT to_jsonb(j) FROM public.jobs j WHERE user_id = $1 ORDER BY created_at, id",
                &[&user],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
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

async fn row(
    name: impl Into<String>,
    target: Target,
    body: impl Into<Vec<u8>>,
    status: u16,
    effect: Effect,
) -> Row {
    Row {
        name: name.into(),
        caller: user().await,
        target,
        body: body.into(),
        status,
        effect,
    }
}

/// A row whose body is built from the caller's own id (paths under `<caller>/`).
async fn row_for(
    name: impl Into<String>,
    target: Target,
    body: impl FnOnce(Uuid) -> Value,
    status: u16,
    effect: Effect,
) -> Row {
    let caller = user().await;
    Row {
        name: name.into(),
        body: body(caller.0).to_string().into_bytes(),
        caller,
        target,
        status,
        effect,
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

#[tokio::test]
async fn malformed_and_hostile_requests_get_their_status_and_change_nothing() {
    let world = World {
        db: db().await,
        s3: gen_pipeline::aws::s3(&crate::common::sdk_config().await),
        victim: victim().await,
    };
    let v = &world.victim;
    // Other tests add models of their own while this runs: count the seeded ones, which injections would hit.
    let seeded_models = || async {
        world
            .db
            .query_one(
                "SELECT count(*) FROM public.api_models WHERE model_key NOT LIKE 'fal-ai/test/%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let models_before = seeded_models().await;
    let trap = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let emulator = url::Url::parse(&stack_var("FAL_EMULATOR_URL")).unwrap();
    let emu_port = emulator.port().unwrap();
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let jwt_secret = stack_var("SUPABASE_JWT_SECRET");
    let sync = sync_model();
    let asyn = async_model();
    let valid = || json!({"prompt": prompt("bad input", ""), "apiModelId": sync_model()});
    let mut rows: Vec<Row> = Vec::new();

    // --- fal-image: bodies that are not JSON, not an object, too big or too deep -------------------------
    for (name, body) in [
        (
            "truncated JSON",
            format!("{{\"prompt\": \"x\", \"apiModelId\": \"{sync}"),
        ),
        ("truncated after a key", "{\"prompt\": ".to_owned()),
        ("a lone brace", "{".to_owned()),
        ("empty body", String::new()),
        (
            "trailing garbage after the object",
            format!("{} xyz", valid()),
        ),
        ("two objects", format!("{}{}", valid(), valid())),
        ("an array body", "[1,2,3]".to_owned()),
        ("a string body", "\"x\"".to_owned()),
        ("a null body", "null".to_owned()),
        ("a number body", "42".to_owned()),
        ("single-quoted JSON", "{'prompt': 'x'}".to_owned()),
        (
            "a lone surrogate escape",
            format!("{{\"prompt\":\"\\ud800\",\"apiModelId\":\"{sync}\"}}"),
        ),
        ("10 000 unclosed [", "[".repeat(10_000)),
        (
            "10 000 nested arrays",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        (
            "10 000 nested arrays inside input",
            format!(
                "{{\"prompt\":\"x\",\"apiModelId\":\"{sync}\",\"input\":{{\"a\":{}{}}}}}",
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
        ),
        (
            "200 nested objects inside metadata",
            format!(
                "{{\"prompt\":\"x\",\"apiModelId\":\"{sync}\",\"metadata\":{}1{}}}",
                "{\"a\":".repeat(200),
                "}".repeat(200)
            ),
        ),
    ] {
        rows.push(row(name, post_json(Auth::Caller), body, 400, Effect::Nothing).await);
    }
    let pad = |total: usize, model: &str| {
        let shell = format!("{{\"prompt\":\"\",\"apiModelId\":\"{model}\"}}");
        format!(
            "{{\"prompt\":\"{}\",\"apiModelId\":\"{model}\"}}",
            "a".repeat(total - shell.len())
        )
    };
    rows.push(
        row(
            "body 1 byte over 1 MiB",
            post_json(Auth::Caller),
            pad(MIB + 1, &sync),
            413,
            Effect::Nothing,
        )
        .await,
    );
    rows.push(
        row(
            "body of 5 MiB",
            post_json(Auth::Caller),
            pad(5 * MIB, &sync),
            413,
            Effect::Nothing,
        )
        .await,
    );
    rows.push(
        row(
            "body of exactly 1 MiB (accepted size) naming an unknown model",
            post_json(Auth::Caller),
            pad(MIB, &Uuid::new_v4().to_string()),
            400,
            Effect::Nothing,
        )
        .await,
    );

    // --- fal-image: every field with the wrong JSON type; missing and unknown values --------------------
    for (name, body) in [
        (
            "prompt as number",
            json!({"prompt": 42, "apiModelId": sync}),
        ),
        (
            "prompt as array",
            json!({"prompt": ["a"], "apiModelId": sync}),
        ),
        (
            "prompt as object",
            json!({"prompt": {"a": 1}, "apiModelId": sync}),
        ),
        (
            "prompt as bool",
            json!({"prompt": true, "apiModelId": sync}),
        ),
        (
            "apiModelId as number",
            json!({"prompt": "x", "apiModelId": 42}),
        ),
        (
            "apiModelId as array",
            json!({"prompt": "x", "apiModelId": [sync]}),
        ),
        (
            "apiModelId as object",
            json!({"prompt": "x", "apiModelId": {"id": sync}}),
        ),
        (
            "model_key_override as number",
            json!({"prompt": "x", "apiModelId": sync, "model_key_override": 1}),
        ),
        (
            "modality as number",
            json!({"prompt": "x", "apiModelId": sync, "modality": 1}),
        ),
        (
            "quality as object",
            json!({"prompt": "x", "apiModelId": sync, "quality": {"a": 1}}),
        ),
        (
            "quality as number",
            json!({"prompt": "x", "apiModelId": sync, "quality": 5}),
        ),
        (
            "job_type as array",
            json!({"prompt": "x", "apiModelId": sync, "job_type": ["image_fast"]}),
        ),
        (
            "jobType as object",
            json!({"prompt": "x", "apiModelId": sync, "jobType": {}}),
        ),
        (
            "input as string",
            json!({"prompt": "x", "apiModelId": sync, "input": "image_url=x"}),
        ),
        (
            "input as array",
            json!({"prompt": "x", "apiModelId": sync, "input": [1]}),
        ),
        (
            "input as number",
            json!({"prompt": "x", "apiModelId": sync, "input": 3}),
        ),
        (
            "metadata as array",
            json!({"prompt": "x", "apiModelId": sync, "metadata": []}),
        ),
        (
            "metadata as string",
            json!({"prompt": "x", "apiModelId": sync, "metadata": "x"}),
        ),
        (
            "input.image_url as number",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": 7}}),
        ),
        (
            "input.image_url as object",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": {"url": 1}}}),
        ),
        ("no prompt", json!({"apiModelId": sync})),
        ("empty prompt", json!({"prompt": "", "apiModelId": sync})),
        (
            "blank prompt",
            json!({"prompt": " \t\n ", "apiModelId": sync}),
        ),
        ("empty object", json!({})),
        // Postgres text and jsonb cannot hold U+0000: a permanent client error, not "temporarily unavailable".
        (
            "NUL character in the prompt",
            json!({"prompt": "a\u{0}b", "apiModelId": sync}),
        ),
        (
            "NUL character in a metadata value",
            json!({"prompt": "x", "apiModelId": sync, "metadata": {"k": "a\u{0}b"}}),
        ),
        (
            "NUL character in a metadata key",
            json!({"prompt": "x", "apiModelId": sync, "metadata": {"k\u{0}": "v"}}),
        ),
        (
            "unknown model id",
            json!({"prompt": "x", "apiModelId": Uuid::new_v4()}),
        ),
        (
            "model id not a uuid",
            json!({"prompt": "x", "apiModelId": "not-a-uuid"}),
        ),
        (
            "model id: SQL injection (DROP)",
            json!({"prompt": "x", "apiModelId": DROP}),
        ),
        (
            "model id: SQL injection (OR true)",
            json!({"prompt": "x", "apiModelId": OR_TRUE}),
        ),
        (
            "model id: uuid followed by SQL",
            json!({"prompt": "x", "apiModelId": format!("{sync}{OR_TRUE}")}),
        ),
        (
            "input.image_url: SQL injection",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": DROP}}),
        ),
        (
            "input.image_url ../../etc/passwd",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": "../../etc/passwd"}}),
        ),
        (
            "input.image_url /etc/passwd",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": "/etc/passwd"}}),
        ),
        (
            "input.image_url file:///etc/passwd",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": "file:///etc/passwd"}}),
        ),
        (
            "input.image_url: another user's object",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": format!("workspace-temp/{}", v.completed_key)}}),
        ),
        (
            "input.image_url: another user's object, bucket-less",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": v.completed_key}}),
        ),
        (
            "input.image_url: another user's library object",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url": format!("user-library/{}/x.png", v.id)}}),
        ),
        (
            "input.image_url: another user's object as a Supabase signed URL",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_url":
                format!("https://project.supabase.co/storage/v1/object/sign/workspace-temp/{}?token=t", v.completed_key)}}),
        ),
        (
            "input.image_urls[]: another user's object",
            json!({"prompt": "x", "apiModelId": sync, "input": {"image_urls": [format!("workspace-temp/{}", v.completed_key)]}}),
        ),
        (
            "input.video (video model): another user's object",
            json!({"prompt": "x", "apiModelId": asyn, "input": {"video": format!("workspace-temp/{}/x.mp4", v.id)}}),
        ),
    ] {
        rows.push(
            row(
                name,
                post_json(Auth::Caller),
                body.to_string(),
                400,
                Effect::Nothing,
            )
            .await,
        );
    }
    rows.push(
        row_for(
            "input.image_url: climbing out of the caller's own prefix",
            post_json(Auth::Caller),
            |me| json!({"prompt": "x", "apiModelId": sync_model(), "input": {"image_url": format!("workspace-temp/{me}/../{}", v.completed_key)}}),
            400,
            Effect::Nothing,
        )
        .await,
    );
    // A model key that is not a fal model id is the caller's error (contract: 400, never a bare 500).
    for (name, key) in [
        ("model_key_override ../../etc/passwd", "../../etc/passwd"),
        ("model_key_override: SQL injection", DROP),
        (
            "model_key_override: an absolute URL",
            "https://evil.example/x",
        ),
    ] {
        rows.push(
            row(
                name,
                post_json(Auth::Caller),
                json!({"prompt": "x", "apiModelId": sync, "model_key_override": key}).to_string(),
                400,
                Effect::Nothing,
            )
            .await,
        );
    }

    // --- fal-image: hostile text in every free-text field is stored as data ------------------------------
    for injection in [DROP, OR_TRUE] {
        let text = format!("{injection} {}", Uuid::new_v4().simple());
        rows.push(
            row(
                format!("SQL injection ({injection}) in every free-text field"),
                post_json(Auth::Caller),
                json!({
                    "prompt": text, "apiModelId": sync, "quality": injection, "modality": injection,
                    "job_type": injection, "jobType": injection,
                    "input": {"negative_prompt": injection, "seed": injection},
                    "metadata": Value::Object(
                        [("destination", injection), ("character_name", injection), (injection, injection)]
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), Value::from(v)))
                            .collect(),
                    ),
                })
                .to_string(),
                200,
                Effect::Verbatim(vec![
                    ("/original_prompt", text.clone()),
                    ("/metadata/destination", injection.to_owned()),
                    ("/metadata/character_name", injection.to_owned()),
                ]),
            )
            .await,
        );
    }

    // --- Result URLs on unlisted hosts or schemes: the job fails, nothing is fetched ---------------------
    for (name, url) in [
        (
            "ftp:// result URL",
            format!("ftp://127.0.0.3:{trap_port}/x.png"),
        ),
        (
            "file:///etc/passwd result URL",
            "file:///etc/passwd".to_owned(),
        ),
        (
            "gopher:// result URL",
            format!("gopher://127.0.0.3:{trap_port}/_x"),
        ),
        (
            "http:// result URL on an unlisted loopback host",
            format!("http://127.0.0.3:{trap_port}/x.png"),
        ),
        (
            "result URL on the allowed host with credentials",
            format!("http://user:pw@127.0.0.1:{emu_port}/x.png"),
        ),
        (
            "result URL on the allowed port under another name",
            format!("http://localhost:{emu_port}/x.png"),
        ),
    ] {
        rows.push(
            row(
                format!("sync: {name}"),
                post_json(Auth::Caller),
                json!({"prompt": prompt("ssrf", &format!("#media-url={url}")), "apiModelId": sync})
                    .to_string(),
                502,
                Effect::FailedJob,
            )
            .await,
        );
    }
    for (name, url) in [
        (
            "file:///etc/passwd result URL",
            "file:///etc/passwd".to_owned(),
        ),
        (
            "gopher:// result URL",
            format!("gopher://127.0.0.3:{trap_port}/_x"),
        ),
        (
            "http:// result URL on an unlisted loopback host",
            format!("http://127.0.0.3:{trap_port}/x.mp4"),
        ),
    ] {
        rows.push(
            row(
                format!("webhook: {name}"),
                post_json(Auth::Caller),
                json!({"prompt": prompt("ssrf", &format!("#media-url={url}")), "apiModelId": asyn})
                    .to_string(),
                200,
                Effect::FailedJob,
            )
            .await,
        );
    }

    // --- fal-image: content types and tokens ------------------------------------------------------------
    for (name, ct) in [
        ("text/plain", Some("text/plain")),
        ("no content type", None),
        ("form-encoded", Some("application/x-www-form-urlencoded")),
        ("multipart", Some("multipart/form-data; boundary=x")),
        (
            "application/json-patch+json",
            Some("application/json-patch+json"),
        ),
    ] {
        let target = Target::Api {
            method: Method::POST,
            path: "/fal-image".into(),
            auth: Auth::Caller,
            content_type: ct,
        };
        rows.push(
            row(
                format!("content type: {name}"),
                target,
                valid().to_string(),
                415,
                Effect::Nothing,
            )
            .await,
        );
    }
    // Size, type and syntax are checked before the token: an anonymous bad body gets 413/415/400, not 401.
    let anonymous_text = Target::Api {
        method: Method::POST,
        path: "/fal-image".into(),
        auth: Auth::None,
        content_type: Some("text/plain"),
    };
    rows.push(
        row(
            "no token and text/plain",
            anonymous_text,
            valid().to_string(),
            415,
            Effect::Nothing,
        )
        .await,
    );
    rows.push(
        row(
            "no token and truncated JSON",
            post_json(Auth::None),
            "{\"prompt\"",
            400,
            Effect::Nothing,
        )
        .await,
    );
    rows.push(
        row(
            "no token and 2 MiB",
            post_json(Auth::None),
            pad(2 * MIB, &sync),
            413,
            Effect::Nothing,
        )
        .await,
    );

    let stranger = Uuid::new_v4();
    let now_s = now();
    for (name, auth) in [
        ("no Authorization header", Auth::None),
        ("Bearer garbage", Auth::Header("Bearer garbage".into())),
        ("Bearer and nothing", Auth::Header("Bearer ".into())),
        (
            "Basic credentials",
            Auth::Header("Basic dXNlcjpwYXNz".into()),
        ),
        (
            "expired token",
            Auth::Header(format!("Bearer {}", jwt_for(stranger, -3600))),
        ),
        (
            "token signed with another secret",
            Auth::Header(format!(
                "Bearer {}",
                hs_token(
                    json!({"sub": stranger, "exp": now_s + 600}),
                    "not-the-secret",
                    jsonwebtoken::Algorithm::HS256
                )
            )),
        ),
        (
            "alg none token",
            Auth::Header(format!("Bearer {}", alg_none_token(stranger))),
        ),
        (
            "HS512 token with the right secret",
            Auth::Header(format!(
                "Bearer {}",
                hs_token(
                    json!({"sub": stranger, "exp": now_s + 600}),
                    &jwt_secret,
                    jsonwebtoken::Algorithm::HS512
                )
            )),
        ),
        (
            "token without exp",
            Auth::Header(format!(
                "Bearer {}",
                hs_token(
                    json!({"sub": stranger}),
                    &jwt_secret,
                    jsonwebtoken::Algorithm::HS256
                )
            )),
        ),
        (
            "token whose sub is SQL",
            Auth::Header(format!(
                "Bearer {}",
                hs_token(
                    json!({"sub": OR_TRUE, "exp": now_s + 600}),
                    &jwt_secret,
                    jsonwebtoken::Algorithm::HS256
                )
            )),
        ),
    ] {
        rows.push(
            row(
                format!("POST /fal-image: {name}"),
                post_json(auth),
                valid().to_string(),
                401,
                Effect::Nothing,
            )
            .await,
        );
    }

    // --- fal-image: job ids that are someone else's, not uuids, or hostile --------------------------------
    let job_path = |id: &str| format!("/jobs/{id}");
    let cancel_path = |id: &str| format!("/jobs/{id}/cancel");
    for (name, target, status) in [
        (
            "GET another user's queued job",
            call(Method::GET, job_path(&v.queued_job), Auth::Caller),
            404,
        ),
        (
            "cancel another user's queued job",
            call(Method::POST, cancel_path(&v.queued_job), Auth::Caller),
            404,
        ),
        (
            "GET another user's completed job",
            call(Method::GET, job_path(&v.completed_job), Auth::Caller),
            404,
        ),
        (
            "cancel another user's completed job (404, not 409)",
            call(Method::POST, cancel_path(&v.completed_job), Auth::Caller),
            404,
        ),
        (
            "GET a job id that is not a uuid",
            call(Method::GET, job_path("not-a-uuid"), Auth::Caller),
            404,
        ),
        (
            "GET the nil job id",
            call(
                Method::GET,
                job_path(&Uuid::nil().to_string()),
                Auth::Caller,
            ),
            404,
        ),
        (
            "GET a job id followed by SQL",
            call(
                Method::GET,
                job_path(&format!("{}{OR_TRUE}", v.queued_job)),
                Auth::Caller,
            ),
            404,
        ),
        (
            "cancel a job id that is SQL",
            call(Method::POST, cancel_path(DROP), Auth::Caller),
            404,
        ),
        (
            "GET an encoded ../../etc/passwd job id",
            call(
                Method::GET,
                job_path("..%2F..%2Fetc%2Fpasswd"),
                Auth::Caller,
            ),
            404,
        ),
        (
            "DELETE a job",
            call(Method::DELETE, job_path(&v.queued_job), Auth::Caller),
            404,
        ),
        (
            "GET /fal-image",
            call(Method::GET, "/fal-image".into(), Auth::Caller),
            405,
        ),
        (
            "GET another user's job without a token",
            call(Method::GET, job_path(&v.queued_job), Auth::None),
            401,
        ),
        (
            "GET another user's job with an alg none token in their name",
            call(
                Method::GET,
                job_path(&v.queued_job),
                Auth::Header(format!("Bearer {}", alg_none_token(v.id))),
            ),
            401,
        ),
        (
            "cancel another user's job with a token in their name signed with another secret",
            call(
                Method::POST,
                cancel_path(&v.queued_job),
                Auth::Header(format!(
                    "Bearer {}",
                    hs_token(
                        json!({"sub": v.id, "exp": now_s + 600}),
                        "not-the-secret",
                        jsonwebtoken::Algorithm::HS256
                    )
                )),
            ),
            401,
        ),
        (
            "cancel another user's job with their expired token",
            call(
                Method::POST,
                cancel_path(&v.queued_job),
                Auth::Header(format!("Bearer {}", jwt_for(v.id, -3600))),
            ),
            401,
        ),
    ] {
        rows.push(row(name, target, Vec::new(), status, Effect::Nothing).await);
    }

    // --- fal-webhook: token, signature, replay, size; all aimed at the other user's queued job -----------
    let rid = v.queued_request_id.clone();
    let token = token_of(&v.queued_job);
    let job_q = |token: Option<&str>| {
        let mut q = vec![("job_id", v.queued_job.clone())];
        if let Some(t) = token {
            q.push(("token", t.to_owned()));
        }
        q
    };
    let fresh = || forged_headers(&rid, now().to_string());
    for (name, query, headers, body, status) in [
        ("no token", job_q(None), fresh(), completing_body(&rid), 401),
        (
            "wrong token",
            job_q(Some(&"0".repeat(64))),
            fresh(),
            completing_body(&rid),
            401,
        ),
        (
            "empty token",
            job_q(Some("")),
            fresh(),
            completing_body(&rid),
            401,
        ),
        (
            "token is SQL",
            job_q(Some(OR_TRUE)),
            fresh(),
            completing_body(&rid),
            401,
        ),
        (
            "a wrong token first, the right one second",
            vec![
                ("job_id", v.queued_job.clone()),
                ("token", "nope".into()),
                ("token", token.clone()),
            ],
            fresh(),
            completing_body(&rid),
            401,
        ),
        (
            "right token, no signature headers",
            job_q(Some(&token)),
            Vec::new(),
            completing_body(&rid),
            401,
        ),
        (
            "right token, replay: timestamp 10 minutes old, random signature",
            job_q(Some(&token)),
            forged_headers(&rid, (now() - 600).to_string()),
            completing_body(&rid),
            401,
        ),
        (
            "right token, timestamp 10 minutes ahead",
            job_q(Some(&token)),
            forged_headers(&rid, (now() + 600).to_string()),
            completing_body(&rid),
            401,
        ),
        (
            "right token, timestamp i64::MIN",
            job_q(Some(&token)),
            forged_headers(&rid, i64::MIN.to_string()),
            completing_body(&rid),
            401,
        ),
        (
            "right token, timestamp not a number",
            job_q(Some(&token)),
            forged_headers(&rid, "now".into()),
            completing_body(&rid),
            401,
        ),
        (
            "right token, signature not hex",
            job_q(Some(&token)),
            fresh()
                .into_iter()
                .map(|(k, val)| {
                    if k == HEADER_SIGNATURE {
                        (k, "zz".repeat(64))
                    } else {
                        (k, val)
                    }
                })
                .collect(),
            completing_body(&rid),
            401,
        ),
        // The signature covers the raw body and is checked before parsing, so malformed JSON is a 401, not a 400.
        (
            "right token, malformed JSON body",
            job_q(Some(&token)),
            fresh(),
            b"{\"request_id\":".to_vec(),
            401,
        ),
        (
            "right token, SQL in the request id (header and body)",
            job_q(Some(&token)),
            forged_headers(DROP, now().to_string()),
            completing_body(DROP),
            401,
        ),
        (
            "right token, body over 1 MiB",
            job_q(Some(&token)),
            fresh(),
            vec![b' '; MIB + 1],
            413,
        ),
    ] {
        rows.push(
            row(
                format!("webhook: {name}"),
                webhook(query, headers),
                body,
                status,
                Effect::Nothing,
            )
            .await,
        );
    }
    let get_webhook = Target::Webhook {
        method: Method::GET,
        query: Vec::new(),
        headers: Vec::new(),
    };
    rows.push(
        row(
            "webhook: GET",
            get_webhook,
            Vec::new(),
            405,
            Effect::Nothing,
        )
        .await,
    );
    // A real, emulator-signed delivery of another request: it passes both checks, then finds nothing to change.
    let real = capture_delivery().await;
    let unknown = Uuid::new_v4().to_string();
    let with_secret = |job_id: &str, secret: &str| {
        vec![("job_id", job_id.to_owned()), ("secret", secret.to_owned())]
    };
    for (name, query, status) in [
        // A token is made for a job id, so a job_id that is no UUID cannot carry one.
        (
            "job_id is SQL, with a token",
            vec![("job_id", DROP.to_owned()), ("token", token.clone())],
            401,
        ),
        // The global secret (still accepted where no run says otherwise) reaches the job lookup with them.
        (
            "job_id is SQL, with the global secret",
            with_secret(DROP, &secret),
            404,
        ),
        (
            "job_id is ../../etc/passwd, with the global secret",
            with_secret("../../etc/passwd", &secret),
            404,
        ),
        ("job_id is another request's job", job_q(Some(&token)), 409),
        (
            "an unknown job with its own token",
            token_query(&unknown),
            404,
        ),
        (
            "no job_id and an unknown request id, with the global secret",
            vec![("secret", secret.clone())],
            404,
        ),
        (
            "the global secret for a job whose URL carries a token",
            with_secret(&v.queued_job, &secret),
            401,
        ),
        (
            "another job's token",
            job_q(Some(&token_of(&v.completed_job))),
            401,
        ),
        (
            "the job's token presented for another job",
            vec![
                ("job_id", v.completed_job.clone()),
                ("token", token.clone()),
            ],
            401,
        ),
        ("wrong token", job_q(Some(&"0".repeat(64))), 401),
        (
            "truncated token",
            job_q(Some(&token[..token.len() - 1])),
            401,
        ),
    ] {
        rows.push(
            row(
                format!("webhook, authentic delivery: {name}"),
                webhook(query, real.fal_headers()),
                real.body.clone(),
                status,
                Effect::Nothing,
            )
            .await,
        );
    }

    // --- Run the table ---------------------------------------------------------------------------------
    assert!(rows.len() >= 40, "only {} rows", rows.len());
    let mut report = String::new();
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let before = world.snapshot(row.caller.0).await;
        let (status, answer) = send(row).await;
        let effect = check_effect(&world, row, &answer, &before).await;
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
    eprintln!("bad input table ({} rows):\n{report}", rows.len());

    // No result URL of a refused host was ever contacted.
    match trap.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => failures.push(format!(
            "the trap listener on 127.0.0.3 was contacted: {other:?}"
        )),
    }
    // The injections were data: the tables are all there.
    assert_eq!(seeded_models().await, models_before);
    assert!(world.count("jobs").await > 0);
    let victim_view = http()
        .get(api(&job_path(&v.queued_job)))
        .bearer_auth(&v.jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(victim_view.status(), 200);
    assert_eq!(
        victim_view.json::<Value>().await.unwrap()["status"],
        "queued"
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
