use std::time::Duration;

use crate::common::{sdk_config, unique};
use gen_pipeline::aws;
use gen_pipeline::secrets::{SecretsCache, SecretsError};
use secrecy::ExposeSecret;

fn secret_json(fal_key: &str) -> String {
    serde_json::json!({
        "FAL_KEY": fal_key,
        "FAL_WEBHOOK_SECRET": "hook",
        "DATABASE_URL": "postgres://u:p@127.0.0.1:1/db",
        "SUPABASE_JWT_SECRET": "jwt",
    })
    .to_string()
}

/// A new secret holding `value`, and a client of the stack's Secrets Manager.
async fn new_secret(prefix: &str, value: String) -> (aws_sdk_secretsmanager::Client, String) {
    let client = aws::secrets_manager(&sdk_config().await, prefix);
    let name = unique(prefix);
    client
        .create_secret()
        .name(&name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
    (client, name)
}

#[tokio::test]
async fn settings_come_from_secrets_manager_and_a_rotated_value_is_seen_after_the_ttl() {
    let (client, name) = new_secret("test/app-secret", secret_json("first-key")).await;
    let cache = SecretsCache::new(client.clone(), name.clone(), Duration::from_millis(800));
    let first = cache.get().await.unwrap();
    assert_eq!(first.fal_key.expose_secret(), "first-key");
    assert_eq!(
        first.fal_webhook_secret.as_ref().unwrap().expose_secret(),
        "hook"
    );

    client
        .put_secret_value()
        .secret_id(&name)
        .secret_string(secret_json("rotated-key"))
        .send()
        .await
        .unwrap();
    // Within the TTL the cached value serves; no refetch per call.
    assert_eq!(
        cache.get().await.unwrap().fal_key.expose_secret(),
        "first-key"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        cache.get().await.unwrap().fal_key.expose_secret(),
        "rotated-key"
    );
}

#[tokio::test]
async fn a_missing_secret_is_a_clear_error() {
    let sdk = sdk_config().await;
    let cache = SecretsCache::new(
        aws::secrets_manager(&sdk, "test/absent"),
        unique("test/absent"),
        Duration::from_secs(60),
    );
    assert!(matches!(cache.get().await, Err(SecretsError::Fetch { .. })));
}

#[tokio::test]
async fn a_secret_that_is_not_the_expected_json_is_a_clear_error() {
    let (client, name) = new_secret("test/malformed", "{\"FAL_KEY\":1}".to_owned()).await;
    let cache = SecretsCache::new(client, name, Duration::from_secs(60));
    assert!(matches!(
        cache.get().await,
        Err(SecretsError::Malformed { .. })
    ));
}

#[tokio::test]
async fn a_failed_refresh_serves_the_cached_value_and_waits_before_fetching_again() {
    let (client, name) = new_secret("test/refresh-fails", secret_json("first-key")).await;
    let ttl = Duration::from_millis(800);
    let cache = SecretsCache::new(client.clone(), name.clone(), ttl);
    assert_eq!(
        cache.get().await.unwrap().fal_key.expose_secret(),
        "first-key"
    );
    let put = |value: String| {
        client
            .put_secret_value()
            .secret_id(&name)
            .secret_string(value)
            .send()
    };
    put("{\"FAL_KEY\":1}".to_owned()).await.unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    // The refresh fails (a malformed value): the cached value serves.
    assert_eq!(
        cache.get().await.unwrap().fal_key.expose_secret(),
        "first-key"
    );
    // Fixed at once, but the next attempt waits: no fetch per request after a failure.
    put(secret_json("rotated-key")).await.unwrap();
    assert_eq!(
        cache.get().await.unwrap().fal_key.expose_secret(),
        "first-key"
    );
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(
        cache.get().await.unwrap().fal_key.expose_secret(),
        "rotated-key"
    );
}

#[tokio::test]
async fn a_secret_named_by_the_arn_of_another_region_is_read_in_that_region() {
    let sdk = sdk_config().await;
    let own = sdk.region().map(|r| r.to_string());
    let elsewhere = if own.as_deref() == Some("eu-west-1") {
        "us-west-2"
    } else {
        "eu-west-1"
    };
    let there = sdk
        .to_builder()
        .region(aws_sdk_secretsmanager::config::Region::new(elsewhere))
        .build();
    let created = aws_sdk_secretsmanager::Client::new(&there)
        .create_secret()
        .name(unique("test/other-region"))
        .secret_string(secret_json("far-key"))
        .send()
        .await
        .unwrap();
    let arn = created.arn().unwrap().to_owned();
    assert!(arn.contains(&format!(":{elsewhere}:")), "{arn}");

    // The functions' SDK configuration is the stack's own region; the ARN says where the secret is.
    let cache = SecretsCache::new(
        aws::secrets_manager(&sdk, &arn),
        arn,
        Duration::from_secs(60),
    );
    assert_eq!(
        cache.get().await.unwrap().fal_key.expose_secret(),
        "far-key"
    );
}
