//! The demo, first version: one queue request submitted straight to the fal emulator, whose signed webhook
//! delivery must reach the real fal-webhook function under `cargo lambda watch` and be accepted with 200.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use super::envfile::StackEnv;
use super::{Clock, http_client, seed};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(env: &StackEnv, clock: &Clock) -> anyhow::Result<()> {
    let emulator = env.require("FAL_EMULATOR_URL")?;
    let webhook = env.require("FAL_WEBHOOK_URL")?;
    let secret = env.require("FAL_WEBHOOK_SECRET")?;
    let fal_key = env.require("FAL_KEY")?;
    let http = http_client(Duration::from_secs(30))?;

    let job_id = Uuid::new_v4();
    let callback = url::Url::parse_with_params(
        webhook,
        &[("secret", secret), ("job_id", &job_id.to_string())],
    )
    .context("FAL_WEBHOOK_URL is not a URL")?;
    let submit = url::Url::parse_with_params(
        &format!("{emulator}/queue/{}", seed::ASYNC_MODEL_KEY),
        &[("fal_webhook", callback.as_str())],
    )
    .context("FAL_EMULATOR_URL is not a URL")?;
    clock.say(format!(
        "submit to the emulator: POST {emulator}/queue/{} with webhook {webhook}?secret=***&job_id={job_id}",
        seed::ASYNC_MODEL_KEY
    ));
    let response = http
        .post(submit)
        .header("Authorization", format!("Key {fal_key}"))
        .json(&json!({"prompt": "demo round trip"}))
        .send()
        .await
        .context("queue submit to the emulator failed")?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "queue submit answered {status}: {}",
            redact(&body.to_string(), secret)
        );
    }
    let request_id = body
        .get("request_id")
        .and_then(Value::as_str)
        .context("queue submit answer has no request_id")?
        .to_string();
    clock.say(format!("emulator accepted request {request_id} ({status})"));

    let inspect = format!("{emulator}/_emulator/requests/{request_id}");
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let delivery = loop {
        if Instant::now() >= deadline {
            bail!(
                "no webhook delivery with an HTTP status within {DELIVERY_TIMEOUT:?} (see {inspect})"
            );
        }
        let state: Value = match http.get(&inspect).send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let answered = state
            .get("deliveries")
            .and_then(Value::as_array)
            .and_then(|ds| {
                ds.iter()
                    .find(|d| d.get("http_status").is_some_and(|s| !s.is_null()))
            })
            .cloned();
        if let Some(d) = answered {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let http_status = delivery
        .get("http_status")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let attempt = delivery.get("attempt").cloned().unwrap_or(Value::Null);
    let error = delivery.get("error").cloned().unwrap_or(Value::Null);
    clock.say(redact(
        &format!("webhook delivery attempt {attempt}: fal-webhook answered HTTP {http_status} (error: {error})"),
        secret,
    ));
    if http_status != 200 {
        bail!(
            "the webhook function answered {http_status}, not 200; see logs/cargo-lambda-watch.log"
        );
    }
    clock.say("round trip complete: emulator -> signed webhook -> fal-webhook accepted it");
    Ok(())
}

/// `text` with every occurrence of the secret (plain or percent-encoded) masked.
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_string();
    }
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    text.replace(secret, "***").replace(&encoded, "***")
}
