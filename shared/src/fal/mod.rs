//! fal.ai: the HTTP client, its wire types, and the webhook signature with its key set.

pub mod client;
pub mod endpoint;
pub mod jwks;
pub mod signature;
pub mod types;

pub use client::{FalClient, RetryPolicy};
pub use endpoint::{ProviderUrl, QueueEndpoint, SyncEndpoint};
pub use jwks::JwksCache;
