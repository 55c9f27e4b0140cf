//! The demo: one sync image and one async video generation end to end through the functions under
//! `cargo lambda watch`, as a client would drive them (a user JWT, `POST /fal-image`, polling `GET /jobs/{id}`),
//! printing each job's status transitions and where its result landed. The async one completes through a real,
//! signed webhook delivery from the fal emulator. Exits non-zero unless both complete.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::clock::Clock;
use crate::net::http_client;

use super::envfile::StackEnv;
use super::token;

const JOB_TIMEOUT: Duration = Duration::from_secs(90);

pub async fn run(env: &StackEnv, clock: &Clock) -> anyhow::Result<()> {
    let api = env.require("FAL_IMAGE_URL")?;
    let emulator = env.require("FAL_EMULATOR_URL")?;
    let http = http_client(Duration::from_secs(60))?;

    let user = Uuid::new_v4();
    let jwt = token::ensure_user_and_token(env, user).await?;
    clock.say(format!("user {user} created; JWT issued"));
    let demo = Demo {
        env,
        clock,
        http,
        api,
        emulator,
        jwt,
    };

    let mut ok = true;
    for (label, model, prompt) in [
        (
            "sync image",
            env.require("SYNC_MODEL_ID")?,
            "demo: a lighthouse at dusk, oil painting #media-type=image/png #media-bytes=250000",
        ),
        (
            "async video",
            env.require("ASYNC_MODEL_ID")?,
            "demo: waves rolling onto a beach #media-type=video/mp4 #media-bytes=3000000 #delay-ms=1500",
        ),
    ] {
        ok &= demo.generation(label, model, prompt).await?;
    }
    if !ok {
        bail!("the demo did not complete both generations");
    }
    clock.say("both generations completed end to end");
    Ok(())
}

/// A client of the functions (one user, its JWT) that can also ask the emulator what it delivered.
struct Demo<'a> {
    env: &'a StackEnv,
    clock: &'a Clock,
    http: reqwest::Client,
    api: &'a str,
    emulator: &'a str,
    jwt: String,
}

impl Demo<'_> {
    /// One generation: `POST /fal-image`, the job followed to its end, its stored result fetched, the emulator's
    /// webhook deliveries for it listed. True when it completed with a result that can be fetched.
    async fn generation(&self, label: &str, model: &str, prompt: &str) -> anyhow::Result<bool> {
        let (clock, api) = (self.clock, self.api);
        clock.say(format!("--- {label}: POST {api}/fal-image"));
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{api}/fal-image"))
            .bearer_auth(&self.jwt)
            .json(&json!({ "prompt": prompt, "apiModelId": model, "metadata": { "aspectRatio": "16:9" } }))
            .send()
            .await
            .context("POST /fal-image failed")?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        clock.say(format!(
            "answered {status} in {} ms: {}",
            started.elapsed().as_millis(),
            summary(&body)
        ));
        let Some(job_id) = body.get("jobId").and_then(Value::as_str) else {
            clock.say(format!("{label}: no job was created"));
            return Ok(false);
        };
        let job = follow(&self.http, api, &self.jwt, job_id, clock).await?;
        if job["status"] != "completed" {
            clock.say(format!(
                "{label}: job {job_id} ended {} ({})",
                job["status"], job["errorMessage"]
            ));
            return Ok(false);
        }
        let result = &job["result"];
        let (code, size) = fetch_size(&self.http, result["url"].as_str().unwrap_or_default()).await;
        clock.say(format!(
            "{label}: stored at s3://{}/{} ({}, {size} bytes, presigned URL answers {code})",
            self.env.get("WORKSPACE_BUCKET").unwrap_or("workspace-temp"),
            result["storagePath"].as_str().unwrap_or("?"),
            result["mimeType"].as_str().unwrap_or("?"),
        ));
        if let Some(request_id) = body.get("requestId").and_then(Value::as_str) {
            self.print_deliveries(request_id).await?;
        }
        Ok(code == 200 && size != 0)
    }

    /// The emulator's signed webhook deliveries for `request_id`, and how fal-webhook answered each.
    async fn print_deliveries(&self, request_id: &str) -> anyhow::Result<()> {
        let emulator = self.emulator;
        let inspect: Value = self
            .http
            .get(format!("{emulator}/_emulator/requests/{request_id}"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or(Value::Null);
        for d in inspect["deliveries"].as_array().into_iter().flatten() {
            self.clock.say(format!(
                "fal emulator: signed webhook delivery {} attempt {} -> fal-webhook answered {}",
                d["delivery"], d["attempt"], d["http_status"]
            ));
        }
        Ok(())
    }
}

/// Polls the job until it is terminal, printing every status change.
async fn follow(
    http: &reqwest::Client,
    api: &str,
    jwt: &str,
    job_id: &str,
    clock: &Clock,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let job: Value = http
            .get(format!("{api}/jobs/{job_id}"))
            .bearer_auth(jwt)
            .send()
            .await?
            .json()
            .await?;
        let status = job["status"].as_str().unwrap_or("?").to_owned();
        if status != last {
            clock.say(format!(
                "job {job_id}: {} -> {status}",
                if last.is_empty() { "(new)" } else { &last }
            ));
            last = status.clone();
        }
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            return Ok(job);
        }
        if started.elapsed() > JOB_TIMEOUT {
            bail!("job {job_id} still {status} after {JOB_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fetch_size(http: &reqwest::Client, url: &str) -> (u16, usize) {
    match http.get(url).send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            (code, r.bytes().await.map(|b| b.len()).unwrap_or(0))
        }
        Err(_) => (0, 0),
    }
}

/// The answer without long URLs.
fn summary(body: &Value) -> String {
    let mut b = body.clone();
    if let Some(o) = b.as_object_mut() {
        for k in ["resultUrl", "originalUrl"] {
            if o.contains_key(k) {
                o.insert(k.into(), json!("…"));
            }
        }
    }
    b.to_string()
}
