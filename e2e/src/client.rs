//! The HTTP API as a signed-in client calls it: fresh users with tokens, generations, job views and cancels, and
//! events sent through the Lambda runtime API of `cargo lambda watch`.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::stack_var;
use crate::records::db;

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Sends the request and returns its JSON answer (panics when there is none).
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// A fresh user (in `auth.users` and `profiles`) and a valid JWT for it.
pub async fn user() -> (Uuid, String) {
    let id = Uuid::new_v4();
    gen_pipeline::db::users::ensure(&db().await, id)
        .await
        .unwrap();
    (id, jwt_for(id, 3600))
}

/// A user's access token as the project's legacy HS256 secret signs it, with Supabase's claims (the Node suite
/// covers the ES256 and RS256 keys of the local stack's JWKS).
pub fn jwt_for(id: Uuid, ttl_secs: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let issuer = format!(
        "{}/auth/v1",
        stack_var("SUPABASE_URL").trim_end_matches('/')
    );
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": issuer, "sub": id, "aud": "authenticated", "role": "authenticated", "iat": now,
                "exp": now + ttl_secs, "is_anonymous": false}),
        &jsonwebtoken::EncodingKey::from_secret(stack_var("SUPABASE_JWT_SECRET").as_bytes()),
    )
    .unwrap()
}

pub fn api(path: &str) -> String {
    format!("{}{path}", stack_var("FAL_IMAGE_URL"))
}

/// `POST /fal-image` with a JSON body: the whole response (for its headers).
pub async fn generate_response(jwt: &str, body: &Value) -> reqwest::Response {
    http()
        .post(api("/fal-image"))
        .bearer_auth(jwt)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// `POST /fal-image` with a JSON body; returns status and JSON answer.
pub async fn generate(jwt: &str, body: &Value) -> (u16, Value) {
    answer_of(generate_response(jwt, body).await).await
}

/// Status and JSON answer (`null` when the body is not JSON).
pub async fn answer_of(r: reqwest::Response) -> (u16, Value) {
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A generation that must be accepted as a queued job: (job id, fal request id).
pub async fn submit_queued(jwt: &str, body: &Value) -> (String, String) {
    let (status, answer) = generate(jwt, body).await;
    assert_eq!(status, 200, "submit answered {status}: {answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    let job_id = answer["jobId"].as_str().expect("jobId").to_owned();
    let request_id = answer["requestId"].as_str().expect("requestId").to_owned();
    (job_id, request_id)
}

/// An async generation for a fresh user; returns (user id, job id, fal request id).
pub async fn submit(text: &str, directives: &str) -> (Uuid, String, String) {
    let (user_id, jwt) = user().await;
    let body = json!({"prompt": prompt(text, directives), "apiModelId": async_model()});
    let (job_id, request_id) = submit_queued(&jwt, &body).await;
    (user_id, job_id, request_id)
}

/// A generation for the holder of `jwt` (`owner`), sent in the background: its answer to await, and its job's id once
/// the row is written (the submission still in flight at fal's, for a body that delays the provider's answer).
/// `marker` is a word of its prompt, which no other job of the owner has.
pub async fn generate_in_flight(
    jwt: &str,
    owner: Uuid,
    body: Value,
    marker: &str,
) -> (tokio::task::JoinHandle<(u16, Value)>, String) {
    let submitting = tokio::spawn({
        let jwt = jwt.to_owned();
        async move { generate(&jwt, &body).await }
    });
    let db = db().await;
    let mut written = None;
    crate::wait_until(
        "the job row of the submission in flight",
        Duration::from_secs(20),
        async || {
            written = db
                .query_opt(
                    "SELECT id::text FROM public.jobs WHERE user_id = $1 AND strpos(original_prompt, $2) > 0",
                    &[&owner, &marker],
                )
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0));
            written.is_some()
        },
    )
    .await;
    (submitting, written.expect("written"))
}

/// `GET /jobs/{id}` as the holder of `jwt`: status and JSON answer.
pub async fn view_job(jwt: &str, job_id: &str) -> (u16, Value) {
    let request = http().get(api(&format!("/jobs/{job_id}")));
    answer_of(request.bearer_auth(jwt).send().await.unwrap()).await
}

/// `POST /jobs/{id}/cancel` as the holder of `jwt`: status and JSON answer.
pub async fn cancel_job(jwt: &str, job_id: &str) -> (u16, Value) {
    let request = http().post(api(&format!("/jobs/{job_id}/cancel")));
    answer_of(request.bearer_auth(jwt).send().await.unwrap()).await
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

/// The functions' `MAX_OPEN_JOBS_PER_USER`: the test's environment's, else the functions' default.
pub fn max_open_jobs() -> usize {
    std::env::var("MAX_OPEN_JOBS_PER_USER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Sends an event to a function through the runtime API of `cargo lambda watch`, as `cargo lambda invoke` (or
/// API Gateway) does; returns the function's answer.
pub async fn invoke(function: &str, event: &Value) -> Value {
    let url = format!(
        "{}/2015-03-31/functions/{function}/invocations",
        stack_var("LAMBDA_WATCH_URL")
    );
    json_of(http().post(url).json(event)).await
}
