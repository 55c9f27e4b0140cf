//! The generation pipeline's shared crate: configuration, secrets, Postgres, S3, the fal client and the
//! state both Lambda functions build once per cold start.

pub mod after_response;
pub mod auth;
pub mod aws;
pub mod completion;
pub mod config;
pub mod db;
pub mod deadline;
pub mod fal;
pub mod http_event;
pub mod input;
pub mod jobs;
pub mod json;
pub mod key_cache;
pub mod media;
pub mod migrations;
pub mod ownership;
pub mod postprocess;
pub mod pricing;
pub mod provider;
pub mod reconcile;
pub mod replicate;
pub mod secrets;
pub mod standard_webhooks;
pub mod state;
pub mod storage;
pub mod storage_links;
pub mod submission;
pub mod telemetry;
pub mod tls;
pub mod webhook;
pub mod webhook_auth;

pub use config::{Config, ConfigError, Settings};
pub use state::AppState;
