//! Support shared by the end-to-end suites (`tests/e2e/`, `tests/faults.rs`, `tests/load.rs`,
//! `tests/hostile.rs`), which drive both functions under `cargo lambda watch` as clients and fal drive them:
//! users and their calls ([`client`]), reads of what the stack holds and the exactly-once check ([`records`]),
//! the fal emulator, its deliveries and fal-webhook ([`fal`]), a loopback listener that records what reaches it
//! ([`trap`]), and the functions' state built in this process for reconciler passes ([`app`]).
//!
//! The stack's coordinates come from `shared/tests/common/mod.rs`, which the adapter tests share.

#[path = "../../shared/tests/common/mod.rs"]
pub mod common;

pub mod app;
pub mod client;
pub mod fal;
pub mod records;
pub mod trap;

use std::time::{Duration, Instant};

pub use app::*;
pub use client::*;
pub use common::stack_var;
pub use fal::*;
pub use records::*;
pub use trap::*;

/// Milliseconds since the Unix epoch, as the emulator stamps its deliveries (`started_at_ms`).
pub fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    u64::try_from(since.unwrap().as_millis()).unwrap()
}

/// Polls `done` every 100 ms until it holds; fails after `timeout`, naming `what` was awaited.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < timeout, "waited {timeout:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the functions under `cargo lambda watch` have logged so far (both processes write to one file).
pub fn functions_log() -> String {
    let path = format!("{}/cargo-lambda-watch.log", stack_var("STACK_LOG_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("the functions' log {path}: {e}"))
}
