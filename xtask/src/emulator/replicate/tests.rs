//! Replicate's side of the emulator over real HTTP on loopback, with the fal tests' server, receiver and client.

use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::Method;
use serde_json::{Value, json};

use super::Config;
use crate::emulator::Settings;
use crate::emulator::media::media_bytes_at;
use crate::emulator::tests::{
    Delivery, Emulator, WAIT, emulator, fast, header, next, now, receiver,
};

const TOKEN: &str = "r8_emulator_test";
const FLUX: &str = "/replicate/v1/models/black-forest-labs/flux-schnell/predictions";
const SECRET: &str = "/replicate/v1/webhooks/default/secret";

async fn replicate(webhook_secret: Option<&str>) -> Emulator {
    let replicate = Config {
        token: Some(TOKEN.into()),
        webhook_secret: webhook_secret.map(Into::into),
    };
    emulator(Settings {
        replicate,
        ..fast()
    })
    .await
}

impl Emulator {
    /// A call with the token to `url` (absolute, or a path of the emulator), with `Prefer` when given.
    async fn replicate_call(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        prefer: Option<&str>,
    ) -> reqwest::Response {
        let url = match url.starts_with("http") {
            true => url.to_owned(),
            false => format!("{}{url}", self.base),
        };
        let mut request = self.http.request(method, url).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        request.send().await.unwrap()
    }

    /// A create at `path` that must answer 201; the prediction.
    async fn create(&self, path: &str, body: Value, prefer: Option<&str>) -> Value {
        let resp = self
            .replicate_call(Method::POST, path, Some(body), prefer)
            .await;
        assert_eq!(resp.status(), 201);
        resp.json().await.unwrap()
    }

    async fn read(&self, method: Method, url: &str) -> (u16, Value) {
        let resp = self.replicate_call(method, url, None, None).await;
        (resp.status().as_u16(), resp.json().await.unwrap())
    }

    /// Reads `url` (with the token) until `done` holds, or [`WAIT`] passes.
    async fn read_until(&self, url: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, view) = self.read(Method::GET, url).await;
            if done(&view) || tokio::time::Instant::now() > deadline {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads `urls.get` until the prediction is over.
    async fn until_over(&self, prediction: &Value) -> Value {
        let url = prediction["urls"]["get"].as_str().unwrap();
        let running = |v: &Value| matches!(v["status"].as_str(), Some("starting" | "processing"));
        self.read_until(url, |v| !running(v)).await
    }

    /// The inspection view once `deliveries` attempts are recorded (just after the receiver answers them).
    async fn inspect_replicate(&self, id: &str, deliveries: usize) -> Value {
        let url = format!("{}/replicate/v1/_emulator/predictions/{id}", self.base);
        let recorded = |v: &Value| v["deliveries"].as_array().map_or(0, Vec::len);
        self.read_until(&url, |v| recorded(v) >= deliveries).await
    }
}

fn prompt(prompt: &str) -> Value {
    json!({"input": {"prompt": prompt}})
}

/// Checks a delivery's Standard Webhooks signature with aws-lc-rs directly, not with the emulator's signing code.
fn assert_signed(secret: &str, d: &Delivery) {
    let raw = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &raw);
    let (id, timestamp) = (
        header(&d.headers, "webhook-id"),
        header(&d.headers, "webhook-timestamp"),
    );
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(&d.body);
    let verifies = header(&d.headers, "webhook-signature")
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| B64.decode(sig).ok())
        .any(|tag| hmac::verify(&key, &content, &tag).is_ok());
    assert!(verifies, "no v1 signature verifies");
    let sent_at: i64 = timestamp.parse().unwrap();
    assert!(
        (now() - sent_at).abs() <= 5 * 60,
        "timestamp {sent_at} is stale"
    );
}

