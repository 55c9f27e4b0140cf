//! Both functions under `cargo lambda watch`, driven over HTTP exactly as clients (through API Gateway routes)
//! and fal (signed webhook deliveries from the emulator) drive them, checked in Postgres, S3 and the emulator.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;
mod support;

mod bad_input;
mod events;
mod fal_image;
mod fal_webhook;
mod reconciler;
