//! Replicate, our second model provider beside fal: a prediction is created for an official model (`owner/name`)
//! or a version, either with a webhook for its `completed` event or waiting for it (`Prefer: wait`), then read or
//! cancelled at the URLs it answered with. Errors are [`crate::provider::ProviderError`], those URLs
//! [`crate::fal::ProviderUrl`], so the use cases treat both providers alike.

pub mod client;
pub mod endpoint;
pub mod types;

pub use client::ReplicateClient;
pub use endpoint::PredictionsEndpoint;
pub use types::{Prediction, PredictionStatus, PredictionUrls};