#[tokio::test]
async fn create_with_wait_answers_the_finished_prediction_and_serves_its_output() {
    let emu = replicate(None).await;
    let body = prompt("a fox #delay-ms=30 #media-bytes=5000");
    let p = emu.create(FLUX, body, Some("wait")).await;
    let id = p["id"].as_str().unwrap();
    assert_eq!(
        (
            p["status"].as_str(),
            p["model"].as_str(),
            p["version"].as_str()
        ),
        (
            Some("succeeded"),
            Some("black-forest-labs/flux-schnell"),
            Some("hidden")
        )
    );
    let output = format!("{}/replicate/delivery/{id}/output.png", emu.base);
    assert_eq!(p["output"], output);
    assert!(p["error"].is_null() && p["completed_at"].is_string());
    assert!(p["metrics"]["predict_time"].is_f64() && p["metrics"]["total_time"].is_f64());
    let get = format!("{}/replicate/v1/predictions/{id}", emu.base);
    assert_eq!(p["urls"]["get"], get);
    assert_eq!(p["urls"]["cancel"], format!("{get}/cancel"));

    let media = emu.http.get(&output).send().await.unwrap();
    assert_eq!(header(media.headers(), "content-type"), "image/png");
    let bytes = media.bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), media_bytes_at(id, 0, 5000).as_slice());
}

#[tokio::test]
async fn create_without_wait_starts_then_succeeds_via_get() {
    let emu = replicate(None).await;
    let body = json!({
        "version": "acme/wan-video:5c7d5dc6",
        "input": {"prompt": "a clip #delay-ms=300 #output-shape=array"},
    });
    let p = emu.create("/replicate/v1/predictions", body, None).await;
    assert_eq!(
        (
            p["status"].as_str(),
            p["model"].as_str(),
            p["version"].as_str()
        ),
        (Some("starting"), Some("acme/wan-video"), Some("5c7d5dc6"))
    );
    assert!(p["output"].is_null() && p["started_at"].is_null());
    let done = emu.until_over(&p).await;
    assert_eq!(done["status"], "succeeded");
    let outputs = done["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert!(outputs[0].as_str().unwrap().ends_with("/output.mp4"));

    // A wait that runs out answers the prediction as it is, still running.
    let started = tokio::time::Instant::now();
    let slow = emu
        .create(FLUX, prompt("#delay-ms=5000"), Some("wait=1"))
        .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(matches!(
        slow["status"].as_str(),
        Some("starting" | "processing")
    ));
}

#[tokio::test]
async fn cancel_ends_a_running_prediction_and_leaves_a_finished_one() {
    let emu = replicate(None).await;
    let running = emu.create(FLUX, prompt("#delay-ms=5000"), None).await;
    let cancel_url = running["urls"]["cancel"].as_str().unwrap();
    let (status, cancelled) = emu.read(Method::POST, cancel_url).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("canceled"))
    );
    assert!(cancelled["completed_at"].is_string() && cancelled["output"].is_null());
    assert_eq!(emu.until_over(&running).await["status"], "canceled");

    let finished = emu.create(FLUX, prompt("#delay-ms=0"), Some("wait")).await;
    let cancel_url = finished["urls"]["cancel"].as_str().unwrap();
    let (status, kept) = emu.read(Method::POST, cancel_url).await;
    assert_eq!((status, &kept), (200, &finished));

    let unknown = emu
        .read(Method::POST, "/replicate/v1/predictions/nope/cancel")
        .await;
    assert_eq!(unknown.0, 404);
}

#[tokio::test]
async fn webhook_is_signed_with_the_secret_and_keeps_its_id_on_retry() {
    let emu = replicate(None).await;
    let (hook, mut rx) = receiver(&[500]).await;
    let body = json!({
        "input": {"prompt": "#delay-ms=0"},
        "webhook": hook,
        "webhook_events_filter": ["completed"],
    });
    let p = emu.create(FLUX, body, None).await;
    let id = p["id"].as_str().unwrap();
    let (_, secret) = emu.read(Method::GET, SECRET).await;
    let secret = secret["key"].as_str().unwrap();

    let (first, retry) = (next(&mut rx).await, next(&mut rx).await);
    for d in [&first, &retry] {
        assert_signed(secret, d);
        let delivered: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(
            (delivered["id"].as_str(), delivered["status"].as_str()),
            (Some(id), Some("succeeded"))
        );
        assert!(
            delivered["output"]
                .as_str()
                .unwrap()
                .ends_with("/output.png")
        );
    }
    let webhook_id = header(&first.headers, "webhook-id");
    assert!(webhook_id.starts_with("msg_"));
    assert_eq!(webhook_id, header(&retry.headers, "webhook-id"));

    let view = emu.inspect_replicate(id, 2).await;
    assert_eq!(
        (view["webhook"].as_str(), view["webhook_id"].as_str()),
        (Some(hook.as_str()), Some(webhook_id))
    );
    let attempts = &view["deliveries"];
    let statuses = (&attempts[0]["http_status"], &attempts[1]["http_status"]);
    assert_eq!(statuses, (&json!(500), &json!(200)));
}

