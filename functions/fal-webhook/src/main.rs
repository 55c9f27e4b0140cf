//! fal-webhook: cold-start wiring only.

mod errors;
mod http;

use std::sync::Arc;

use gen_pipeline::http_event::BuildableUri;
use gen_pipeline::{AppState, after_response};
use lambda_http::{Adapter, Error, service_fn};

// The same cold-start wiring as fal-image: each binary keeps its own main (STYLE.md: thin entry points).
#[tokio::main]
async fn main() -> Result<(), Error> {
    // The extension registers (a round trip to the runtime API) while the logger and the state are built.
    let (background, runner) = after_response::channel();
    let registering = tokio::spawn(runner.register());
    gen_pipeline::telemetry::init();
    let state = Arc::new(AppState::from_env().await?);
    let extension = registering.await??;
    let tickets = background.clone();
    let handler = service_fn(move |req| {
        let state = state.clone();
        let ticket = tickets.ticket();
        async move { http::handle(state, req, ticket).await }
    });
    // As `lambda_http::run`, with every invocation leaving the extension a word (`EveryInvocation`).
    // The extension's loop runs on a worker, so its first poll does not hold up the runtime's first `next`.
    let extension = tokio::spawn(extension);
    let runtime =
        lambda_runtime::run(background.every_invocation(BuildableUri(Adapter::from(handler))));
    tokio::try_join!(runtime, async { extension.await? })?;
    Ok(())
}
