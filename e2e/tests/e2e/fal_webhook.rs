//! fal-webhook end to end: deliveries signed by the fal emulator (or forged/replayed by the test) reach the
//! function under `cargo lambda watch`; effects are checked in Postgres, S3 and the emulator's delivery records.

use std::time::Duration;

use ed25519_dalek::Signer as _;
use gen_pipeline::fal::signature::{
    HEADER_REQUEST_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, HEADER_USER_ID, signed_message,
};
use serde_json::{Value, json};
use uuid::Uuid;

use e2e::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------------------------------------

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

fn statuses(attempts: &[Value], delivery: u64) -> Vec<Option<u64>> {
    attempts
        .iter()
        .filter(|a| a["delivery"] == delivery)
        .map(|a| a["http_status"].as_u64())
        .collect()
}

/// `provider_metadata->>'webhook_completed'` of the job's usage rows.
async fn usage_webhook_completed(job_id: &str) -> Vec<Option<String>> {
    first_column(
        &db().await,
        "SELECT provider_metadata->>'webhook_completed' FROM public.api_usage_logs WHERE job_id = $1",
        &[&Uuid::parse_str(job_id).unwrap()],
    )
    .await
}

/// A job completed exactly once (see [`assert_exactly_once`]), its object at `<user>/<job>_0.<ext>` and its usage
/// row marked completed by the webhook. Returns the object's size.
async fn assert_completed_once(user_id: Uuid, job_id: &str) -> i64 {
    assert_exactly_once(user_id, job_id, "completed").await;
    let [asset] = assets_of(job_id).await.try_into().unwrap();
    assert!(
        asset.path.starts_with(&format!("{user_id}/{job_id}_0.")),
        "unexpected key {}",
        asset.path
    );
    assert_eq!(
        usage_webhook_completed(job_id).await,
        vec![Some("true".to_owned())]
    );
    asset.size
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
        let (s, text) = replay(&query, &real).await;
        assert_eq!(
            (s, text.as_str()),
            (401, "Unauthorized"),
            "authentic signature, {what}"
        );
    }
    // Unchanged and authentic, with this job's own token: passes auth, refused because the request ids differ.
    let (s, text) = replay(&query, &real).await;
    assert_eq!(
        s, 409,
        "an authentic delivery of another request with the job's token: {text}"
    );

    // Oversized body: refused before anything else.
    let big = vec![b' '; 6 * 1024 * 1024 + 1];
    let (s, _) = post_webhook(&query, &real.fal_headers(), big).await;
    assert_eq!(s, 413, "body over WEBHOOK_MAX_BODY_BYTES (6 MiB)");

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
    let (s, text) = replay(&with_secret(&secret), &real).await;
    assert_eq!(s, 409, "the global secret for a pre-token job: {text}");
    // ... and still only with fal's signature and the whole secret.
    let (s, _) = post_webhook(&with_secret(&secret), &forged, body.clone()).await;
    assert_eq!(s, 401, "the global secret for a pre-token job, self-signed");
    let (s, _) = replay(&with_secret(&secret[..secret.len() - 1]), &real).await;
    assert_eq!(s, 401, "truncated global secret for a pre-token job");

    assert_unchanged(user_id, &job_id, &before).await;
    assert_unchanged(other_user, &other_job, &other_before).await;
    // The emulator never delivered anything for this job.
    assert_eq!(inspect(&request_id).await["deliveries"], json!([]));
    // Neither the secret nor a token reaches the functions' log.
    let log = functions_log();
    // The refusals above were logged there (the 409 among them), so the checks below read the right log.
    assert!(
        log.contains("webhook delivery refused"),
        "the functions' log has none of this test's refusals"
    );
    assert!(
        !log.contains(&secret),
        "the webhook secret appears in the log"
    );
    assert!(!log.contains(&token), "a webhook token appears in the log");
}

/// A `?secret=` delivery whose `job_id` names a row without a run: every job the functions wrote has one, and the
/// original's URLs named no job, so the row is one its owner wrote (under a deleted job's id). 404, and the row is
/// left as written, with nothing stored for it.
#[tokio::test]
async fn a_secret_delivery_naming_a_row_without_a_run_is_404() {
    let real = capture_delivery().await;
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let (user_id, _) = user().await;
    let row = Uuid::new_v4();
    db().await
        .execute(
            "INSERT INTO public.jobs (id, user_id, job_type, status, format, started_at)
             VALUES ($1, $2, 'image_fast', 'queued', 'image', now())",
            &[&row, &user_id],
        )
        .await
        .unwrap();
    let row = row.to_string();
    let written = job(&row).await;
    let (s, text) = replay(
        &[("job_id", row.as_str()), ("secret", secret.as_str())],
        &real,
    )
    .await;
    assert_eq!(s, 404, "{text}");
    assert_eq!(job(&row).await, written, "the row was changed");
    assert_eq!(asset_count(&row).await, 0);
    assert_eq!(usage_count(&row).await, 0);
}

