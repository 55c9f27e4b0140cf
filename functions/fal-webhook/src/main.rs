//! fal-webhook: cold-start wiring only.

mod errors;
mod http;

use std::sync::Arc;

use gen_pipeline::{AppState, after_response};
use lambda_http::{Error, run, service_fn};

// The same cold-start wiring as fal-image: each binary keeps its own main (STYLE.md: thin entry points).
#[tokio::main]
async fn main() -> Result<(), Error> {
    // The extension registers (a round trip to the runtime API) while the logger and the state are built.
    let (background, runner) = after_response::channel();
    let registering = tokio::spawn(runner.register());
    gen_pipeline::telemetry::init();
    let state = Arc::new(AppState::from_env().await?);
    let extension = registering.await??;
    let handler = service_fn(move |req| {
        let state = state.clone();
        let ticket = background.ticket();
        async move { http::handle(state, req, ticket).await }
    });
    tokio::try_join!(run(handler), extension)?;
    Ok(())
}
