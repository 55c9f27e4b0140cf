//! The client-facing checks, reported without targets yet: a user token's verification in process with the key set
//! warm (`UserTokens::verify`, ES256 and RS256 tokens made with the stack's signing keys), and one signed storage
//! link through the fal-image binary (`POST /storage/v1/object/sign/…`, as storage-js's `createSignedUrl` sends
//! it, for an object the bench stored, so each link includes the function's existence check), served by the bench's runtime API one event after another in a warm process.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ctx::Ctx;
use super::init;
use super::runtime_api::{RuntimeApi, post_event};
use super::stats::ms;
use crate::stack::TokenAlg;
use crate::stack::functions::FAL_IMAGE;
use crate::stack::token::token_from;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LinkSamples {
    /// Microseconds per verification, by algorithm (`es256`, `rs256`).
    pub auth_verify_us: std::collections::BTreeMap<String, Vec<f64>>,
    /// From the event handed to fal-image to its answer, per signed link (the first, cold one not counted).
    pub storage_sign_ms: Vec<f64>,
}

fn token(ctx: &Ctx, alg: TokenAlg) -> anyhow::Result<String> {
    token_from(
        |k| std::env::var(k).with_context(|| format!("{k} is not set")),
        alg,
        ctx.user,
    )
}

pub async fn measure(ctx: &Ctx, verifications: usize, links: usize) -> anyhow::Result<LinkSamples> {
    let mut out = LinkSamples::default();
    for (name, alg) in [("es256", TokenAlg::Es256), ("rs256", TokenAlg::Rs256)] {
        let header = format!("Bearer {}", token(ctx, alg)?);
        // Warm: the key set is fetched once, as in a warm function.
        let user = ctx.state.user_tokens.verify(Some(&header), None).await?;
        if user != ctx.user {
            bail!("the {name} token verified as {user}, not {}", ctx.user);
        }
        let mut samples = Vec::with_capacity(verifications);
        for _ in 0..verifications {
            let started = Instant::now();
            let user = ctx.state.user_tokens.verify(Some(&header), None).await?;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(user);
        }
        out.auth_verify_us.insert(name.to_owned(), samples);
    }
    out.storage_sign_ms = sign_through_the_function(ctx, links).await?;
    Ok(out)
}

/// `links + 1` createSignedUrl events to one fal-image process; the time of each but the first.
async fn sign_through_the_function(ctx: &Ctx, links: usize) -> anyhow::Result<Vec<f64>> {
    let header = format!("Bearer {}", token(ctx, TokenAlg::Es256)?);
    let path = format!("{}/bench/link.png", ctx.user);
    // A link is signed only for an object that exists (Supabase's `Object not found` otherwise).
    let png: Result<bytes::Bytes, std::io::Error> =
        Ok(bytes::Bytes::from_static(b"\x89PNG bench link"));
    ctx.state
        .storage
        .put_stream(
            &ctx.settings.config.workspace_bucket,
            &path,
            "image/png",
            futures::stream::iter([png]),
            None,
        )
        .await
        .context("storing the object to sign")?;
    let api = RuntimeApi::start().await?;
    let ids: Vec<String> = (0..=links).map(|i| format!("sign-{i}")).collect();
    for id in &ids {
        let event = sign_event(&header, &path, id);
        api.push_event(id, serde_json::to_vec(&event)?);
    }
    let bin = ctx.plan.bin_dir.join(FAL_IMAGE);
    let mut child = init::lambda_command(&bin, FAL_IMAGE, &ctx.plan, &api, "links")?
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut out = Vec::with_capacity(links);
    for (i, id) in ids.iter().enumerate() {
        let posted = tokio::select! {
            p = api.posted(id, ANSWER_TIMEOUT) => p?,
            status = child.wait() => bail!("fal-image exited ({status:?}); see {}", ctx.plan.logs.display()),
        };
        let answer: Value =
            serde_json::from_slice(&posted.body).context("the response is not JSON")?;
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("null"))?;
        if answer["statusCode"] != 200 || !body["signedURL"].is_string() {
            bail!("createSignedUrl answered {answer}");
        }
        let served = posted.served_at.context("no served time")?;
        if i > 0 {
            out.push(ms(posted.at.duration_since(served)));
        }
    }
    let _ = child.kill().await;
    let bucket = &ctx.settings.config.workspace_bucket;
    ctx.state.storage.delete(bucket, &path).await?;
    Ok(out)
}

/// An API Gateway HTTP API (v2) event for `POST /storage/v1/object/sign/workspace-temp/<path>`, as storage-js
/// sends it.
fn sign_event(authorization: &str, path: &str, request_id: &str) -> Value {
    let domain = "bench.execute-api.us-east-1.amazonaws.com";
    let headers = json!({
        "authorization": authorization,
        "content-type": "application/json",
        "host": domain,
        "user-agent": "storage-js",
    });
    let Value::Object(headers) = headers else {
        unreachable!("a JSON object literal")
    };
    let path = format!("/storage/v1/object/sign/workspace-temp/{path}");
    let body = json!({"expiresIn": 3600}).to_string();
    post_event(domain, &path, "", headers, &body, request_id)
}
