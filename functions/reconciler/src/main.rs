//! reconciler: cold-start wiring only; each scheduled event runs one bounded pass.

use std::sync::Arc;

use gen_pipeline::AppState;
use gen_pipeline::reconcile::reconcile_stale_jobs;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    gen_pipeline::telemetry::init();
    let state = Arc::new(AppState::from_env().await?);
    // Bad settings stop the function here, with the variable named, not at the first scheduled run.
    let options = state.config.reconcile;
    run(service_fn(move |_event: LambdaEvent<Value>| {
        let state = state.clone();
        async move {
            let settings = state.settings().await?;
            let report = reconcile_stale_jobs(&state, &settings, options).await;
            Ok::<Value, Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
