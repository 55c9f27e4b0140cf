//! fal's side: the emulator's records of a request and its deliveries, webhook credentials as fal-image makes
//! them, real emulator-signed deliveries, and posts to fal-webhook as fal (or a forger) makes them.

use std::time::{Duration, Instant};

use gen_pipeline::fal::signature::HEADER_REQUEST_ID;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::client::{http, json_of, prompt};
use crate::common::stack_var;
use crate::trap::{Captured, Trap};

/// The emulator's tries per delivery.
pub const FAL_TRIES: usize = 10;

/// The emulator's record of a request.
pub async fn inspect(request_id: &str) -> Value {
    inspect_with(&http(), request_id).await
}

async fn inspect_with(client: &reqwest::Client, request_id: &str) -> Value {
    let url = format!(
        "{}/_emulator/requests/{request_id}",
        stack_var("FAL_EMULATOR_URL")
    );
    json_of(client.get(url)).await
}

/// Polls the emulator's record every 200 ms until `done` holds for it; returns that record.
async fn wait_record(
    request_id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let client = http();
    let started = Instant::now();
    loop {
        let record = inspect_with(&client, request_id).await;
        if done(&record) {
            return record;
        }
        assert!(
            started.elapsed() < timeout,
            "{what} of {request_id} after {timeout:?}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn attempts(record: &Value) -> Vec<Value> {
    record["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Waits until the emulator has made `n` deliveries that got an answer, and returns them.
pub async fn answered_deliveries(request_id: &str, n: usize, timeout: Duration) -> Vec<Value> {
    let answered = |record: &Value| -> Vec<Value> {
        attempts(record)
            .into_iter()
            .filter(|d| !d["http_status"].is_null())
            .collect()
    };
    let what = format!("fewer than {n} answered deliveries");
    let record = wait_record(request_id, timeout, &what, |r| answered(r).len() >= n).await;
    answered(&record)
}

pub fn is_2xx(attempt: &Value) -> bool {
    attempt["http_status"]
        .as_u64()
        .is_some_and(|s| (200..300).contains(&s))
}

/// Whether every delivery `1..=n` among the attempts got a 2xx answer or used up its tries.
pub fn settled(attempts: &[Value], n: u64) -> bool {
    (1..=n).all(|d| {
        let of_d: Vec<&Value> = attempts.iter().filter(|a| a["delivery"] == d).collect();
        of_d.iter().any(|a| is_2xx(a)) || of_d.len() >= FAL_TRIES
    })
}

/// Waits until every one of deliveries `1..=n` got a 2xx answer (or used up its tries); returns all attempts.
pub async fn settled_deliveries(request_id: &str, n: u64, timeout: Duration) -> Vec<Value> {
    let record = wait_record(request_id, timeout, "deliveries not settled", |r| {
        settled(&attempts(r), n)
    })
    .await;
    attempts(&record)
}

/// The credential query fal-image puts on a job's webhook URL: `job_id=<id>&token=<token>`, the token being
/// [`job_token`]. `secret` is the deployment's `FAL_WEBHOOK_SECRET`.
pub fn webhook_query(secret: &str, job_id: Uuid) -> Vec<(&'static str, String)> {
    vec![
        ("job_id", job_id.to_string()),
        ("token", job_token(secret, job_id)),
    ]
}

/// A job's webhook token, exactly as fal-image makes it: lowercase hex HMAC-SHA256(secret, hyphenated job id).
pub fn job_token(secret: &str, job_id: Uuid) -> String {
    gen_pipeline::webhook_auth::job_token(&secrecy::SecretString::from(secret), job_id)
}

/// The stack's job's own webhook credential, `job_id=…&token=…`, as fal-image puts it on the job's URL.
pub fn token_query(job_id: &str) -> Vec<(&'static str, String)> {
    webhook_query(
        &stack_var("FAL_WEBHOOK_SECRET"),
        Uuid::parse_str(job_id).unwrap(),
    )
}

/// The stack's job's webhook token alone.
pub fn token_of(job_id: &str) -> String {
    job_token(
        &stack_var("FAL_WEBHOOK_SECRET"),
        Uuid::parse_str(job_id).unwrap(),
    )
}

/// A real, fresh, emulator-signed delivery: the emulator is asked (with the FAL key, as fal's account holder
/// would) to run a request of its own whose webhook is a trap of this test, which records it and answers 200.
pub async fn capture_delivery() -> Captured {
    let trap = Trap::start().await;
    let mut url = url::Url::parse(&format!(
        "{}/queue/fal-ai/e2e/capture",
        stack_var("FAL_EMULATOR_URL")
    ))
    .unwrap();
    url.query_pairs_mut()
        .append_pair("fal_webhook", &trap.url("/hook"));
    let r = http()
        .post(url)
        .header("authorization", format!("Key {}", stack_var("FAL_KEY")))
        .json(&json!({"prompt": prompt("capture", "")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "emulator submit refused");
    let answer: Value = r.json().await.unwrap();
    let request_id = answer["request_id"].as_str().unwrap().to_owned();
    let captured = trap.first(Duration::from_secs(15)).await;
    assert_eq!(
        (captured.method.as_str(), captured.path.as_str()),
        ("POST", "/hook"),
        "capture"
    );
    assert_eq!(captured.header(HEADER_REQUEST_ID), request_id);
    let body: Value = serde_json::from_slice(&captured.body).expect("captured body is JSON");
    assert_eq!(body["request_id"], request_id.as_str());
    captured
}

/// POSTs a captured delivery (fal's headers and raw body, unchanged) to fal-webhook with this query.
pub async fn replay<K: AsRef<str>, V: AsRef<str>>(
    query: &[(K, V)],
    delivery: &Captured,
) -> (u16, String) {
    post_webhook(query, &delivery.fal_headers(), delivery.body.clone()).await
}

/// POSTs to the webhook function URL with the given query, headers and raw body; returns status and body text.
pub async fn post_webhook<K: AsRef<str>, V: AsRef<str>>(
    query: &[(K, V)],
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut url = url::Url::parse(&stack_var("FAL_WEBHOOK_URL")).unwrap();
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k.as_ref(), v.as_ref());
        }
    }
    let mut req = http().post(url).body(body);
    if !headers.iter().any(|(k, _)| k == "content-type") {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}
