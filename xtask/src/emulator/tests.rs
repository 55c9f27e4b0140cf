//! The emulator over real HTTP on loopback: an in-process server, a tiny webhook receiver, reqwest as the client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use gen_pipeline::fal::signature::{Jwks, SignatureError, SignatureHeaders, verify};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::media::media_bytes_at;
use super::{Settings, start};

pub(super) const WAIT: Duration = Duration::from_secs(2);

pub(super) struct Emulator {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
}

pub(super) async fn emulator(settings: Settings) -> Emulator {
    let running = start("127.0.0.1:0".parse().unwrap(), settings)
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    Emulator {
        base: format!("http://{}", running.addr),
        http,
    }
}

pub(super) fn fast() -> Settings {
    Settings {
        retry: Duration::from_millis(20),
        ..Settings::default()
    }
}

impl Emulator {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("authorization", "Key test-key")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn submit(&self, model: &str, prompt: &str, webhook: Option<&str>) -> Value {
        let query = webhook.map(|w| {
            format!(
                "?fal_webhook={}",
                url::form_urlencoded::byte_serialize(w.as_bytes()).collect::<String>()
            )
        });
        let resp = self
            .post(
                &format!("/queue/{model}{}", query.unwrap_or_default()),
                json!({"prompt": prompt}),
            )
            .await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// A request without the key, to `url` (absolute, or a path of the emulator).
    async fn unkeyed(&self, method: reqwest::Method, url: &str) -> reqwest::Response {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.base)
        };
        self.http.request(method, url).send().await.unwrap()
    }

    /// [`Self::submit`] with a webhook; the request id.
    async fn submit_id(&self, model: &str, prompt: &str, webhook: &str) -> String {
        let submitted = self.submit(model, prompt, Some(webhook)).await;
        submitted["request_id"].as_str().unwrap().to_owned()
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        self.http
            .get(url)
            .header("authorization", "Key test-key")
            .send()
            .await
            .unwrap()
    }

    async fn inspect(&self, request_id: &str) -> Value {
        self.get(&format!("{}/_emulator/requests/{request_id}", self.base))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Polls the inspection endpoint until `done` holds (attempts are recorded just after the receiver answers).
    async fn inspect_until(&self, request_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let view = self.inspect(request_id).await;
            if done(&view) || tokio::time::Instant::now() > deadline {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Asserts the status and the JSON body of an answer.
async fn assert_answer(resp: reqwest::Response, status: u16, body: Value) {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.json::<Value>().await.unwrap(), body);
}

pub(super) struct Delivery {
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

#[derive(Clone)]
struct Receiver {
    answers: Arc<Mutex<VecDeque<u16>>>,
    /// How long each answer is held back, to tell concurrent deliveries from sequential ones.
    hold: Duration,
    tx: mpsc::UnboundedSender<Delivery>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.tx.send(Delivery { headers, body }).unwrap();
    let code = r.answers.lock().unwrap().pop_front().unwrap_or(200);
    tokio::time::sleep(r.hold).await;
    StatusCode::from_u16(code).unwrap()
}

/// A webhook receiver on loopback answering the given statuses in turn, then 200. Its URL carries a job's
/// credential as fal-image makes it (`job_id`, `token`).
pub(super) async fn receiver(answers: &[u16]) -> (String, mpsc::UnboundedReceiver<Delivery>) {
    slow_receiver(answers, Duration::ZERO).await
}

/// A fast emulator, and a job submitted to it for `model` with `prompt`, delivering to a receiver that answers 200.
async fn submitted_to_receiver(
    model: &str,
    prompt: &str,
) -> (Emulator, Value, mpsc::UnboundedReceiver<Delivery>) {
    let emu = emulator(fast()).await;
    let (hook, rx) = receiver(&[]).await;
    let submitted = emu.submit(model, prompt, Some(&hook)).await;
    (emu, submitted, rx)
}

async fn slow_receiver(
    answers: &[u16],
    hold: Duration,
) -> (String, mpsc::UnboundedReceiver<Delivery>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Receiver {
        answers: Arc::new(Mutex::new(answers.iter().copied().collect())),
        hold,
        tx,
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hook?job_id=00000000-0000-4000-a000-000000000001&token=s3cr3t",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

pub(super) async fn next(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery in time")
        .unwrap()
}

pub(super) fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).unwrap().to_str().unwrap()
}

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn two_signed_deliveries_verify_against_the_jwks() {
    let model = "fal-ai/bytedance/seedream/v4/text-to-image";
    let (emu, submitted, mut rx) =
        submitted_to_receiver(model, "a cat #deliveries=2 #delay-ms=10").await;
    let id = submitted["request_id"].as_str().unwrap();
    assert_eq!(submitted["status"], "IN_QUEUE");
    assert_eq!(
        submitted["status_url"],
        format!("{}/queue/fal-ai/bytedance/requests/{id}/status", emu.base)
    );

    let jwks: Jwks = emu
        .get(&format!("{}/.well-known/jwks.json", emu.base))
        .await
        .json()
        .await
        .unwrap();
    let keys = jwks.ed25519_keys();
    assert_eq!(keys.len(), 1);
    for _ in 0..2 {
        let d = next(&mut rx).await;
        let sig = SignatureHeaders {
            request_id: header(&d.headers, "x-fal-webhook-request-id"),
            user_id: header(&d.headers, "x-fal-webhook-user-id"),
            timestamp: header(&d.headers, "x-fal-webhook-timestamp"),
            signature_hex: header(&d.headers, "x-fal-webhook-signature"),
        };
        assert_eq!(sig.request_id, id);
        assert_eq!(
            verify(&sig, &d.body, &keys, now(), Some("emulator-user")),
            Ok(())
        );
        let mut tampered = d.body.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify(&sig, &tampered, &keys, now(), None),
            Err(SignatureError::NoKeyVerifies)
        );
        let body: Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(
            (body["request_id"].as_str(), body["status"].as_str()),
            (Some(id), Some("OK"))
        );
        assert!(body["payload"]["images"][0]["url"].is_string());
    }

    let view = emu
        .inspect_until(id, |v| v["deliveries"].as_array().unwrap().len() == 2)
        .await;
    let statuses: Vec<&Value> = view["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["http_status"])
        .collect();
    assert_eq!(statuses, [&json!(200), &json!(200)]);
    assert_eq!(view["webhook_url_present"], true);
    assert_eq!(view["auth_ok"], true);
    assert!(
        !view.to_string().contains("s3cr3t"),
        "the webhook token leaked into inspection"
    );

    let status = emu.get(submitted["status_url"].as_str().unwrap()).await;
    assert_eq!(status.status(), 200);
    let result = emu.get(submitted["response_url"].as_str().unwrap()).await;
    assert_eq!(result.status(), 200);
    assert_eq!(
        result.json::<Value>().await.unwrap()["prompt"],
        "a cat #deliveries=2 #delay-ms=10"
    );
}

#[tokio::test]
async fn sync_run_answers_the_output_and_serves_its_media() {
    let emu = emulator(fast()).await;
    let resp = emu
        .post(
            "/run/fal-ai/flux/dev",
            json!({"prompt": "cat #media-bytes=100000"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let id = header(resp.headers(), "x-fal-request-id").to_owned();
    let out: Value = resp.json().await.unwrap();
    let image = &out["images"][0];
    assert_eq!(image["url"], format!("{}/media/{id}/output.png", emu.base));
    assert_eq!(image["file_size"], 100_000);

    let media = emu.get(image["url"].as_str().unwrap()).await;
    assert_eq!(media.status(), 200);
    assert_eq!(header(media.headers(), "content-type"), "image/png");
    assert_eq!(header(media.headers(), "content-length"), "100000");
    assert_eq!(
        media.bytes().await.unwrap().as_ref(),
        media_bytes_at(&id, 0, 100_000).as_slice()
    );

    let view = emu.inspect(&id).await;
    assert_eq!(
        (view["mode"].as_str(), view["status"].as_str()),
        (Some("sync"), Some("COMPLETED"))
    );
    assert_eq!(view["media_fetches"], 1);
    assert_eq!(view["input"], json!({"prompt": "cat #media-bytes=100000"}));
}

#[tokio::test]
async fn cancel_stops_a_slow_request_before_it_delivers() {
    let (emu, submitted, mut rx) =
        submitted_to_receiver("fal-ai/wan/i2v", "clip #delay-ms=2000").await;
    let id = submitted["request_id"].as_str().unwrap();
    let status = emu.get(submitted["status_url"].as_str().unwrap()).await;
    assert_eq!(status.status(), 202);
    assert_eq!(status.json::<Value>().await.unwrap()["status"], "IN_QUEUE");

    let cancel_url = submitted["cancel_url"].as_str().unwrap();
    let cancel = emu.unkeyed(Method::PUT, cancel_url).await;
    assert_answer(cancel, 202, json!({"status": "CANCELLATION_REQUESTED"})).await;
    let result = emu.get(submitted["response_url"].as_str().unwrap()).await;
    assert_answer(result, 400, json!({"detail": "Request was cancelled"})).await;
    let view = emu.inspect(id).await;
    assert_eq!(
        (view["cancelled"].as_bool(), view["status"].as_str()),
        (Some(true), Some("CANCELLED"))
    );
    assert!(rx.try_recv().is_err());

    let gone = emu
        .unkeyed(Method::PUT, "/queue/fal-ai/wan/requests/nope/cancel")
        .await;
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn cancel_of_a_completed_request_is_refused() {
    let emu = emulator(fast()).await;
    let submitted = emu
        .submit("fal-ai/flux/dev", "x #delay-ms=0 #no-webhook", None)
        .await;
    let id = submitted["request_id"].as_str().unwrap();
    emu.inspect_until(id, |v| v["status"] == "COMPLETED").await;
    let cancel_url = submitted["cancel_url"].as_str().unwrap();
    let cancel = emu.unkeyed(Method::PUT, cancel_url).await;
    assert_answer(cancel, 400, json!({"status": "ALREADY_COMPLETED"})).await;
}

#[tokio::test]
async fn cancel_fail_first_refuses_the_first_cancels_and_the_request_runs_on() {
    let emu = emulator(fast()).await;
    let submitted = emu
        .submit(
            "fal-ai/flux/dev",
            "x #delay-ms=600000 #no-webhook #cancel-fail-first=2",
            None,
        )
        .await;
    let id = submitted["request_id"].as_str().unwrap();
    let cancel_url = submitted["cancel_url"].as_str().unwrap();
    for _ in 0..2 {
        let cancel = emu.unkeyed(Method::PUT, cancel_url).await;
        assert_answer(cancel, 503, json!({"detail": "emulated cancel outage"})).await;
        assert_eq!(emu.inspect(id).await["cancelled"], false);
    }
    let cancel = emu.unkeyed(Method::PUT, cancel_url).await;
    assert_answer(cancel, 202, json!({"status": "CANCELLATION_REQUESTED"})).await;
    let view = emu.inspect(id).await;
    assert_eq!(
        (view["cancelled"].as_bool(), view["cancel_calls"].as_u64()),
        (Some(true), Some(3))
    );
}

#[tokio::test]
async fn media_fail_first_fails_once_then_serves() {
    let emu = emulator(fast()).await;
    let out: Value = emu
        .post(
            "/run/fal-ai/flux/dev",
            json!({"prompt": "#media-fail-first=1 #media-type=image/webp"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = out["images"][0]["url"].as_str().unwrap();
    assert!(url.ends_with("/output.webp"));
    assert_eq!(emu.get(url).await.status(), 500);
    let second = emu.get(url).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.bytes().await.unwrap().len(), 4096);
}

#[tokio::test]
async fn queue_status_503_queues_nothing_and_leaves_sync_alone() {
    let emu = emulator(fast()).await;
    let prompt = json!({"prompt": "x #queue-status=503"});
    let resp = emu.post("/queue/fal-ai/flux/dev", prompt.clone()).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        header(resp.headers(), "x-fal-error-type"),
        "runner_scheduling_failure"
    );
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error_type"],
        "runner_scheduling_failure"
    );
    assert_eq!(emu.post("/run/fal-ai/flux/dev", prompt).await.status(), 200);
}

#[tokio::test]
async fn an_unreadable_submission_answer_still_runs_and_delivers_the_request() {
    let emu = emulator(fast()).await;
    let (hook, mut rx) = receiver(&[]).await;
    let answer = emu
        .submit(
            "fal-ai/flux/dev",
            "#queue-unreadable #delay-ms=0",
            Some(&hook),
        )
        .await;
    assert_eq!(answer, json!({"status": "IN_QUEUE"}));
    let delivered: Value = serde_json::from_slice(&next(&mut rx).await.body).unwrap();
    assert_eq!(delivered["status"], "OK", "{delivered}");
}

#[tokio::test]
async fn failed_deliveries_are_retried_and_recorded() {
    let emu = emulator(fast()).await;
    let (hook, mut rx) = receiver(&[500, 503]).await;
    let id = emu.submit_id("fal-ai/flux/dev", "#delay-ms=0", &hook).await;
    for _ in 0..3 {
        next(&mut rx).await;
    }
    let view = emu
        .inspect_until(&id, |v| v["deliveries"].as_array().unwrap().len() == 3)
        .await;
    let attempts: Vec<(u64, u64)> = view["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["http_status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, 500), (2, 503), (3, 200)]);
}

#[tokio::test]
async fn concurrent_deliveries_leave_together() {
    let emu = emulator(fast()).await;
    let (hook, mut rx) = slow_receiver(&[], Duration::from_millis(600)).await;
    let prompt = "#deliveries=3 #concurrent #payload-null #delay-ms=0";
    let submitted = emu.submit("fal-ai/flux/dev", prompt, Some(&hook)).await;
    let first = next(&mut rx).await;
    let started = tokio::time::Instant::now();
    for _ in 0..2 {
        next(&mut rx).await;
    }
    // Sequential deliveries would wait for each 600 ms answer.
    assert!(started.elapsed() < Duration::from_millis(400));
    let body: Value = serde_json::from_slice(&first.body).unwrap();
    assert!(body["payload"].is_null());
    assert_eq!(body["payload_error"], "Output could not be serialized");
    let result = emu.get(submitted["response_url"].as_str().unwrap()).await;
    assert_eq!(result.status(), 200);
}

#[tokio::test]
async fn early_delivery_arrives_before_the_submit_answer() {
    let (_emu, _, mut rx) = submitted_to_receiver("fal-ai/flux/dev", "#early #delay-ms=0").await;
    assert!(rx.try_recv().is_ok(), "the delivery should already be in");
}

#[tokio::test]
async fn error_request_reports_error_everywhere() {
    let (emu, submitted, mut rx) =
        submitted_to_receiver("fal-ai/flux/dev", "#error #delay-ms=0").await;
    let body: Value = serde_json::from_slice(&next(&mut rx).await.body).unwrap();
    assert_eq!(
        (body["status"].as_str(), body["error"].as_str()),
        (Some("ERROR"), Some("Invalid status code: 422"))
    );
    assert_eq!(
        emu.get(submitted["status_url"].as_str().unwrap())
            .await
            .json::<Value>()
            .await
            .unwrap()["status"],
        "COMPLETED"
    );
    let result = emu.get(submitted["response_url"].as_str().unwrap()).await;
    assert_eq!(result.status(), 422);
    assert_eq!(
        result.json::<Value>().await.unwrap()["detail"][0]["type"],
        "value_error"
    );
    assert_eq!(
        emu.post("/run/fal-ai/flux/dev", json!({"prompt": "#error"}))
            .await
            .status(),
        422
    );
}

#[tokio::test]
async fn non_loopback_webhooks_are_refused_unsent() {
    // Tests never aim at a routable address, not even to watch it refused. 0.0.0.0 is not a loopback address to
    // the emulator's check, yet a connection to it stays on this host (Linux connects it to 127.0.0.1): a trap
    // listening there on the same port sees the delivery if the check ever lets it through.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let port = trap.local_addr().unwrap().port();
    let hook =
        format!("http://0.0.0.0:{port}/hook?job_id=00000000-0000-4000-a000-000000000001&token=x");
    let emu = emulator(fast()).await;
    let id = emu.submit_id("fal-ai/flux/dev", "#delay-ms=0", &hook).await;
    let view = emu
        .inspect_until(&id, |v| !v["deliveries"].as_array().unwrap().is_empty())
        .await;
    let attempt = &view["deliveries"][0];
    assert!(attempt["http_status"].is_null());
    assert!(attempt["error"].as_str().unwrap().starts_with("refused"));
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the refused webhook reached the trap"
    );
}

#[tokio::test]
async fn configured_key_is_required_for_model_calls_only() {
    let emu = emulator(Settings {
        key: Some("test-key".into()),
        ..fast()
    })
    .await;
    let denied = emu
        .http
        .post(format!("{}/run/fal-ai/flux/dev", emu.base))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let id = header(denied.headers(), "x-fal-request-id").to_owned();
    assert_eq!(
        denied.json::<Value>().await.unwrap(),
        json!({"detail": "Invalid authorization", "error_type": "unauthorized"})
    );
    assert_eq!(emu.inspect(&id).await["auth_ok"], false);
    let ok = emu
        .post("/run/fal-ai/flux/dev", json!({"prompt": "x"}))
        .await;
    assert_eq!(ok.status(), 200);
    let url = ok.json::<Value>().await.unwrap()["images"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(emu.http.get(url).send().await.unwrap().status(), 200);
    let status_url = format!("/queue/fal-ai/flux/requests/{id}/status");
    let status = emu.unkeyed(Method::GET, &status_url).await;
    assert_eq!(status.status(), 401);
}

#[tokio::test]
async fn sync_faults_fail_first_and_time_out() {
    let emu = emulator(fast()).await;
    let run = |prompt: &str| emu.post("/run/fal-ai/flux/dev", json!({ "prompt": prompt }));
    let flaky = "#run-fail-first=1 unique-41";
    assert_eq!(run(flaky).await.status(), 503);
    assert_eq!(run(flaky).await.status(), 200);
    assert_eq!(run("#run-status=429").await.status(), 429);

    // The header is a time-to-start deadline: a run that cannot start by then is refused, one that started ends.
    let with_deadline = |prompt: &'static str| {
        emu.http
            .post(format!("{}/run/fal-ai/flux/dev", emu.base))
            .header("x-fal-request-timeout", "0.05")
            .json(&json!({ "prompt": prompt }))
            .send()
    };
    let late = with_deadline("#start-delay-ms=300").await.unwrap();
    assert_eq!(late.status(), 504);
    assert_eq!(header(late.headers(), "x-fal-request-timeout-type"), "user");
    let long = with_deadline("#run-delay-ms=300").await.unwrap();
    assert_eq!(long.status(), 200);
}

#[tokio::test]
async fn housekeeping_endpoints_answer() {
    let emu = emulator(fast()).await;
    let health = emu.get(&format!("{}/_emulator/health", emu.base)).await;
    assert_eq!(health.text().await.unwrap(), "ok");
    assert_eq!(
        emu.get(&format!("{}/_emulator/requests/nope", emu.base))
            .await
            .status(),
        404
    );
    let unknown = emu
        .get(&format!(
            "{}/queue/fal-ai/flux/requests/nope/status",
            emu.base
        ))
        .await;
    assert_answer(unknown, 404, json!({"detail": "Request not found"})).await;
    let post_to_request = emu
        .post("/queue/fal-ai/flux/requests/nope", json!({}))
        .await;
    assert_eq!(post_to_request.status(), 405);
    assert_eq!(
        emu.get(&format!("{}/media/nope/output.png", emu.base))
            .await
            .status(),
        404
    );
}
