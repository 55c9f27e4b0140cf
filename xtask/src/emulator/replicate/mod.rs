//! Replicate, played under `<emulator>/replicate/v1` (standing in for `https://api.replicate.com/v1`): predictions
//! created for an official model or a version, read and cancelled; finished ones delivered to their webhook signed
//! as Standard Webhooks with the account's secret; result files under `<emulator>/replicate/delivery` (for
//! `replicate.delivery`). Faults are scripted by the fal part's `#directives` in the input's `prompt`.

mod api;
mod prediction;
mod store;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use secrecy::SecretString;

pub use store::Store;

use super::state::AppState;

/// Replicate's settings: from `FAL_EMULATOR_REPLICATE_*` in [`Config::from_env`], or built by tests.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// When set, every `/v1` call must carry `Authorization: Bearer <token>`; unset, any call is let through.
    pub token: Option<SecretString>,
    /// The account's webhook secret, `whsec_<base64>`; `None`: a new one is made at each start.
    pub webhook_secret: Option<SecretString>,
}

impl Config {
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(SecretString::from)
        };
        Config {
            token: var("FAL_EMULATOR_REPLICATE_TOKEN"),
            webhook_secret: var("FAL_EMULATOR_REPLICATE_WEBHOOK_SECRET"),
        }
    }
}

/// Replicate's routes, merged into the emulator's router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/replicate/v1/models/{owner}/{name}/predictions",
            post(api::create_for_model),
        )
        .route("/replicate/v1/predictions", post(api::create_for_version))
        .route("/replicate/v1/predictions/{id}", get(api::get))
        .route("/replicate/v1/predictions/{id}/cancel", post(api::cancel))
        .route("/replicate/v1/webhooks/default/secret", get(api::secret))
        .route("/replicate/delivery/{id}/{file_name}", get(api::delivery))
        .route(
            "/replicate/v1/_emulator/predictions/{id}",
            get(api::inspect),
        )
}
