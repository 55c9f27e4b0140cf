//! fal-webhook end to end: deliveries signed by the fal emulator (or forged/replayed by the test) reach the
//! function under `cargo lambda watch`; effects are checked in Postgres, S3 and the emulator's delivery records.

use std::time::{Duration, Instant};

use ed25519_dalek::Signer as _;
use gen_pipeline::fal::signature::{
    HEADER_REQUEST_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_USER_ID, signed_message,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

use crate::common::stack_var;
use crate::support::{
    answered_deliveries, asset_count, async_model, db, function_peak_rss, generate, http, inspect,
    job, objects_of_job, prompt, usage_count, user, wait_terminal,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------------------------------------

/// An async generation for a fresh user; returns (user id, job id, fal request id).
async fn submit(text: &str, directives: &str) -> (Uuid, String, String) {
    let (user_id, jwt) = user().await;
    let (status, answer) = generate(
        &jwt,
        &json!({"prompt": prompt(text, directives), "apiModelId": async_model()}),
    )
    .await;
    assert_eq!(status, 200, "submit answered {status}: {answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    let job_id = answer["jobId"].as_str().expect("jobId").to_owned();
    let request_id = answer["requestId"].as_str().expect("requestId").to_owned();
    (user_id, job_id, request_id)
}

/// One webhook delivery as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    /// Header names lower-cased.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("captured delivery has no {name} header: {:?}", self.headers))
    }

    /// Only fal's signature headers (and the content type), ready to replay.
    pub(crate) fn fal_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-fal-webhook-") || k == "content-type")
            .cloned()
            .collect()
    }

    fn with_header(&self, name: &str, value: String) -> Vec<(String, String)> {
        self.fal_headers()
            .into_iter()
            .map(|(k, v)| {
                if k == name {
                    (k, value.clone())
                } else {
                    (k, v)
                }
            })
            .collect()
    }
}

/// A real, fresh, emulator-signed delivery: the emulator is made to deliver one webhook to a listener of this
/// test on 127.0.0.1, which records it and answers 200.
pub(crate) async fn capture_delivery() -> Captured {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let mut url = url::Url::parse(&format!(
        "{}/queue/fal-ai/e2e/capture",
        stack_var("FAL_EMULATOR_URL")
    ))
    .unwrap();
    url.query_pairs_mut().append_pair("fal_webhook", &hook);
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
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(15), listener.accept())
        .await
        .expect("the emulator never delivered to the capture listener")
        .unwrap();
    let captured = tokio::time::timeout(Duration::from_secs(15), read_request(&mut stream))
        .await
        .expect("capture: request not read in time");
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}")
        .await
        .unwrap();
    let _ = stream.shutdown().await;
    assert_eq!(captured.header(HEADER_REQUEST_ID), request_id);
    let body: Value = serde_json::from_slice(&captured.body).expect("captured body is JSON");
    assert_eq!(body["request_id"], request_id.as_str());
    captured
}

/// Reads one HTTP/1.1 request (content-length framed) from a stream.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Captured {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "capture: connection closed inside the request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    assert!(
        request_line.starts_with("POST /hook"),
        "capture: {request_line}"
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .expect("capture: the delivery has a content-length");
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "capture: connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Captured { headers, body }
}

/// The job's own webhook credential, `job_id=…&token=…`, as fal-image puts it on the job's URL.
pub(crate) fn token_query(job_id: &str) -> Vec<(&'static str, String)> {
    e2e::webhook_query(
        &stack_var("FAL_WEBHOOK_SECRET"),
        Uuid::parse_str(job_id).unwrap(),
    )
}

/// The job's webhook token alone.
pub(crate) fn token_of(job_id: &str) -> String {
    e2e::job_token(
        &stack_var("FAL_WEBHOOK_SECRET"),
        Uuid::parse_str(job_id).unwrap(),
    )
}

