use std::time::{Duration, Instant};

use crate::common::stack_var;
use gen_pipeline::fal::types::{CancelOutcome, QueueState};
use gen_pipeline::fal::{FalClient, ProviderUrl, QueueEndpoint, RetryPolicy, SyncEndpoint};
use gen_pipeline::provider::ProviderError;
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

const MODEL: &str = "fal-ai/bytedance/seedream/v4/text-to-image";

fn client(retries: usize, sync_timeout: Duration) -> FalClient {
    FalClient::new(
        gen_pipeline::state::http_client().unwrap(),
        SecretString::from(stack_var("FAL_KEY")),
        RetryPolicy {
            base: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_retries: retries,
        },
        sync_timeout,
        Duration::from_secs(10),
    )
}

fn sync() -> SyncEndpoint {
    SyncEndpoint::new(
        Some(&format!("{}/run", stack_var("FAL_EMULATOR_URL"))),
        MODEL,
    )
    .unwrap()
}

fn queue() -> QueueEndpoint {
    QueueEndpoint::new(
        Some(&format!("{}/queue", stack_var("FAL_EMULATOR_URL"))),
        MODEL,
    )
    .unwrap()
}

/// A URL fal answered with, accepted as the emulator's queue host.
fn on_fal(url: &str) -> ProviderUrl {
    let queue_host = format!("{}/queue", stack_var("FAL_EMULATOR_URL"));
    ProviderUrl::on_provider_hosts(url, &[queue_host]).unwrap()
}

/// A caller's deadline past every bound of these tests: the client's own sync bound decides.
fn no_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

/// A prompt unique to the test, with the emulator directives given.
fn prompt(directives: &str) -> Value {
    json!({ "prompt": format!("a lighthouse at dusk {} {directives}", Uuid::new_v4()) })
}

#[tokio::test]
async fn sync_run_returns_the_model_output() {
    let out = client(0, Duration::from_secs(10))
        .run(&sync(), &prompt(""), no_deadline())
        .await
        .unwrap();
    let url = out["images"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&stack_var("FAL_EMULATOR_URL")), "{url}");
    assert_eq!(out["images"][0]["content_type"], "image/png");
}

#[tokio::test]
async fn a_wrong_fal_key_is_refused_by_fal() {
    let c = FalClient::new(
        gen_pipeline::state::http_client().unwrap(),
        SecretString::from("wrong-key".to_owned()),
        RetryPolicy::default(),
        Duration::from_secs(5),
        Duration::from_secs(5),
    );
    let err = c
        .run(&sync(), &prompt(""), no_deadline())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
}

#[tokio::test]
async fn queue_submit_status_and_result() {
    let c = client(0, Duration::from_secs(10));
    let submitted = c
        .submit(&queue(), &prompt("#no-webhook #delay-ms=300"), None)
        .await
        .unwrap();
    let status_url = submitted.status_url.as_deref().unwrap();
    // Status, result and cancel URLs use only the model id's first two segments.
    assert!(
        status_url.ends_with(&format!(
            "/queue/fal-ai/bytedance/requests/{}/status",
            submitted.request_id
        )),
        "{status_url}"
    );
    assert!(matches!(
        c.status(&on_fal(status_url)).await.unwrap(),
        QueueState::InQueue { .. } | QueueState::InProgress
    ));
    let started = Instant::now();
    loop {
        if c.status(&on_fal(status_url)).await.unwrap() == QueueState::Completed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "request never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = c
        .result(&on_fal(submitted.response_url.as_deref().unwrap()))
        .await
        .unwrap();
    assert!(out["images"][0]["url"].is_string(), "{out}");
}

#[tokio::test]
async fn cancel_of_a_queued_request_and_of_a_finished_one() {
    let c = client(0, Duration::from_secs(10));
    let queued = c
        .submit(&queue(), &prompt("#no-webhook #delay-ms=5000"), None)
        .await
        .unwrap();
    let outcome = c
        .cancel(&on_fal(queued.cancel_url.as_deref().unwrap()))
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            CancelOutcome::CancellationRequested | CancelOutcome::Cancelled
        ),
        "{outcome:?}"
    );

    let quick = c
        .submit(&queue(), &prompt("#no-webhook #delay-ms=1"), None)
        .await
        .unwrap();
    let started = Instant::now();
    while c
        .status(&on_fal(quick.status_url.as_deref().unwrap()))
        .await
        .unwrap()
        != QueueState::Completed
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.cancel(&on_fal(quick.cancel_url.as_deref().unwrap()))
            .await
            .unwrap(),
        CancelOutcome::AlreadyCompleted
    );
}

#[tokio::test]
async fn a_503_then_success_is_retried() {
    let input = prompt("#run-fail-first=1");
    let out = client(3, Duration::from_secs(10))
        .run(&sync(), &input, no_deadline())
        .await
        .unwrap();
    assert!(out["images"][0]["url"].is_string());
    // Without retries the same first failure is reported as fal's 503.
    let err = client(0, Duration::from_secs(10))
        .run(&sync(), &prompt("#run-fail-first=1"), no_deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::Api { status: 503, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_sync_run_past_its_bound_is_reported_as_a_timeout() {
    let started = Instant::now();
    let err = client(3, Duration::from_secs(1))
        .run(&sync(), &prompt("#run-delay-ms=4000"), no_deadline())
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Timeout), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The caller's deadline ends a run before the client's own bound: what a sync run after a failed queue
/// submission gets.
#[tokio::test]
async fn a_sync_run_past_its_callers_deadline_is_reported_as_a_timeout() {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let err = client(3, Duration::from_secs(10))
        .run(&sync(), &prompt("#run-delay-ms=4000"), deadline)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Timeout), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// `X-Fal-Request-Timeout` is a time-to-start deadline: fal is asked to start a run only while the run still has
/// its allowance (10 s) left, so that a run which starts late is refused (504) rather than run, billed and
/// abandoned by us. With a 3 s bound, a run that would start after 1 s is refused.
#[tokio::test]
async fn a_run_fal_cannot_start_while_it_could_still_finish_is_refused() {
    let err = client(0, Duration::from_secs(3))
        .run(&sync(), &prompt("#start-delay-ms=2000"), no_deadline())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::Api { status: 504, error_type: Some(ref t), .. } if t == "request_timeout"),
        "{err}"
    );
}

#[tokio::test]
async fn model_errors_and_queue_refusals_are_typed() {
    let c = client(0, Duration::from_secs(10));
    let err = c
        .run(&sync(), &prompt("#error"), no_deadline())
        .await
        .unwrap_err();
    assert!(err.is_caller_error(), "{err}");
    assert!(
        matches!(err, ProviderError::Api { status: 422, ref message, .. } if message.contains("emulated model failure")),
        "{err}"
    );

    let err = c
        .submit(&queue(), &prompt("#queue-status=503"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::Api { status: 503, error_type: Some(ref t), .. } if t == "runner_scheduling_failure"),
        "{err}"
    );
    assert!(!err.is_caller_error());
}
