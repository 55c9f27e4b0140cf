//! The AWS side of the stack in moto: the two buckets and the app secret, created idempotently with the SDK.

use std::time::Duration;

use anyhow::Context;
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore as _;
use serde_json::json;

use super::envfile::StackEnv;
use crate::clock::Clock;
use crate::net::random_hex;

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";
/// The S3 buckets behind the storage buckets clients name (`workspace-temp`, `user-library`), named otherwise as a
/// deployment's are (CloudFormation makes their names up), so that a test sees which of the two names a value
/// carries.
pub const WORKSPACE_BUCKET: &str = "gen-workspace-temp";
pub const LIBRARY_BUCKET: &str = "gen-user-library";
pub const SECRET_ID: &str = "gen-pipeline/local";

async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            None,
            None,
            "xtask-stack",
        ))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// The app secret of a fresh stack: new random keys, and the database URL the functions connect to.
pub struct AppSecret {
    pub fal_key: String,
    pub webhook_secret: String,
    pub jwt_secret: String,
    pub storage_signing_key: String,
    pub database_url: String,
    /// The database's CA (PEM), when it has its own.
    pub database_ca_cert: Option<String>,
    /// The emulator's Replicate account: the API token it wants, and the webhook secret its deliveries are signed
    /// with (`whsec_<base64>`, as Replicate hands it out).
    pub replicate_api_token: String,
    pub replicate_webhook_secret: String,
}

impl AppSecret {
    /// Fresh keys, with the functions' database URL and its CA ([`super::postgres::Database::for_functions`]).
    pub fn generate((functions_database_url, database_ca_cert): (String, Option<String>)) -> Self {
        Self {
            fal_key: format!("local-fal-key-{}", random_hex(16)),
            webhook_secret: random_hex(32),
            jwt_secret: random_hex(32),
            storage_signing_key: random_hex(32),
            database_url: functions_database_url,
            database_ca_cert,
            replicate_api_token: format!("r8_local{}", random_hex(16)),
            replicate_webhook_secret: random_whsec(),
        }
    }

    /// Its keys in `stack.env` (all but the database URL, which `stack.env` has direct).
    pub fn add_to(&self, env: &mut StackEnv) {
        env.set("FAL_WEBHOOK_SECRET", &self.webhook_secret);
        env.set("FAL_KEY", &self.fal_key);
        env.set("SUPABASE_JWT_SECRET", &self.jwt_secret);
        env.set("STORAGE_SIGNING_KEY", &self.storage_signing_key);
        env.set("REPLICATE_API_TOKEN", &self.replicate_api_token);
        env.set(
            "REPLICATE_WEBHOOK_SIGNING_SECRET",
            &self.replicate_webhook_secret,
        );
    }

    fn json(&self) -> String {
        json!({
            "FAL_KEY": self.fal_key,
            "FAL_WEBHOOK_SECRET": self.webhook_secret,
            "DATABASE_URL": self.database_url,
            "DATABASE_CA_CERT": self.database_ca_cert,
            "SUPABASE_JWT_SECRET": self.jwt_secret,
            "STORAGE_SIGNING_KEY": self.storage_signing_key,
            "REPLICATE_API_TOKEN": self.replicate_api_token,
            "REPLICATE_WEBHOOK_SIGNING_SECRET": self.replicate_webhook_secret,
        })
        .to_string()
    }
}

/// A Standard Webhooks secret: `whsec_` and 32 random bytes in base64.
fn random_whsec() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("whsec_{}", B64.encode(raw))
}

/// Creates the buckets and the app secret in moto at `endpoint` (or updates the secret's value when it exists).
pub async fn provision(endpoint: &str, secret: &AppSecret, clock: &Clock) -> anyhow::Result<()> {
    let step = clock.step();
    create(endpoint, &secret.json()).await?;
    clock.done(
        step,
        format!(
            "moto: buckets {WORKSPACE_BUCKET}, {LIBRARY_BUCKET} and secret {SECRET_ID} created"
        ),
    );
    Ok(())
}

