//! The state the functions build, built in the test process from the stack's variables (no process environment
//! is read or changed), for in-process reconciler passes and post-processing runs.

use std::time::Duration;

use gen_pipeline::reconcile::{PassTime, ReconcileOptions, ReconcileReport, reconcile_stale_jobs};
use gen_pipeline::{AppState, Config, Settings};
use secrecy::ExposeSecret;

use crate::common::{sdk_config, try_stack_var};

/// The application name of this process's database sessions: the functions' own are `gen-pipeline`, so a test
/// can tell theirs from this process's.
pub const IN_PROCESS_APPLICATION_NAME: &str = "e2e-in-process";

/// `database_url` (a URL, whose password may hold a `?`) with this process's application name.
pub fn in_process(database_url: &str) -> String {
    let host_on = database_url.rfind('@').map_or(0, |at| at + 1);
    let joint = if database_url[host_on..].contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{database_url}{joint}application_name={IN_PROCESS_APPLICATION_NAME}")
}

/// The functions' `AppState` and current settings, configured from the stack's variables; its database sessions
/// are named [`IN_PROCESS_APPLICATION_NAME`].
pub async fn app_state() -> (AppState, Settings) {
    let config =
        Config::from_lookup(try_stack_var).expect("the stack's variables are a valid config");
    let state = AppState::new(config, &sdk_config().await).unwrap();
    let settings = state.settings().await.unwrap();
    let mut secrets = (*settings.secrets).clone();
    secrets.database_url = in_process(secrets.database_url.expose_secret()).into();
    let settings = Settings {
        config: settings.config,
        secrets: std::sync::Arc::new(secrets),
    };
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
