//! One AWS `SdkConfig` for the process, from the SDK's standard configuration only (`AWS_ENDPOINT_URL`, region,
//! credentials chain), and the clients built from it.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the standard configuration once. No network calls happen here; credentials resolve lazily.
///
/// Every call is bounded: an endpoint that accepts connections but stops answering (a hung S3) fails the call
/// instead of holding the invocation until Lambda's own timeout. The read timeout applies per read, so a long
/// upload that keeps moving is not cut.
pub async fn load() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .read_timeout(Duration::from_secs(20))
                .build(),
        )
        .load()
        .await
}

/// S3 client. Path-style addressing when a custom endpoint is configured: S3-compatible endpoints other than AWS
/// (moto, MinIO) cannot serve virtual-hosted buckets on an IP address.
pub fn s3(config: &SdkConfig) -> aws_sdk_s3::Client {
    let custom_endpoint =
        config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(custom_endpoint)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub fn secrets_manager(config: &SdkConfig) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(config)
}