#[tokio::test]
async fn inspection_shows_the_output_a_running_prediction_will_deliver() {
    let emu = replicate(None).await;
    let body = json!({"input": {"prompt": "#delay-ms=5000"}, "webhook": "http://127.0.0.1:9/hook?token=t"});
    let p = emu.create(FLUX, body, None).await;
    let id = p["id"].as_str().unwrap();
    let view = emu.inspect_replicate(id, 0).await;
    assert_eq!(view["status"], "starting");
    assert_eq!(
        view["output"],
        format!("{}/replicate/delivery/{id}/output.png", emu.base)
    );
    assert_eq!(view["webhook"], "http://127.0.0.1:9/hook?token=t");
    assert!(view["webhook_events_filter"].is_null());
    let unknown = emu.http.get(format!(
        "{}/replicate/v1/_emulator/predictions/nope",
        emu.base
    ));
    assert_eq!(unknown.send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn the_secret_is_given_at_start_and_every_call_needs_the_token() {
    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let emu = replicate(Some(given)).await;
    assert_eq!(
        emu.read(Method::GET, SECRET).await,
        (200, json!({"key": given}))
    );
    for (method, path) in [
        (Method::GET, SECRET),
        (Method::POST, FLUX),
        (Method::GET, "/replicate/v1/predictions/x"),
    ] {
        let resp = emu
            .http
            .request(method, format!("{}{path}", emu.base))
            .bearer_auth("r8_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(
            resp.json::<Value>().await.unwrap()["title"],
            "Unauthenticated"
        );
    }
    let made = replicate(None).await.read(Method::GET, SECRET).await.1;
    let made = made["key"].as_str().unwrap();
    assert!(made.starts_with("whsec_") && made != given);
}

#[tokio::test]
async fn directives_script_failures_statuses_and_early_deliveries() {
    let emu = replicate(None).await;
    let failed = emu
        .create(FLUX, prompt("#error #delay-ms=0"), Some("wait"))
        .await;
    assert_eq!(
        (failed["status"].as_str(), failed["error"].as_str()),
        (Some("failed"), Some("emulated model failure"))
    );
    assert!(failed["output"].is_null());

    let status = |body: Value, prefer: Option<&'static str>| {
        let emu = &emu;
        async move {
            emu.replicate_call(Method::POST, FLUX, Some(body), prefer)
                .await
                .status()
        }
    };
    assert_eq!(status(prompt("#queue-status=503"), None).await, 503);
    assert_eq!(
        status(prompt("#queue-status=503"), Some("wait=1")).await,
        201
    );
    assert_eq!(status(prompt("#run-status=429"), Some("wait=1")).await, 429);
    assert_eq!(
        status(prompt("#run-status=429 #delay-ms=0"), None).await,
        201
    );
    assert_eq!(status(json!({"input": 5}), None).await, 422);
    // An accepted create answered with a status no client knows (`#run-unreadable`: one that waits); a create that
    // waits is answered as always otherwise.
    let unreadable = emu.create(FLUX, prompt("#queue-unreadable"), None).await;
    assert_eq!(unreadable["status"], "teleporting", "{unreadable}");
    let waited = emu
        .create(
            FLUX,
            prompt("#queue-unreadable #delay-ms=0"),
            Some("wait=1"),
        )
        .await;
    assert_eq!(waited["status"], "succeeded", "{waited}");
    let held = emu
        .create(FLUX, prompt("#run-unreadable #delay-ms=0"), Some("wait=1"))
        .await;
    assert_eq!(held["status"], "teleporting", "{held}");

    let (hook, mut rx) = receiver(&[]).await;
    let body = json!({"input": {"prompt": "#early #delay-ms=0"}, "webhook": hook});
    emu.create(FLUX, body, None).await;
    assert!(rx.try_recv().is_ok(), "the delivery should already be in");
}
