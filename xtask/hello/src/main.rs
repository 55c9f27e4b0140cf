//! The floor of the bench's cold-init figure: the least a Rust Lambda function does before its first
//! `GET /runtime/invocation/next` — a multi-threaded tokio runtime, a log subscriber like the functions' (JSON,
//! `RUST_LOG` filter), and the runtime client. Built with the same profile and in the same `cargo build` as the
//! functions, started the same way (`xtask/src/bench/init.rs`), so init_ratio_vs_hello_<function> is what the
//! functions add on top.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(event.payload)
    }))
    .await
}
