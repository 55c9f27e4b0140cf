//! The shared crate's adapters against the real local stack: Postgres, S3 and Secrets Manager (moto), and the
//! fal emulator over HTTP.

#[path = "../common/mod.rs"]
mod common;

mod db;
mod fal_client;
mod migrations;
mod secrets;
mod storage;
