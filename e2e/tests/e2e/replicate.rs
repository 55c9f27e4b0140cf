//! Replicate as the second provider, through the same core: models of the stack's Replicate provider run on the
//! emulator's Replicate (`<emulator>/replicate/v1`), deliveries are signed with Standard Webhooks and come to the
//! one webhook function, and completion, usage rows, the reconciler and cancel are the ones fal's jobs use.

use std::time::Duration;

use gen_pipeline::standard_webhooks;
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

use e2e::*;

const WAIT: Duration = Duration::from_secs(60);

fn replicate_model() -> String {
    stack_var("REPLICATE_MODEL_ID")
}

fn replicate_sync_model() -> String {
    stack_var("REPLICATE_SYNC_MODEL_ID")
}

/// The prediction as the emulator holds it: its `webhook` URL, the `output` it delivers, its deliveries.
async fn prediction(id: &str) -> Value {
    Provider::Replicate.request(id).await
}

/// A queued Replicate generation: the job id and the prediction id.
async fn queued(jwt: &str, text: &str, directives: &str) -> (String, String) {
    let body = json!({"prompt": prompt(text, directives), "apiModelId": replicate_model()});
    submit_queued(jwt, &body).await
}

/// Posts `body` to the prediction's own webhook URL (our per-job token), signed with `secret` at `timestamp`.
async fn deliver_signed(
    webhook: &str,
    body: &Value,
    secret: &str,
    timestamp: i64,
) -> (u16, String) {
    let url = url::Url::parse(webhook).unwrap();
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let raw = serde_json::to_vec(body).unwrap();
    let key = standard_webhooks::key_of(&SecretString::from(secret.to_owned())).unwrap();
    let id = format!("msg_{}", Uuid::new_v4().simple());
    let headers = vec![
        ("webhook-id".to_owned(), id.clone()),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
        (
            "webhook-signature".to_owned(),
            standard_webhooks::sign(&key, &id, timestamp, &raw),
        ),
    ];
    post_webhook(&query, &headers, raw).await
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A completing delivery of the prediction as Replicate would make it: its webhook URL (with our per-job token), the
/// prediction `succeeded`, and the stack's signing secret.
async fn succeeded_delivery(prediction_id: &str) -> (String, Value, String) {
    let p = prediction(prediction_id).await;
    let webhook = p["webhook"]
        .as_str()
        .expect("the emulator shows the webhook URL")
        .to_owned();
    let mut body = p.clone();
    body["status"] = json!("succeeded");
    (webhook, body, stack_var("REPLICATE_WEBHOOK_SIGNING_SECRET"))
}

#[tokio::test]
async fn a_sync_replicate_model_answers_with_the_stored_result() {
    let (user, jwt) = user().await;
    let body =
        json!({"prompt": prompt("replicate sync", ""), "apiModelId": replicate_sync_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    let job_id = answer["jobId"].as_str().unwrap();
    let j = assert_exactly_once(user, job_id, "completed").await;
    assert_eq!(j["metadata"]["provider_name"], "replicate");
    let (code, _, _) = digest(answer["resultUrl"].as_str().unwrap()).await;
    assert_eq!(code, 200);
}

/// Submits `body`: answered 200 `queued`, its job then completed (by a delivery). The answer, and the job as it ends.
async fn answered_queued_then_completed(jwt: &str, body: &Value) -> (Value, Value) {
    let (status, answer) = generate(jwt, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    let j = wait_terminal(answer["jobId"].as_str().unwrap(), WAIT).await;
    assert_eq!(j["status"], "completed", "{j}");
    (answer, j)
}

/// A sync prediction that succeeded but whose result could not be fetched (its file answers 5xx at first) is not
/// failed: Replicate delivers it to the webhook too, and that delivery stores it. The caller is answered as for a
/// queued job, with the prediction's id.
#[tokio::test]
async fn a_sync_prediction_whose_result_could_not_be_stored_is_finished_by_its_delivery() {
    let (user, jwt) = user().await;
    let text = prompt("replicate sync media fault", "#media-fail-first=2");
    let body = json!({"prompt": text, "apiModelId": replicate_sync_model()});
    let (answer, j) = answered_queued_then_completed(&jwt, &body).await;
    let job_id = answer["jobId"].as_str().unwrap();
    assert_eq!(
        answer["requestId"], j["metadata"]["fal_webhook_payload"]["request_id"],
        "completed by the prediction's delivery: {answer} {j}"
    );
    let p = prediction(answer["requestId"].as_str().unwrap()).await;
    assert!(p["media_fetches"].as_u64().unwrap_or(0) >= 3, "{p}");
    assert_exactly_once(user, job_id, "completed").await;
}

#[tokio::test]
async fn a_queued_prediction_is_completed_once_by_its_signed_deliveries() {
    let (user, jwt) = user().await;
    let (job_id, prediction_id) =
        queued(&jwt, "replicate queued", "#deliveries=3 #concurrent").await;
    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "completed", "{j}");
    wait_until("the emulator to finish its deliveries", WAIT, async || {
        let p = prediction(&prediction_id).await;
        p["deliveries"].as_array().is_some_and(|d| {
            d.iter()
                .filter(|a| a["http_status"].as_u64().is_some_and(|s| s < 300))
                .count()
                >= 3
        })
    })
    .await;
    assert_exactly_once(user, &job_id, "completed").await;
    let id = Uuid::parse_str(&job_id).unwrap();
    let metrics: Vec<Value> = first_column(
        &db().await,
        "SELECT provider_metadata FROM public.api_usage_logs WHERE job_id = $1",
        &[&id],
    )
    .await;
    let metrics = &metrics[0];
    assert_eq!(metrics["provider"], "replicate", "{metrics}");
    assert!(
        metrics["metrics"].is_object(),
        "Replicate's metrics in the usage row: {metrics}"
    );
}

#[tokio::test]
async fn a_failed_prediction_fails_the_job_with_replicates_error() {
    let (user, jwt) = user().await;
    let (job_id, _) = queued(&jwt, "replicate error", "#error").await;
    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(
        !j["error_message"].as_str().unwrap_or_default().is_empty(),
        "{j}"
    );
    assert_exactly_once(user, &job_id, "failed").await;
}

#[tokio::test]
async fn deliveries_with_a_bad_signature_a_stale_timestamp_or_another_jobs_id_change_nothing() {
    let (user, jwt) = user().await;
    let (job_id, prediction_id) =
        queued(&jwt, "replicate forged", "#no-webhook #delay-ms=20").await;
    let (webhook, body, secret) = succeeded_delivery(&prediction_id).await;
    let webhook = webhook.as_str();
    let other_secret = "whsec_bm90LXRoZS1hY2NvdW50cy1zZWNyZXQ=";
    assert_eq!(
        deliver_signed(webhook, &body, other_secret, now()).await.0,
        401
    );
    assert_eq!(
        deliver_signed(webhook, &body, &secret, now() - 600).await.0,
        401
    );
    let mut other = body.clone();
    other["id"] = json!("another-prediction");
    assert_eq!(deliver_signed(webhook, &other, &secret, now()).await.0, 409);
    assert_eq!(job(&job_id).await["status"], "queued");
    assert_eq!(asset_count(&job_id).await, 0);
    // Signed by hand as Replicate would: the job completes.
    let (status, answer) = deliver_signed(webhook, &body, &secret, now()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(wait_terminal(&job_id, WAIT).await["status"], "completed");
    // Once the job has ended, another prediction's delivery is answered as any delivery for an ended job is, so
    // Replicate stops retrying it; nothing changes.
    let (status, answer) = deliver_signed(webhook, &other, &secret, now()).await;
    let answer: Value = serde_json::from_str(&answer).unwrap_or_default();
    assert_eq!(
        (status, &answer["skipped"]),
        (200, &json!(true)),
        "{answer}"
    );
    assert_exactly_once(user, &job_id, "completed").await;
}

/// Replicate's delivery is the whole prediction, its input included: a submission near `MAX_BODY_BYTES` (a `data:`
/// reference image) comes back larger than that, and must still complete its job.
#[tokio::test]
async fn a_delivery_larger_than_the_submission_limit_completes_the_job() {
    let (user, jwt) = user().await;
    let (job_id, prediction_id) =
        queued(&jwt, "replicate large delivery", "#no-webhook #delay-ms=20").await;
    let (webhook, mut body, secret) = succeeded_delivery(&prediction_id).await;
    let image = format!("data:image/png;base64,{}", "A".repeat(2 * 1024 * 1024));
    body["input"] = json!({"prompt": "replicate large delivery", "image": image});
    let (status, answer) = deliver_signed(&webhook, &body, &secret, now()).await;
    assert_eq!(status, 200, "{answer}");
    wait_terminal(&job_id, WAIT).await;
    assert_exactly_once(user, &job_id, "completed").await;
}

/// The usage row the webhook writes for a job whose submission's record it came before (or that failed) is priced
/// by the server's list for the run's model and timed from the run, whatever the owner wrote through RLS into the
/// job's estimate and `started_at`.
#[tokio::test]
async fn a_usage_row_the_webhook_writes_ignores_what_the_owner_rewrote() {
    let (user, jwt) = user().await;
    let (job_id, prediction_id) =
        queued(&jwt, "replicate owner rewrites", "#no-webhook #delay-ms=20").await;
    let id = Uuid::parse_str(&job_id).unwrap();
    let admin = db().await;
    // As the delivery finds the job when it comes before the submission's record: no usage row yet.
    let removed = admin
        .execute(
            "DELETE FROM public.api_usage_logs WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(removed, 1, "the submission's usage row");
    let mut session = db().await;
    let rewritten = e2e::common::as_user(&mut session, user, async |tx| {
        tx.execute(
            "UPDATE public.jobs SET metadata = metadata || '{\"estimated_cost\": 0}',
                    started_at = '1970-01-01T00:00:00Z' WHERE id = $1",
            &[&id],
        )
        .await
    })
    .await
    .unwrap();
    assert_eq!(rewritten, 1, "the owner's update through RLS");

    let (webhook, body, secret) = succeeded_delivery(&prediction_id).await;
    let webhook = webhook.as_str();
    let (status, answer) = deliver_signed(webhook, &body, &secret, now()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(wait_terminal(&job_id, WAIT).await["status"], "completed");
    let row = admin
        .query_one(
            "SELECT cost_usd::text, response_time_ms FROM public.api_usage_logs WHERE job_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    // The stack's Replicate video model has no entry in the price list: the video default.
    let expected = format!("{:.6}", gen_pipeline::pricing::DEFAULT_VIDEO);
    assert_eq!(row.get::<_, Option<String>>(0), Some(expected));
    let elapsed: i32 = row.get(1);
    assert!(
        (0..600_000).contains(&elapsed),
        "timed from the run, not the rewritten started_at: {elapsed} ms"
    );
}

/// Replicate accepted the create but its answer cannot be read: the prediction may be running, so it is not made
/// again on the sync route (a second paid prediction), nor is the job failed (which would throw its result away):
/// the caller is answered queued, and the prediction's delivery completes the job.
#[tokio::test]
async fn an_unreadable_accepted_create_is_not_made_again_and_its_delivery_completes_the_job() {
    let (user, jwt) = user().await;
    let body = json!({
        "prompt": prompt("replicate unreadable", "#queue-unreadable #delay-ms=300"),
        "apiModelId": replicate_model(),
    });
    let (answer, j) = answered_queued_then_completed(&jwt, &body).await;
    let job_id = answer["jobId"].as_str().unwrap();
    assert!(j["metadata"].get("sync_fallback").is_none(), "{j}");
    assert_exactly_once(user, job_id, "completed").await;
}

/// The same for a sync create held by `Prefer: wait`: a prediction whose answer is lost (unreadable here; timed out
/// or broken off alike) runs and is billed all the same, so its job is left to the delivery to the sync route's
/// URL rather than failed.
#[tokio::test]
async fn a_sync_create_whose_answer_cannot_be_read_is_completed_by_its_delivery() {
    let (user, jwt) = user().await;
    let text = prompt("replicate sync unreadable", "#run-unreadable #delay-ms=300");
    let body = json!({"prompt": text, "apiModelId": replicate_sync_model()});
    let (answer, j) = answered_queued_then_completed(&jwt, &body).await;
    let job_id = answer["jobId"].as_str().unwrap();
    let delivered = j["metadata"]["fal_webhook_payload"]["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let webhook = prediction(&delivered).await["webhook"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let url = url::Url::parse(&webhook).expect("the prediction had a webhook URL");
    assert!(
        url.query_pairs().any(|(k, v)| k == "route" && v == "sync"),
        "completed by the sync create's own delivery: {webhook}"
    );
    assert_exactly_once(user, job_id, "completed").await;
}

/// After a fallback the sync create's lost answer still fails the job: the abandoned queue prediction's delivery
/// could otherwise end it once the sync route may no longer decide, before the sync prediction's came.
#[tokio::test]
async fn after_a_fallback_a_lost_sync_answer_fails_the_job() {
    let (_, jwt) = user().await;
    let directives = "#queue-status=503 #run-unreadable #no-webhook";
    let body = json!({"prompt": prompt("replicate fallback unreadable", directives), "apiModelId": replicate_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 502, "{answer}");
    let j = job(answer["jobId"].as_str().unwrap()).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(j["metadata"]["sync_fallback"], true, "{j}");
}

/// A job left to its delivery whose prediction then fails keeps the usage row written when it was left (the create
/// was made, and may be billed); nothing else would write one.
#[tokio::test]
async fn a_lost_answers_job_that_then_fails_keeps_its_usage_row() {
    let (_, jwt) = user().await;
    let text = prompt(
        "replicate sync unreadable failing",
        "#run-unreadable #error #delay-ms=300",
    );
    let body = json!({"prompt": text, "apiModelId": replicate_sync_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("queued")),
        "{answer}"
    );
    let job_id = answer["jobId"].as_str().unwrap();
    let j = wait_terminal(job_id, WAIT).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert_eq!(usage_count(job_id).await, 1, "one usage row");
}

#[tokio::test]
async fn a_replicate_signature_cannot_complete_a_fal_job() {
    let (_, jwt) = user().await;
    let fal_body = json!({"prompt": prompt("fal job", "#no-webhook #delay-ms=20"), "apiModelId": async_model()});
    let (fal_job, _) = submit_queued(&jwt, &fal_body).await;
    let fal_id = Uuid::parse_str(&fal_job).unwrap();
    let mut webhook = url::Url::parse(&stack_var("FAL_WEBHOOK_URL")).unwrap();
    for (k, v) in token_query(&fal_job) {
        webhook.query_pairs_mut().append_pair(k, &v);
    }
    let body = json!({"id": "p", "status": "succeeded", "output": "https://replicate.delivery/x.png",
                      "urls": {"get": "https://api.replicate.com/v1/predictions/p"}});
    let secret = stack_var("REPLICATE_WEBHOOK_SIGNING_SECRET");
    assert_eq!(
        deliver_signed(webhook.as_str(), &body, &secret, now())
            .await
            .0,
        401
    );
    assert_eq!(job(&fal_id.to_string()).await["status"], "queued");
}

#[tokio::test]
async fn a_lost_replicate_webhook_is_completed_by_the_reconciler() {
    let (_, jwt) = user().await;
    let (job_id, prediction_id) = queued(&jwt, "replicate lost", "#no-webhook #delay-ms=20").await;
    wait_until("the prediction to succeed", WAIT, async || {
        prediction(&prediction_id).await["status"] == "succeeded"
    })
    .await;
    age_job(&job_id, "62 minutes").await;
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    let j = job(&job_id).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(asset_count(&job_id).await, 1);
}

#[tokio::test]
async fn cancelling_a_queued_replicate_job_cancels_the_prediction() {
    let (_, jwt) = user().await;
    let (job_id, prediction_id) = queued(&jwt, "replicate cancel", "#delay-ms=600000").await;
    let (status, answer) = cancel_job(&jwt, &job_id).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(job(&job_id).await["status"], "cancelled");
    wait_until("the prediction to be canceled", WAIT, async || {
        prediction(&prediction_id).await["status"] == "canceled"
    })
    .await;
}

#[tokio::test]
async fn media_failing_at_first_is_retried_through_replicates_redelivery_and_stored_once() {
    let (user, jwt) = user().await;
    let (job_id, prediction_id) =
        queued(&jwt, "replicate media retry", "#media-fail-first=2").await;
    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "completed", "{j}");
    let p = prediction(&prediction_id).await;
    assert!(p["media_fetches"].as_u64().unwrap_or(0) >= 3, "{p}");
    assert_exactly_once(user, &job_id, "completed").await;
}

#[tokio::test]
async fn a_delivery_before_the_submission_answered_completes_the_job_once() {
    let (user, jwt) = user().await;
    let (job_id, prediction_id) = queued(&jwt, "replicate early", "#early").await;
    let answered_at_ms = unix_ms();
    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_exactly_once(user, &job_id, "completed").await;
    let p = prediction(&prediction_id).await;
    assert!(
        p["deliveries"][0]["started_at_ms"]
            .as_u64()
            .is_some_and(|at| at < answered_at_ms),
        "the delivery did not come before the submission's answer: {p}"
    );
}

/// Without a webhook secret there is no webhook URL to give a provider: a queue model of either provider runs on
/// its sync route (fal's sync host, Replicate's create held by `Prefer: wait`) and completes in the answer, instead
/// of being queued for the reconciler alone to finish. The submission runs in this process, with the stack's
/// settings less the webhook secret.
#[tokio::test]
async fn without_a_webhook_secret_a_queue_model_runs_on_the_sync_route() {
    let (state, settings) = app_state().await;
    let mut secrets = (*settings.secrets).clone();
    secrets.fal_webhook_secret = None;
    secrets.fal_webhook_secret_previous = None;
    let settings = gen_pipeline::Settings {
        config: settings.config.clone(),
        secrets: std::sync::Arc::new(secrets),
    };
    for (provider, model) in [
        (Provider::Fal, async_model()),
        (Provider::Replicate, replicate_model()),
    ] {
        let (user_id, _) = user().await;
        let body = json!({"prompt": prompt("no webhook", ""), "apiModelId": model});
        let request = serde_json::from_value(body).unwrap();
        let submitted = gen_pipeline::submission::submit_generation(
            &state, &settings, user_id, request, None, None,
        )
        .await
        .unwrap();
        let gen_pipeline::submission::Submitted::Completed { job_id, .. } = submitted.answer else {
            panic!("{provider:?}: a queue model without a webhook was queued");
        };
        let job_id = job_id.to_string();
        assert_exactly_once(user_id, &job_id, "completed").await;
        let request_ids: Vec<Option<String>> = first_column(
            &db().await,
            "SELECT provider_metadata->>'request_id' FROM public.api_usage_logs WHERE job_id = $1",
            &[&Uuid::parse_str(&job_id).unwrap()],
        )
        .await;
        if provider == Provider::Replicate {
            let prediction = prediction(request_ids[0].as_deref().unwrap()).await;
            assert_eq!(
                prediction.get("webhook"),
                Some(&Value::Null),
                "{prediction}"
            );
        }
    }
}

/// A queue create answered 503 falls back to a sync create, whose webhook URL says it is the sync route's: a
/// delivery for that prediction is then never taken for the abandoned queue request's.
#[tokio::test]
async fn a_fallbacks_sync_prediction_is_given_the_sync_routes_webhook_url() {
    let (user, jwt) = user().await;
    let body = json!({"prompt": prompt("replicate fallback", "#queue-status=503"), "apiModelId": replicate_model()});
    let (status, answer) = generate(&jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    let job_id = answer["jobId"].as_str().unwrap();
    let j = assert_exactly_once(user, job_id, "completed").await;
    assert_eq!(j["metadata"]["sync_fallback"], true, "{j}");
    let usage: Value = db()
        .await
        .query_one(
            "SELECT provider_metadata FROM public.api_usage_logs WHERE job_id = $1",
            &[&Uuid::parse_str(job_id).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    let sync_prediction = usage["request_id"].as_str().unwrap_or_default();
    let webhook = prediction(sync_prediction).await["webhook"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let url = url::Url::parse(&webhook).unwrap();
    assert!(
        url.query_pairs().any(|(k, v)| k == "route" && v == "sync"),
        "{usage}"
    );
}

/// After a fallback (as the run records it: the time, and no request recorded yet), a failure reported to the
/// queue URL is the abandoned queue prediction's: answered as skipped, the job stays open for the sync run. The
/// same failure reported to the sync route's URL is the sync prediction's, and fails the job.
#[tokio::test]
async fn after_a_fallback_only_a_failure_on_the_sync_routes_url_fails_the_job() {
    let (user, jwt) = user().await;
    let (job_id, prediction_id) =
        queued(&jwt, "replicate abandoned", "#no-webhook #delay-ms=20").await;
    let updated = db()
        .await
        .execute(
            "UPDATE public.job_runs SET fell_back_at = now(), request_id = NULL WHERE job_id = $1",
            &[&Uuid::parse_str(&job_id).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    let (webhook, mut body, secret) = succeeded_delivery(&prediction_id).await;
    body["status"] = json!("failed");
    body["error"] = json!("the model failed");
    body["output"] = Value::Null;

    let (status, answer) = deliver_signed(&webhook, &body, &secret, now()).await;
    let answer: Value = serde_json::from_str(&answer).unwrap_or_default();
    assert_eq!(
        (status, &answer["skipped"]),
        (200, &json!(true)),
        "{answer}"
    );
    assert_eq!(job(&job_id).await["status"], "queued");

    let sync_url = format!("{webhook}&route=sync");
    let (status, answer) = deliver_signed(&sync_url, &body, &secret, now()).await;
    assert_eq!(status, 200, "{answer}");
    let j = wait_terminal(&job_id, WAIT).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(
        j["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("the model failed")),
        "{j}"
    );
    assert_exactly_once(user, &job_id, "failed").await;
}
