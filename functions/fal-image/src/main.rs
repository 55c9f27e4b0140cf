//! fal-image: cold-start wiring only.

mod errors;
mod http;
mod storage;

use std::sync::Arc;

use gen_pipeline::{AppState, after_response};
use lambda_http::Error;

// The same cold-start wiring as fal-webhook: each binary keeps its own main (STYLE.md: thin entry points).
#[tokio::main]
async fn main() -> Result<(), Error> {
    gen_pipeline::telemetry::init();
    let state = Arc::new(AppState::from_env().await?);
    // Post-processing a handler leaves runs after its answer, inside the invocation (`after_response`).
    after_response::run_http(move |req, background| http::handle(state.clone(), req, background))
        .await
}
