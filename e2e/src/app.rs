//! The state the functions build, built in the test process from the stack's variables (no process environment
//! is read or changed), for in-process reconciler passes and post-processing runs.

use std::time::Duration;

use gen_pipeline::reconcile::{PassTime, ReconcileOptions, ReconcileReport, reconcile_stale_jobs};
use gen_pipeline::{AppState, Config, Settings};

use crate::common::{sdk_config, try_stack_var};

/// The functions' `AppState` and current settings, configured from the stack's variables.
pub async fn app_state() -> (AppState, Settings) {
    let config =
        Config::from_lookup(try_stack_var).expect("the stack's variables are a valid config");
    let state = AppState::new(config, &sdk_config().await).unwrap();
    let settings = state.settings().await.unwrap();
    (state, settings)
}

/// One pass of the lost-webhook reconciler in this process over open jobs older than `older_than`, failing
/// those past `deadline`. The tests of one binary share the database, and a pass takes every stale job, its own
/// and the other tests': passes run one at a time, so that when a test's pass returns, the pass that took its
/// jobs (its own, or one before it) is over.
pub async fn reconcile_pass(older_than: Duration, deadline: Duration) -> ReconcileReport {
    reconcile_pass_until(older_than, deadline, None).await
}

/// [`reconcile_pass`] in an invocation that must be over by `until`.
pub async fn reconcile_pass_until(
    older_than: Duration,
    deadline: Duration,
    until: Option<tokio::time::Instant>,
) -> ReconcileReport {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let (state, settings) = app_state().await;
    let options = ReconcileOptions {
        older_than,
        deadline,
        batch: 100,
    };
    let time = PassTime::new(&settings, until);
    reconcile_stale_jobs(&state, &settings, options, time).await
}