/// POSTs to the webhook function URL with the given query, headers and raw body; returns status and body text.
pub(crate) async fn post_webhook<K: AsRef<str>, V: AsRef<str>>(
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

/// A delivery body that, if it were accepted, would complete the job with the emulator's media.
fn completing_body(request_id: &str) -> Vec<u8> {
    json!({
        "request_id": request_id,
        "gateway_request_id": Uuid::new_v4().to_string(),
        "status": "OK",
        "payload": {"video": {
            "url": format!("{}/media/{request_id}/forged.mp4", stack_var("FAL_EMULATOR_URL")),
            "content_type": "video/mp4",
        }},
        "error": null,
    })
    .to_string()
    .into_bytes()
}

/// fal-shaped signature headers over `body`, signed by a key this test just made (not the emulator's).
fn self_signed_headers(request_id: &str, body: &[u8]) -> Vec<(String, String)> {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let user_id = stack_var("FAL_EMULATOR_USER_ID");
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = key.sign(&signed_message(request_id, &user_id, &timestamp, body));
    vec![
        (HEADER_REQUEST_ID.into(), request_id.into()),
        (HEADER_USER_ID.into(), user_id),
        (HEADER_TIMESTAMP.into(), timestamp),
        (HEADER_SIGNATURE.into(), hex::encode(signature.to_bytes())),
    ]
}

/// Waits until every one of deliveries `1..=n` got a 2xx answer (or used up its tries); returns all attempts.
async fn settled_deliveries(request_id: &str, n: u64, timeout: Duration) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let record = inspect(request_id).await;
        let attempts = record["deliveries"].as_array().cloned().unwrap_or_default();
        let settled = (1..=n).all(|d| {
            let of_d: Vec<&Value> = attempts.iter().filter(|a| a["delivery"] == d).collect();
            of_d.iter().any(|a| is_2xx(a)) || of_d.len() >= 10
        });
        if settled {
            return attempts;
        }
        assert!(
            started.elapsed() < timeout,
            "deliveries of {request_id} not settled after {timeout:?}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_2xx(attempt: &Value) -> bool {
    attempt["http_status"]
        .as_u64()
        .is_some_and(|s| (200..300).contains(&s))
}

fn statuses(attempts: &[Value], delivery: u64) -> Vec<Option<u64>> {
    attempts
        .iter()
        .filter(|a| a["delivery"] == delivery)
        .map(|a| a["http_status"].as_u64())
        .collect()
}

/// (file_size_bytes, mime_type, temp_storage_path) of the job's assets.
async fn assets_of(job_id: &str) -> Vec<(i64, String, String)> {
    let id = Uuid::parse_str(job_id).unwrap();
    db().await
        .query(
            "SELECT file_size_bytes, mime_type, temp_storage_path FROM public.workspace_assets WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// `provider_metadata->>'webhook_completed'` of the job's usage rows.
async fn usage_webhook_completed(job_id: &str) -> Vec<Option<String>> {
    let id = Uuid::parse_str(job_id).unwrap();
    db().await
        .query(
            "SELECT provider_metadata->>'webhook_completed' FROM public.api_usage_logs WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A completed job with exactly one object at `<user>/<job>_0.<ext>`, one asset row of that object, one usage
/// row marked completed by the webhook. Returns the object's size.
async fn assert_completed_once(user_id: Uuid, job_id: &str) -> i64 {
    let j = job(job_id).await;
    assert_eq!(j["status"], "completed", "job: {j}");
    let user = user_id.to_string();
    let objects = objects_of_job(&user, job_id).await;
    assert_eq!(
        objects.len(),
        1,
        "objects under {user}/{job_id}: {objects:?}"
    );
    let (key, size) = &objects[0];
    assert!(
        key.starts_with(&format!("{user}/{job_id}_0.")),
        "unexpected key {key}"
    );
    let assets = assets_of(job_id).await;
    assert_eq!(assets.len(), 1, "asset rows: {assets:?}");
    assert_eq!(&assets[0].2, key, "asset path vs object");
    assert_eq!(assets[0].0, *size, "asset size vs object size");
    assert_eq!(j["metadata"]["storage_path"], key.as_str(), "job: {j}");
    assert_eq!(usage_count(job_id).await, 1);
    assert_eq!(
        usage_webhook_completed(job_id).await,
        vec![Some("true".to_owned())]
    );
    *size
}

/// A job that is `failed` with nothing stored for it.
async fn assert_failed_without_result(user_id: Uuid, job_id: &str) -> String {
    let j = wait_terminal(job_id, JOB_TIMEOUT).await;
    assert_eq!(j["status"], "failed", "job: {j}");
    assert_eq!(asset_count(job_id).await, 0);
    let objects = objects_of_job(&user_id.to_string(), job_id).await;
    assert!(objects.is_empty(), "objects of a failed job: {objects:?}");
    j["error_message"].as_str().unwrap_or_default().to_owned()
}

/// The job row is exactly as it was, and nothing was stored for it.
async fn assert_unchanged(user_id: Uuid, job_id: &str, before: &Value) {
    let now = job(job_id).await;
    assert_eq!(&now, before, "the job row changed");
    assert_eq!(now["status"], "queued");
    assert_eq!(asset_count(job_id).await, 0);
    assert!(
        objects_of_job(&user_id.to_string(), job_id)
            .await
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn unauthenticated_or_forged_deliveries_are_refused_and_change_nothing() {
    let (user_id, job_id, request_id) = submit("webhook auth", "#no-webhook").await;
    // Another queued job: its token must open neither this job nor anything but itself.
    let (other_user, other_job, _) = submit("webhook auth other", "#no-webhook").await;
    let before = job(&job_id).await;
    let other_before = job(&other_job).await;
    assert_eq!(before["status"], "queued");
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let token = token_of(&job_id);
    let own = token_query(&job_id);
    let with_token = |t: &str| vec![("job_id", job_id.clone()), ("token", t.to_owned())];
    let with_secret = |s: &str| vec![("job_id", job_id.clone()), ("secret", s.to_owned())];
    let body = completing_body(&request_id);
    let forged = self_signed_headers(&request_id, &body);

    // Wrong token (headers otherwise well-formed).
    let (s, text) = post_webhook(&with_token(&"0".repeat(64)), &forged, body.clone()).await;
    assert_eq!((s, text.as_str()), (401, "Unauthorized"), "wrong token");
    // The token cut short by one digit.
    let (s, _) = post_webhook(
        &with_token(&token[..token.len() - 1]),
        &forged,
        body.clone(),
    )
    .await;
    assert_eq!(s, 401, "truncated token");
    // No credential.
    let (s, _) = post_webhook(&[("job_id", job_id.as_str())], &forged, body.clone()).await;
    assert_eq!(s, 401, "no token");
    // The token without the job id it was made for.
    let (s, _) = post_webhook(&[("token", token.as_str())], &forged, body.clone()).await;
    assert_eq!(s, 401, "token without job_id");
    // Right token, no signature headers.
    let (s, _) = post_webhook(&own, &[], body.clone()).await;
    assert_eq!(s, 401, "no signature headers");
    // Right token, a fresh signature by a key that is not fal's.
    let (s, text) = post_webhook(&own, &forged, body.clone()).await;
    assert_eq!((s, text.as_str()), (401, "Unauthorized"), "self-signed");
    assert_unchanged(user_id, &job_id, &before).await;

    // A real, fresh emulator delivery (for another request), replayed with changes.
    let real = capture_delivery().await;
    let query = own.clone();
    // One body byte changed: the last hex digit of the request id inside the body.
    let mut tampered = real.body.clone();
    let rid = real.header(HEADER_REQUEST_ID).to_owned();
    let at = tampered
        .windows(rid.len())
        .position(|w| w == rid.as_bytes())
        .unwrap()
        + rid.len()
        - 1;
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        tampered
            .iter()
            .zip(&real.body)
            .filter(|(a, b)| a != b)
            .count(),
        1
    );
    let (s, _) = post_webhook(&query, &real.fal_headers(), tampered).await;
    assert_eq!(s, 401, "one body byte changed");
    // Timestamp changed (still fresh).
    let ts: i64 = real.header(HEADER_TIMESTAMP).parse().unwrap();
    let (s, _) = post_webhook(
        &query,
        &real.with_header(HEADER_TIMESTAMP, (ts - 1).to_string()),
        real.body.clone(),
    )
    .await;
    assert_eq!(s, 401, "timestamp changed");
    // Request id header changed.
    let (s, _) = post_webhook(
        &query,
        &real.with_header(HEADER_REQUEST_ID, request_id.clone()),
        real.body.clone(),
    )
    .await;
    assert_eq!(s, 401, "request id header changed");
    // An authentic delivery with a credential that is not this job's: refused by the URL's check alone.
    let mut altered = token.clone().into_bytes();
    altered[0] = if altered[0] == b'0' { b'1' } else { b'0' };
    let altered = String::from_utf8(altered).unwrap();
    for (what, query) in [
        ("another job's token", with_token(&token_of(&other_job))),
        (
            "this job's token presented for another job",
            vec![("job_id", other_job.clone()), ("token", token.clone())],
        ),
        (
            "this job's token with one digit altered",
            with_token(&altered),
        ),
        (
            "this job's token cut short",
            with_token(&token[..token.len() - 1]),
        ),
        ("a wrong global secret", with_secret("nope")),
        // The global secret is right, but this job's URL was made with a token.
        ("the global secret for a token job", with_secret(&secret)),
    ] {
        let (s, text) = post_webhook(&query, &real.fal_headers(), real.body.clone()).await;
        assert_eq!(
            (s, text.as_str()),
            (401, "Unauthorized"),
            "authentic signature, {what}"
        );
    }
    // Unchanged and authentic, with this job's own token: passes auth, refused because the request ids differ.
    let (s, text) = post_webhook(&query, &real.fal_headers(), real.body.clone()).await;
    assert_eq!(
        s, 409,
        "an authentic delivery of another request with the job's token: {text}"
    );

    // Oversized body: refused before anything else.
    let big = vec![b' '; 1024 * 1024 + 1];
    let (s, _) = post_webhook(&query, &real.fal_headers(), big).await;
    assert_eq!(s, 413, "body over 1 MiB");

    // A job submitted before tokens (its run says its URL carries the global secret): the global secret
    // authenticates it, so the authentic delivery of another request gets as far as the token did.
    let updated = db()
        .await
        .execute(
            "UPDATE public.job_runs SET webhook_auth = 'secret' WHERE job_id = $1",
            &[&Uuid::parse_str(&job_id).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1, "the job has a run");
    let (s, text) = post_webhook(
        &with_secret(&secret),
        &real.fal_headers(),
        real.body.clone(),
    )
    .await;
    assert_eq!(s, 409, "the global secret for a pre-token job: {text}");
    // ... and still only with fal's signature and the whole secret.
    let (s, _) = post_webhook(&with_secret(&secret), &forged, body.clone()).await;
    assert_eq!(s, 401, "the global secret for a pre-token job, self-signed");
    let (s, _) = post_webhook(
        &with_secret(&secret[..secret.len() - 1]),
        &real.fal_headers(),
        real.body.clone(),
    )
    .await;
    assert_eq!(s, 401, "truncated global secret for a pre-token job");

    assert_unchanged(user_id, &job_id, &before).await;
    assert_unchanged(other_user, &other_job, &other_before).await;
    // The emulator never delivered anything for this job.
    assert_eq!(inspect(&request_id).await["deliveries"], json!([]));
    // Neither the secret nor a token reaches the functions' log.
    let log = std::fs::read_to_string(format!(
        "{}/cargo-lambda-watch.log",
        stack_var("STACK_LOG_DIR")
    ))
    .unwrap_or_default();
    assert!(
        !log.contains(&secret),
        "the webhook secret appears in the log"
    );
    assert!(!log.contains(&token), "a webhook token appears in the log");
}

#[tokio::test]
async fn unknown_job_id_with_an_authentic_delivery_is_404() {
    let real = capture_delivery().await;
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let unknown = Uuid::new_v4().to_string();
    // A valid token for an id that names no job: authenticated, then there is nothing to find.
    let (s, text) = post_webhook(
        &token_query(&unknown),
        &real.fal_headers(),
        real.body.clone(),
    )
    .await;
    assert_eq!(s, 404, "token: {text}");
    // The global secret is accepted for jobs without a run, and finds nothing either.
    let (s, text) = post_webhook(
        &[("job_id", unknown.as_str()), ("secret", secret.as_str())],
        &real.fal_headers(),
        real.body.clone(),
    )
    .await;
    assert_eq!(s, 404, "global secret: {text}");
    let n: i64 = db()
        .await
        .query_one(
            "SELECT count(*) FROM public.jobs WHERE id = $1",
            &[&Uuid::parse_str(&unknown).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn duplicate_deliveries_have_exactly_one_effect() {
    let (user_id, job_id, request_id) = submit("webhook dup", "#deliveries=5").await;
    let attempts = settled_deliveries(&request_id, 5, JOB_TIMEOUT).await;
    for d in 1..=5 {
        assert_eq!(
            statuses(&attempts, d),
            vec![Some(200)],
            "delivery {d}: {attempts:?}"
        );
    }
    assert_completed_once(user_id, &job_id).await;
}

#[tokio::test]
async fn concurrent_deliveries_have_exactly_one_effect() {
    let (user_id, job_id, request_id) =
        submit("webhook concurrent", "#deliveries=5 #concurrent").await;
    let attempts = settled_deliveries(&request_id, 5, JOB_TIMEOUT).await;
    for d in 1..=5 {
        let s = statuses(&attempts, d);
        assert!(
            s.last()
                .copied()
                .flatten()
                .is_some_and(|s| (200..300).contains(&s)),
            "delivery {d} never answered 2xx: {s:?}"
        );
    }
    eprintln!(
        "concurrent deliveries: {:?}",
        (1..=5).map(|d| statuses(&attempts, d)).collect::<Vec<_>>()
    );
    assert_completed_once(user_id, &job_id).await;
}

#[tokio::test]
async fn early_delivery_before_submit_answer_completes() {
    let (user_id, job_id, request_id) = submit("webhook early", "#early").await;
    let j = wait_terminal(&job_id, JOB_TIMEOUT).await;
    assert_eq!(j["status"], "completed", "{j}");
    settled_deliveries(&request_id, 1, JOB_TIMEOUT).await;
    assert_completed_once(user_id, &job_id).await;
    assert_eq!(j["metadata"]["fal_request_id"], request_id.as_str());
}

#[tokio::test]
async fn payload_null_result_is_fetched_from_response_url() {
    let (user_id, job_id, request_id) =
        submit("webhook payload-null", "#payload-null #media-bytes=54321").await;
    let j = wait_terminal(&job_id, JOB_TIMEOUT).await;
    assert_eq!(j["status"], "completed", "{j}");
    settled_deliveries(&request_id, 1, JOB_TIMEOUT).await;
    let size = assert_completed_once(user_id, &job_id).await;
    assert_eq!(size, 54321);
    assert_eq!(assets_of(&job_id).await[0].0, 54321);
}

#[tokio::test]
async fn fal_error_fails_the_job_once_and_later_deliveries_are_skipped() {
    let (user_id, job_id, request_id) = submit("webhook error", "#error #deliveries=2").await;
    let attempts = settled_deliveries(&request_id, 2, JOB_TIMEOUT).await;
    assert_eq!(statuses(&attempts, 1), vec![Some(200)], "{attempts:?}");
    assert_eq!(statuses(&attempts, 2), vec![Some(200)], "{attempts:?}");
    let message = assert_failed_without_result(user_id, &job_id).await;
    assert!(message.contains("422"), "error_message: {message}");
    assert_eq!(usage_count(&job_id).await, 1);
}

#[tokio::test]
async fn media_404_fails_the_job() {
    let (user_id, job_id, request_id) = submit("webhook media 404", "#media-status=404").await;
    let message = assert_failed_without_result(user_id, &job_id).await;
    assert_eq!(message, "Failed to download result: 404");
    let attempts = settled_deliveries(&request_id, 1, JOB_TIMEOUT).await;
    assert_eq!(statuses(&attempts, 1), vec![Some(200)], "{attempts:?}");
}

#[tokio::test]
async fn media_500_is_retried_by_fal_and_leaves_the_job_queued() {
    let (user_id, job_id, request_id) = submit("webhook media 500", "#media-status=500").await;
    let before_assets = asset_count(&job_id).await;
    let attempts = answered_deliveries(&request_id, 10, Duration::from_secs(30)).await;
    assert_eq!(attempts.len(), 10, "{attempts:?}");
    for a in &attempts {
        let s = a["http_status"].as_u64().unwrap();
        assert!(
            (500..600).contains(&s),
            "attempt answered {s}: {attempts:?}"
        );
    }
    let j = job(&job_id).await;
    assert_eq!(j["status"], "queued", "{j}");
    assert_eq!(before_assets, 0);
    assert_eq!(asset_count(&job_id).await, 0);
    assert!(
        objects_of_job(&user_id.to_string(), &job_id)
            .await
            .is_empty()
    );
    assert_eq!(usage_count(&job_id).await, 1);
    assert_eq!(usage_webhook_completed(&job_id).await, vec![None::<String>]);
}

#[tokio::test]
async fn media_failing_first_completes_on_a_retry() {
    let (user_id, job_id, request_id) = submit("webhook media flaky", "#media-fail-first=2").await;
    let attempts = settled_deliveries(&request_id, 1, JOB_TIMEOUT).await;
    let s = statuses(&attempts, 1);
    assert!(
        s.first().copied().flatten().is_some_and(|s| s >= 500),
        "first attempt should be a 5xx: {s:?}"
    );
    assert_eq!(s.last().copied().flatten(), Some(200), "{s:?}");
    eprintln!("media-fail-first=2 delivery attempts: {s:?}");
    let j = wait_terminal(&job_id, JOB_TIMEOUT).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_completed_once(user_id, &job_id).await;
}

#[tokio::test]
async fn a_200_mib_video_is_streamed_with_bounded_memory() {
    const SIZE: i64 = 200 * MIB as i64;
    let (user_id, job_id, request_id) = submit(
        "webhook big video",
        &format!("#media-bytes={SIZE} #media-type=video/mp4"),
    )
    .await;
    let j = wait_terminal(&job_id, Duration::from_secs(600)).await;
    assert_eq!(j["status"], "completed", "{j}");
    settled_deliveries(&request_id, 1, JOB_TIMEOUT).await;
    let size = assert_completed_once(user_id, &job_id).await;
    assert_eq!(size, SIZE);
    let assets = assets_of(&job_id).await;
    assert_eq!(assets[0].0, SIZE);
    assert_eq!(assets[0].1, "video/mp4");
    assert!(assets[0].2.ends_with(".mp4"), "{assets:?}");
    let rss = function_peak_rss("fal-webhook");
    eprintln!(
        "fal-webhook peak RSS (pid, MiB): {:?}",
        rss.iter()
            .map(|(p, b)| (*p, *b as f64 / MIB as f64))
            .collect::<Vec<_>>()
    );
    assert!(!rss.is_empty(), "no fal-webhook process found");
    for (pid, bytes) in rss {
        assert!(
            bytes < 120 * MIB,
            "fal-webhook pid {pid} peaked at {} MiB",
            bytes / MIB
        );
    }
}

#[tokio::test]
async fn result_urls_outside_the_allow_list_fail_without_being_fetched() {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    let (user_id, job_id, _) = submit(
        "webhook ssrf",
        &format!("#media-url=http://127.0.0.2:{port}/x.mp4"),
    )
    .await;
    let message = assert_failed_without_result(user_id, &job_id).await;
    assert!(message.contains("not allowed"), "error_message: {message}");

    let (user_id, ftp_job, _) = submit("webhook ftp", "#media-url=ftp://127.0.0.1/x.mp4").await;
    let message = assert_failed_without_result(user_id, &ftp_job).await;
    assert!(message.contains("not allowed"), "error_message: {message}");

    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the disallowed host was contacted: {other:?}"),
    }
}
