//! fal-image: cold-start wiring only.

mod http;

use std::sync::Arc;

use gen_pipeline::AppState;
use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    gen_pipeline::telemetry::init();
    let state = Arc::new(AppState::from_env().await?);
    run(service_fn(move |req| {
        let state = state.clone();
        async move { http::handle(&state, req).await }
    }))
    .await
}
