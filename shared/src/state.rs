//! What a function builds once per cold start and shares across invocations: config, AWS clients, the secret
//! cache, the database handle, the fal HTTP client and fal's key cache. Building it makes no network call.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Settings};
use crate::db::Db;
use crate::fal::{FalClient, JwksCache, RetryPolicy};
use crate::secrets::{SecretsCache, SecretsError};
use crate::storage::Storage;

pub struct AppState {
    pub config: Arc<Config>,
    pub secrets: SecretsCache,
    pub db: Db,
    pub storage: Storage,
    /// For fal's API; no redirects, no proxies, connect timeout.
    pub http: reqwest::Client,
    /// For result media: allow-listed hosts, public addresses only, redirects re-checked.
    pub media_http: reqwest::Client,
    pub jwks: JwksCache,
    /// Model rows looked up by id, kept for `config.model_cache_ttl`.
    pub models: crate::db::models::ModelCache,
    /// The Supabase project's token issuer and keys.
    pub user_tokens: crate::auth::UserTokens,
}

impl AppState {
    /// Builds the state from the environment and the SDK's standard configuration.
    pub async fn from_env() -> anyhow::Result<Self> {
        Self::new(Config::from_env()?, &crate::aws::load().await)
    }

    /// Builds the state from a config and an AWS SDK configuration (tools and tests build both themselves).
    pub fn new(config: Config, sdk: &aws_config::SdkConfig) -> anyhow::Result<Self> {
        let config = Arc::new(config);
        let http = http_client()?;
        Ok(AppState {
            secrets: SecretsCache::new(
                crate::aws::secrets_manager(sdk, &config.app_secret_id),
                config.app_secret_id.clone(),
                config.secret_ttl,
            ),
            db: Db::new(),
            storage: Storage::new(crate::aws::s3(sdk)),
            jwks: JwksCache::new(http.clone(), config.fal_jwks_url.clone()),
            user_tokens: crate::auth::UserTokens::new(http.clone(), config.supabase_url.as_ref()),
            models: crate::db::models::ModelCache::new(config.model_cache_ttl),
            media_http: crate::media::http_client(&crate::media::MediaPolicy::from_config(
                &config,
            ))?,
            http,
            config,
        })
    }

    /// The config joined with the current secret values (fetched or refreshed as the TTL says).
    pub async fn settings(&self) -> Result<Settings, SecretsError> {
        Ok(Settings {
            config: self.config.clone(),
            secrets: self.secrets.get().await?,
        })
    }

    /// A pooled database connection, from the current secret's `DATABASE_URL` and `DATABASE_CA_CERT`.
    pub async fn db_client(
        &self,
        settings: &Settings,
    ) -> Result<crate::db::Client, crate::db::DbError> {
        let secrets = &settings.secrets;
        let ca = secrets.database_ca_cert.as_deref();
        self.db.client(&secrets.database_url, ca).await
    }

    /// A Replicate client with the current token; `None` when Replicate is not configured.
    pub fn replicate(&self, settings: &Settings) -> Option<crate::replicate::ReplicateClient> {
        let secrets = settings.secrets.replicate.as_ref()?;
        Some(crate::replicate::ReplicateClient::new(
            self.http.clone(),
            secrets.api_token.clone(),
            settings.config.fal_request_timeout,
        ))
    }

    /// A fal client with the current key.
    pub fn fal(&self, settings: &Settings) -> FalClient {
        let c = &settings.config;
        FalClient::new(
            self.http.clone(),
            settings.secrets.fal_key.clone(),
            RetryPolicy {
                base: c.fal_retry_base,
                max_retries: c.fal_retry_max,
                ..RetryPolicy::default()
            },
            c.fal_sync_timeout,
            c.fal_request_timeout,
        )
    }
}

/// The HTTP client for fal's API and key set.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(crate::tls::http_config()?)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}
