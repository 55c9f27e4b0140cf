//! One AWS `SdkConfig` for the process, from the SDK's standard configuration only (`AWS_ENDPOINT_URL`, region,
//! credentials chain), and the clients built from it.

use std::time::Duration;

use aws_config::environment::{
    EnvironmentVariableCredentialsProvider, EnvironmentVariableRegionProvider,
};
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// Loads the standard configuration once. No network calls happen here; credentials resolve lazily.
///
/// Every call is bounded: an endpoint that accepts connections but stops answering (a hung S3) fails the call
/// instead of holding the invocation until Lambda's own timeout. The read timeout runs from a request's start to
/// its answer's head, so it bounds the whole of a request whose body is in memory (a multipart part is 8 MiB); the
/// streamed PutObject, which lasts as long as its source, sets bounds of its own (`storage::single_put`).
///
/// In Lambda (`AWS_LAMBDA_FUNCTION_NAME` set) the runtime puts the function role's credentials and the region in
/// the environment, so they are read there, without building the default chains (profile files, web identity,
/// ECS, IMDS) at every cold start. Elsewhere (tools, tests) the standard chains apply.
pub async fn load() -> SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest());
    let loader = if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        loader
            .credentials_provider(EnvironmentVariableCredentialsProvider::new())
            .region(EnvironmentVariableRegionProvider::new())
    } else {
        loader
    };
    loader
        .http_client(SharedHttpClient::new(OneClient(
            aws_smithy_http_client::Builder::new()
                .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                .build_https(),
        )))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .read_timeout(Duration::from_secs(20))
                .build(),
        )
        .load()
        .await
}

/// The SDK's hyper/rustls client, one for every SDK client of the process (S3, Secrets Manager, the credentials
/// chain's STS). Its connector — and the root store it reads from the system's CA files — is built when the first
/// call needs it, once per timeout setting, instead of once per SDK client at init as the SDK's default does (and
/// again at the first call).
#[derive(Debug)]
struct OneClient(SharedHttpClient);

impl HttpClient for OneClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
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

/// Secrets Manager client for `secret_id`. A secret is served only by the endpoint of its own region, so a full ARN
/// naming another region than the function's (the template's parameter takes any) gets a client of that region;
/// a name, or an ARN of the function's own region, gets the configured one.
pub fn secrets_manager(config: &SdkConfig, secret_id: &str) -> aws_sdk_secretsmanager::Client {
    let own = config.region().map(|r| r.as_ref());
    match arn_region(secret_id) {
        Some(region) if Some(region) != own => {
            let conf = aws_sdk_secretsmanager::config::Builder::from(config)
                .region(aws_sdk_secretsmanager::config::Region::new(
                    region.to_owned(),
                ))
                .build();
            aws_sdk_secretsmanager::Client::from_conf(conf)
        }
        _ => aws_sdk_secretsmanager::Client::new(config),
    }
}

/// The region an ARN names (`arn:<partition>:<service>:<region>:…`); `None` for anything else, or an ARN without one.
fn arn_region(id: &str) -> Option<&str> {
    let mut parts = id.splitn(5, ':');
    let (arn, _partition, _service, region) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let region_like = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (arn == "arn" && parts.next().is_some() && region_like).then_some(region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_of_a_secrets_arn_and_none_for_a_name() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gen/app-AbCdEf";
        assert_eq!(arn_region(arn), Some("eu-west-1"));
        assert_eq!(
            arn_region("arn:aws-us-gov:secretsmanager:us-gov-west-1:123456789012:secret:a-AbCdEf"),
            Some("us-gov-west-1")
        );
        for not_one in [
            "gen/app",
            "gen:app",
            "arn:aws:secretsmanager::123456789012:secret:a",
            "arn:aws:secretsmanager:EU-WEST-1:123456789012:secret:a",
            "arn:aws:secretsmanager:eu-west-1",
            "urn:aws:secretsmanager:eu-west-1:123456789012:secret:a",
        ] {
            assert_eq!(arn_region(not_one), None, "{not_one}");
        }
    }
}
