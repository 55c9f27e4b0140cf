//! Both functions under `cargo lambda watch`, driven over HTTP exactly as clients (through API Gateway routes)
//! and fal (signed webhook deliveries from the emulator) drive them, checked in Postgres, S3 and the emulator.
//! Their support is the `e2e` library (`e2e/src/lib.rs`).

mod bad_input;
mod events;
mod fal_image;
mod fal_webhook;
mod reconciler;
mod replicate;