#[tokio::test]
async fn unknown_job_id_with_an_authentic_delivery_is_404() {
    let real = capture_delivery().await;
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let unknown = Uuid::new_v4().to_string();
    // A valid token for an id that names no job: authenticated, then there is nothing to find.
    let (s, text) = replay(&token_query(&unknown), &real).await;
    assert_eq!(s, 404, "token: {text}");
    // The global secret is accepted for jobs without a run, and finds nothing either.
    let (s, text) = replay(
        &[("job_id", unknown.as_str()), ("secret", secret.as_str())],
        &real,
    )
    .await;
    assert_eq!(s, 404, "global secret: {text}");
    // Nothing was recorded under the id: no usage row (an early delivery writes its own), no asset.
    assert_eq!(usage_count(&unknown).await, 0);
    assert_eq!(asset_count(&unknown).await, 0);
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
    let answered_at_ms = unix_ms();
    let j = wait_terminal(&job_id, JOB_TIMEOUT).await;
    assert_eq!(j["status"], "completed", "{j}");
    let attempts = settled_deliveries(&request_id, 1, JOB_TIMEOUT).await;
    assert!(
        attempts[0]["started_at_ms"].as_u64().unwrap() < answered_at_ms,
        "the delivery did not come before the submission's answer: {attempts:?}"
    );
    assert_completed_once(user_id, &job_id).await;
    assert_eq!(j["metadata"]["fal_request_id"], request_id.as_str());
    // The delivery wrote the usage row before the submission recorded its request: the submission completed it.
    let usage = db()
        .await
        .query_one(
            "SELECT request_payload, provider_metadata FROM public.api_usage_logs WHERE job_id = $1",
            &[&Uuid::parse_str(&job_id).unwrap()],
        )
        .await
        .unwrap();
    let (payload, metadata): (Option<Value>, Value) = (usage.get(0), usage.get(1));
    assert!(
        payload.is_some_and(|p| p["prompt"].is_string()),
        "{metadata}"
    );
    assert_eq!(metadata["async"], true, "{metadata}");
    assert_eq!(metadata["request_id"], request_id.as_str(), "{metadata}");
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
    assert_eq!(assets_of(&job_id).await[0].size, 54321);
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
async fn media_served_as_a_page_or_empty_is_retried_and_stores_nothing() {
    // A CDN edge's error page with a 200, or an empty body, where the result should be: not a result to complete
    // the job with (before, it was stored as `<job>_0.png` and the job completed).
    for (text, directive) in [
        ("webhook media page", "#media-type=text/html"),
        ("webhook media json", "#media-type=application/json"),
        ("webhook media empty", "#media-bytes=0"),
        // Refused before reading above (its `Content-Length: 0`); here when the body ends, before the one PUT.
        (
            "webhook media empty chunked",
            "#media-bytes=0 #media-no-length",
        ),
    ] {
        let (user_id, job_id, request_id) = submit(text, directive).await;
        // Every try over, so the statuses are final and no try is left to store anything.
        let attempts = settled_deliveries(&request_id, 1, Duration::from_secs(60)).await;
        for a in &attempts {
            let s = a["http_status"].as_u64().unwrap();
            assert!((500..600).contains(&s), "{directive}: {attempts:?}");
        }
        let j = job(&job_id).await;
        assert_eq!(j["status"], "queued", "{directive}: {j}");
        assert_eq!(asset_count(&job_id).await, 0, "{directive}");
        let stored = objects_of_job(&user_id.to_string(), &job_id).await;
        assert!(stored.is_empty(), "{directive}: {stored:?}");
    }
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

/// A holder before this delivery's stored the result as a PNG and failed before its commit (planted: its claim, its
/// lease ended, and its object); the media now comes back as a JPEG. The delivery takes the job over, completes it,
/// and removes the PNG, which nothing would point at.
#[tokio::test]
async fn a_result_an_earlier_holder_left_under_another_type_is_removed_on_completion() {
    let (user_id, job_id, request_id) = submit(
        "webhook after a holder",
        "#delay-ms=2000 #media-type=image/jpeg",
    )
    .await;
    plant_failed_holder(user_id, &job_id, "png").await;
    assert!(
        settled_deliveries(&request_id, 1, JOB_TIMEOUT)
            .await
            .iter()
            .all(|a| a["http_status"] == 200)
    );
    assert_completed_once(user_id, &job_id).await;
    let [asset] = assets_of(&job_id).await.try_into().unwrap();
    assert_eq!(asset.path, format!("{user_id}/{job_id}_0.jpg"));
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
    assert_eq!(assets[0].size, SIZE);
    assert_eq!(assets[0].mime, "video/mp4");
    assert!(assets[0].path.ends_with(".mp4"), "{assets:?}");
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

/// A redelivery to a pre-token URL (`?secret=`, the request id in the body) of a request whose job ended before
/// the port: the job has no run, so it is found by the original's `fal_request_id`, only to be skipped like any
/// ended job's delivery (200, so fal stops retrying), and nothing changes.
#[tokio::test]
async fn a_redelivery_for_a_job_that_ended_before_the_port_is_skipped() {
    let real = capture_delivery().await;
    let secret = stack_var("FAL_WEBHOOK_SECRET");
    let query = [("secret", secret.as_str())];
    // No job knows the request yet: nothing to find.
    let (s, text) = replay(&query, &real).await;
    assert_eq!(s, 404, "{text}");

    let (user, _) = user().await;
    let request_id = real.header(HEADER_REQUEST_ID).to_owned();
    let client = db().await;
    let job: Uuid = client
        .query_one(
            "INSERT INTO public.jobs (user_id, job_type, status, completed_at, metadata)
             VALUES ($1, 'image_fast', 'completed', now() - interval '2 days', jsonb_build_object('fal_request_id', $2::text))
             RETURNING id",
            &[&user, &request_id],
        )
        .await
        .unwrap()
        .get(0);
    let before = e2e::job(&job.to_string()).await;
    let (s, text) = replay(&query, &real).await;
    assert_eq!(s, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["skipped"], true, "{text}");
    assert_eq!(
        e2e::job(&job.to_string()).await,
        before,
        "the ended job's row changed"
    );
    assert_eq!(asset_count(&job.to_string()).await, 0);
    assert_eq!(usage_count(&job.to_string()).await, 0);
    assert_eq!(rows("job_runs", &job.to_string()).await, 0);
}
