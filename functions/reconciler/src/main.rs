//! reconciler: cold-start wiring only; each scheduled event runs one bounded pass.

use std::sync::Arc;
use std::time::Duration;

use gen_pipeline::reconcile::{PassTime, reconcile_stale_jobs};
use gen_pipeline::{AppState, deadline};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

/// Kept free at the end of an invocation: the report, its log line, the runtime's answer.
const MARGIN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Error> {
    gen_pipeline::telemetry::init();
    let state = Arc::new(AppState::from_env().await?);
    // Bad settings stop the function here, with the variable named, not at the first scheduled run.
    let options = state.config.reconcile;
    run(service_fn(move |event: LambdaEvent<Value>| {
        let state = state.clone();
        async move {
            let settings = state.settings().await?;
            let until = deadline::of_invocation(event.context.deadline, MARGIN);
            let report =
                reconcile_stale_jobs(&state, &settings, options, PassTime::new(&settings, until))
                    .await;
            Ok::<Value, Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
