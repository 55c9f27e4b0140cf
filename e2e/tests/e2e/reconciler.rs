//! The lost-webhook reconciler against the real stack: jobs whose webhook never came are completed from fal's
//! stored URLs, failed with fal's message, or failed past the deadline; young or running ones are left alone.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::common::stack_var;
use crate::support::*;

/// Submits an async job whose webhook never comes, and makes it look `age` old.
async fn lost_webhook_job(jwt: &str, directives: &str, age: &str) -> (String, String) {
    let body = json!({"prompt": prompt("lost", &format!("#no-webhook {directives}")), "apiModelId": async_model()});
    let (status, answer) = generate(jwt, &body).await;
    assert_eq!(status, 200, "{answer}");
    let job_id = answer["jobId"].as_str().unwrap().to_owned();
    db().await
        .execute(
            &format!("UPDATE public.jobs SET started_at = now() - interval '{age}' WHERE id = $1"),
            &[&Uuid::parse_str(&job_id).unwrap()],
        )
        .await
        .unwrap();
    (job_id, answer["requestId"].as_str().unwrap().to_owned())
}

async fn wait_fal_completed(request_id: &str) {
    for _ in 0..100 {
        if inspect(request_id).await["status"] == "COMPLETED" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fal never completed {request_id}");
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

    crate::common::export_aws_env();
    for k in [
        "APP_SECRET_ID",
        "WORKSPACE_BUCKET",
        "LIBRARY_BUCKET",
        "MEDIA_ALLOWED_HOSTS",
        "MEDIA_ALLOW_HTTP",
    ] {
        unsafe { std::env::set_var(k, stack_var(k)) };
    }
    let state = gen_pipeline::AppState::from_env().await.unwrap();
    let settings = state.settings().await.unwrap();
    let options = gen_pipeline::reconcile::ReconcileOptions {
        older_than: Duration::from_secs(3600),
        deadline: Duration::from_secs(7200),
        batch: 100,
    };
    let report = gen_pipeline::reconcile::reconcile_stale_jobs(&state, &settings, options).await;
    assert!(report.examined >= 4, "{report:?}");

    let j = job(&done).await;
    assert_eq!(j["status"], "completed", "{j}");
    assert_eq!(j["metadata"]["reconciled"], true);
    assert_eq!(asset_count(&done).await, 1);
    assert_eq!(usage_count(&done).await, 1);

    let j = job(&errored).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(
        j["error_message"]
            .as_str()
            .unwrap()
            .contains("emulated model failure"),
        "{j}"
    );

    assert_eq!(job(&running).await["status"], "queued");

    let j = job(&expired).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(
        j["error_message"]
            .as_str()
            .unwrap()
            .contains("did not finish"),
        "{j}"
    );
    assert_eq!(inspect(&expired_rid).await["cancelled"], true);

    // A second pass (as a concurrent or later instance would) changes nothing more.
    gen_pipeline::reconcile::reconcile_stale_jobs(&state, &settings, options).await;
    assert_eq!(asset_count(&done).await, 1);
    assert_eq!(usage_count(&done).await, 1);
    assert_eq!(job(&running).await["status"], "queued");
}
