//! The lost-webhook reconciler against the real stack: jobs whose webhook never came are completed from fal's
//! stored URLs, failed with fal's message, or failed past the deadline; young or running ones are left alone.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use e2e::*;

/// Submits an async job whose webhook never comes, and makes it look `age` old.
async fn lost_webhook_job(jwt: &str, directives: &str, age: &str) -> (String, String) {
    let body = json!({"prompt": prompt("lost", &format!("#no-webhook {directives}")), "apiModelId": async_model()});
    let (job_id, request_id) = submit_queued(jwt, &body).await;
    db().await
        .execute(
            &format!("UPDATE public.jobs SET started_at = now() - interval '{age}' WHERE id = $1"),
            &[&Uuid::parse_str(&job_id).unwrap()],
        )
        .await
        .unwrap();
    (job_id, request_id)
}

async fn wait_fal_completed(request_id: &str) {
    wait_until(
        "fal to complete the request",
        Duration::from_secs(5),
        async || inspect(request_id).await["status"] == "COMPLETED",
    )
    .await;
}

#[tokio::test]
async fn a_pass_completes_fails_or_leaves_each_stale_job_as_fal_says() {
    let (_, jwt) = user().await;
    // Ages beyond any other test's jobs, so this pass touches only these.
    let (done, done_rid) = lost_webhook_job(&jwt, "#delay-ms=20", "61 minutes").await;
    let (errored, errored_rid) = lost_webhook_job(&jwt, "#delay-ms=20 #error", "61 minutes").await;
    let (running, _) = lost_webhook_job(&jwt, "#delay-ms=600000", "61 minutes").await;
    let (expired, expired_rid) = lost_webhook_job(&jwt, "#delay-ms=600000", "3 hours").await;
    wait_fal_completed(&done_rid).await;
    wait_fal_completed(&errored_rid).await;

    let report = reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    assert!(report.examined >= 4, "{report:?}");

    let j = job(&done).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["metadata"]["reconciled"], true);
    assert_eq!(asset_count(&done).await, 1);
    assert_eq!(usage_count(&done).await, 1);

    let (j, message) = failed_job(&errored).await;
    assert!(message.contains("emulated model failure"), "{j}");

    assert_eq!(job(&running).await["status"], "queued");

    let (j, message) = failed_job(&expired).await;
    assert!(message.contains("did not finish"), "{j}");
    assert_eq!(inspect(&expired_rid).await["cancelled"], true);

    // A second pass (as a concurrent or later instance would) changes nothing more.
    reconcile_pass(Duration::from_secs(3600), Duration::from_secs(7200)).await;
    assert_eq!(asset_count(&done).await, 1);
    assert_eq!(usage_count(&done).await, 1);
    assert_eq!(job(&running).await["status"], "queued");
}