/// The buckets' CORS rule in `template.yaml` (`CorsConfiguration`): signed links are fetched from the app's
/// origin.
fn cors_configuration() -> anyhow::Result<aws_sdk_s3::types::CorsConfiguration> {
    use aws_sdk_s3::types::{CorsConfiguration, CorsRule};
    let rule = CorsRule::builder()
        .allowed_origins("*")
        .allowed_methods("GET")
        .allowed_methods("HEAD")
        .allowed_headers("*")
        .set_expose_headers(Some(
            [
                "Content-Length",
                "Content-Type",
                "Content-Disposition",
                "ETag",
            ]
            .map(String::from)
            .to_vec(),
        ))
        .max_age_seconds(3600)
        .build()?;
    Ok(CorsConfiguration::builder().cors_rules(rule).build()?)
}

async fn create(endpoint: &str, secret_json: &str) -> anyhow::Result<()> {
    let config = sdk_config(endpoint).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    for bucket in [WORKSPACE_BUCKET, LIBRARY_BUCKET] {
        match s3.create_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(e)
                if e.as_service_error().is_some_and(|se| {
                    se.is_bucket_already_owned_by_you() || se.is_bucket_already_exists()
                }) => {}
            Err(e) => {
                return Err(aws_sdk_s3::Error::from(e))
                    .with_context(|| format!("cannot create bucket {bucket}"));
            }
        }
        s3.put_bucket_cors()
            .bucket(bucket)
            .cors_configuration(cors_configuration()?)
            .send()
            .await
            .map_err(aws_sdk_s3::Error::from)
            .with_context(|| format!("cannot set the CORS rule of bucket {bucket}"))?;
    }

    let sm = aws_sdk_secretsmanager::Client::new(&config);
    match sm
        .create_secret()
        .name(SECRET_ID)
        .secret_string(secret_json)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_resource_exists_exception()) =>
        {
            sm.put_secret_value()
                .secret_id(SECRET_ID)
                .secret_string(secret_json)
                .send()
                .await
                .map_err(aws_sdk_secretsmanager::Error::from)
                .context("cannot update the app secret")?;
        }
        Err(e) => {
            return Err(aws_sdk_secretsmanager::Error::from(e))
                .context("cannot create the app secret");
        }
    }
    Ok(())
}

/// Every value the app secret has held (a test may rotate it): the current one, then the other versions moto
/// still keeps (best effort: only the current one must be readable).
pub async fn secret_values(endpoint: &str) -> anyhow::Result<Vec<String>> {
    let config = sdk_config(endpoint).await;
    let sm = aws_sdk_secretsmanager::Client::new(&config);
    let current = sm
        .get_secret_value()
        .secret_id(SECRET_ID)
        .send()
        .await
        .map_err(aws_sdk_secretsmanager::Error::from)
        .context("cannot read the app secret")?;
    let mut values: Vec<String> = current
        .secret_string()
        .map(str::to_owned)
        .into_iter()
        .collect();
    let listed = sm
        .list_secret_version_ids()
        .secret_id(SECRET_ID)
        .include_deprecated(true)
        .send()
        .await;
    if let Ok(listed) = listed {
        for id in listed.versions().iter().filter_map(|v| v.version_id()) {
            if Some(id) == current.version_id() {
                continue;
            }
            if let Ok(out) = sm
                .get_secret_value()
                .secret_id(SECRET_ID)
                .version_id(id)
                .send()
                .await
            {
                values.extend(out.secret_string().map(str::to_owned));
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_webhook_secrets_are_whsec_over_32_bytes() {
        let secret = AppSecret::generate(("postgres://x".to_owned(), None));
        let encoded = secret
            .replicate_webhook_secret
            .strip_prefix("whsec_")
            .expect("whsec_ prefix");
        assert_eq!(B64.decode(encoded).expect("base64").len(), 32);
        assert_ne!(
            secret.replicate_webhook_secret,
            AppSecret::generate(("postgres://x".to_owned(), None)).replicate_webhook_secret
        );
    }
}
