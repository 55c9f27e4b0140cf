//! The providers' side: the emulator's records of a request and its deliveries (fal's and Replicate's,
//! [`Provider`]), webhook credentials as fal-image makes them, real emulator-signed deliveries, and posts to
//! fal-webhook as fal (or a forger) makes them.

use std::time::{Duration, Instant};

use gen_pipeline::fal::signature::HEADER_REQUEST_ID;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::client::{http, json_of, prompt};
use crate::common::stack_var;
use crate::trap::{Captured, Trap};

/// The emulator's tries per delivery.
pub const FAL_TRIES: usize = 10;

/// The emulator's record of a fal request.
pub async fn inspect(request_id: &str) -> Value {
    Provider::Fal.request(request_id).await
}

/// The emulator's records of the fal requests whose webhook URL names job `job_id`: a request the job never
/// recorded (its submission was given up on) is found this way.
pub async fn requests_for_job(job_id: &str) -> Vec<Value> {
    let url = format!(
        "{}/_emulator/requests?job_id={job_id}",
        stack_var("FAL_EMULATOR_URL")
    );
    match json_of(http().get(url)).await {
        Value::Array(records) => records,
        other => panic!("not a list of requests: {other}"),
    }
}

/// Polls the emulator's record every 200 ms until `done` holds for it; returns that record.
async fn wait_record(
    provider: Provider,
    request_id: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let client = http();
    let started = Instant::now();
    loop {
        let record = json_of(client.get(provider.record_url(request_id))).await;
        if done(&record) {
            return record;
        }
        assert!(
            started.elapsed() < timeout,
            "{what} of {request_id} after {timeout:?}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn attempts(record: &Value) -> Vec<Value> {
    record["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Waits until the emulator has made `n` deliveries of a fal request that got an answer, and returns them.
pub async fn answered_deliveries(request_id: &str, n: usize, timeout: Duration) -> Vec<Value> {
    Provider::Fal
        .answered_deliveries(request_id, n, timeout)
        .await
}

fn answered(record: &Value) -> Vec<Value> {
    attempts(record)
        .into_iter()
        .filter(|d| !d["http_status"].is_null())
        .collect()
}

pub fn is_2xx(attempt: &Value) -> bool {
    attempt["http_status"]
        .as_u64()
        .is_some_and(|s| (200..300).contains(&s))
}

/// Whether every delivery `1..=n` among the attempts got a 2xx answer or used up its tries.
pub fn settled(attempts: &[Value], n: u64) -> bool {
    (1..=n).all(|d| {
        let of_d: Vec<&Value> = attempts.iter().filter(|a| a["delivery"] == d).collect();
        of_d.iter().any(|a| is_2xx(a)) || of_d.len() >= FAL_TRIES
    })
}

/// Waits until every one of a fal request's deliveries `1..=n` got a 2xx answer (or used up its tries); returns all
/// attempts.
pub async fn settled_deliveries(request_id: &str, n: u64, timeout: Duration) -> Vec<Value> {
    Provider::Fal
        .settled_deliveries(request_id, n, timeout)
        .await
}

/// A provider the stack runs models on, as a test drives it: its models, the emulator's record of a request and
/// its deliveries. The suites run their provider-facing tests for each ([`for_each_provider!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Fal,
    Replicate,
}

impl Provider {
    /// The stack's model of this provider on its queue route (`fal-webhook`, `replicate-webhook`).
    pub fn queued_model(self) -> String {
        match self {
            Provider::Fal => crate::client::async_model(),
            Provider::Replicate => stack_var("REPLICATE_MODEL_ID"),
        }
    }

    /// The stack's image model of this provider on its sync route.
    pub fn sync_model(self) -> String {
        match self {
            Provider::Fal => crate::client::sync_model(),
            Provider::Replicate => stack_var("REPLICATE_SYNC_MODEL_ID"),
        }
    }

    /// A queued job of the caller's on this provider: (job id, the provider's request id).
    pub async fn queued(self, jwt: &str, text: &str, directives: &str) -> (String, String) {
        self.queued_with(jwt, text, directives, json!({})).await
    }

    /// [`Self::queued`] with more fields in the request body (`metadata`, …).
    pub async fn queued_with(
        self,
        jwt: &str,
        text: &str,
        directives: &str,
        extra: Value,
    ) -> (String, String) {
        let mut body =
            json!({"prompt": prompt(text, directives), "apiModelId": self.queued_model()});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        crate::client::submit_queued(jwt, &body).await
    }

    /// Where the emulator shows a request as it holds it, with its deliveries and media fetches.
    pub fn record_url(self, request_id: &str) -> String {
        match self {
            Provider::Fal => format!(
                "{}/_emulator/requests/{request_id}",
                stack_var("FAL_EMULATOR_URL")
            ),
            Provider::Replicate => format!(
                "{}/_emulator/predictions/{request_id}",
                stack_var("REPLICATE_EMULATOR_URL")
            ),
        }
    }

    /// The request as the emulator holds it.
    pub async fn request(self, request_id: &str) -> Value {
        json_of(http().get(self.record_url(request_id))).await
    }

    /// Whether the provider has finished the request (successfully).
    pub async fn finished(self, request_id: &str) -> bool {
        let r = self.request(request_id).await;
        match self {
            Provider::Fal => r["status"] == "COMPLETED",
            Provider::Replicate => r["status"] == "succeeded",
        }
    }

    /// Whether the provider saw the request cancelled.
    pub async fn cancelled(self, request_id: &str) -> bool {
        let r = self.request(request_id).await;
        match self {
            Provider::Fal => r["cancelled"] == true,
            Provider::Replicate => r["status"] == "canceled",
        }
    }

    /// See [`settled_deliveries`].
    pub async fn settled_deliveries(
        self,
        request_id: &str,
        n: u64,
        timeout: Duration,
    ) -> Vec<Value> {
        let what = "deliveries not settled";
        attempts(
            &wait_record(self, request_id, timeout, what, |r| {
                settled(&attempts(r), n)
            })
            .await,
        )
    }

    /// See [`answered_deliveries`].
    pub async fn answered_deliveries(self, id: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let what = format!("fewer than {n} answered deliveries");
        answered(&wait_record(self, id, timeout, &what, |r| answered(r).len() >= n).await)
    }
}

/// Runs a test written as `async fn name(provider: Provider)` once per provider: `name::fal` and
/// `name::replicate`.
#[macro_export]
macro_rules! for_each_provider {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn fal() {
                super::$name($crate::Provider::Fal).await
            }

            #[tokio::test]
            async fn replicate() {
                super::$name($crate::Provider::Replicate).await
            }
        }
    )+};
}

/// The credential query fal-image puts on a job's webhook URL: `job_id=<id>&token=<token>`, the token being
/// [`job_token`]. `secret` is the deployment's `FAL_WEBHOOK_SECRET`.
pub fn webhook_query(secret: &str, job_id: Uuid) -> Vec<(&'static str, String)> {
    vec![
        ("job_id", job_id.to_string()),
        ("token", job_token(secret, job_id)),
    ]
}

/// A job's webhook token, exactly as fal-image makes it: lowercase hex HMAC-SHA256(secret, hyphenated job id).
pub fn job_token(secret: &str, job_id: Uuid) -> String {
    gen_pipeline::webhook_auth::job_token(&secrecy::SecretString::from(secret), job_id)
}

/// The stack's job's own webhook credential, `job_id=…&token=…`, as fal-image puts it on the job's URL.
pub fn token_query(job_id: &str) -> Vec<(&'static str, String)> {
    webhook_query(
        &stack_var("FAL_WEBHOOK_SECRET"),
        Uuid::parse_str(job_id).unwrap(),
    )
}

/// The stack's job's webhook token alone.
pub fn token_of(job_id: &str) -> String {
    job_token(
        &stack_var("FAL_WEBHOOK_SECRET"),
        Uuid::parse_str(job_id).unwrap(),
    )
}

/// A real, fresh, emulator-signed delivery: the emulator is asked (with the FAL key, as fal's account holder
/// would) to run a request of its own whose webhook is a trap of this test, which records it and answers 200.
pub async fn capture_delivery() -> Captured {
    let trap = Trap::start().await;
    let mut url = url::Url::parse(&format!(
        "{}/queue/fal-ai/e2e/capture",
        stack_var("FAL_EMULATOR_URL")
    ))
    .unwrap();
    url.query_pairs_mut()
        .append_pair("fal_webhook", &trap.url("/hook"));
    let r = http()
        .post(url)
        .header("authorization", format!("Key {}", stack_var("FAL_KEY")))
        .json(&json!({"prompt": prompt("capture", "")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "emulator submit refused");
    let answer: Value = r.json().await.unwrap();
    let request_id = answer["request_id"].as_str().unwrap().to_owned();
    let captured = trap.first(Duration::from_secs(15)).await;
    assert_eq!(
        (captured.method.as_str(), captured.path.as_str()),
        ("POST", "/hook"),
        "capture"
    );
    assert_eq!(captured.header(HEADER_REQUEST_ID), request_id);
    let body: Value = serde_json::from_slice(&captured.body).expect("captured body is JSON");
    assert_eq!(body["request_id"], request_id.as_str());
    captured
}

/// POSTs a captured delivery (fal's headers and raw body, unchanged) to fal-webhook with this query.
pub async fn replay<K: AsRef<str>, V: AsRef<str>>(
    query: &[(K, V)],
    delivery: &Captured,
) -> (u16, String) {
    post_webhook(query, &delivery.fal_headers(), delivery.body.clone()).await
}

/// POSTs to the webhook function URL with the given query, headers and raw body; returns status and body text.
pub async fn post_webhook<K: AsRef<str>, V: AsRef<str>>(
    query: &[(K, V)],
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut url = url::Url::parse(&stack_var("FAL_WEBHOOK_URL")).unwrap();
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k.as_ref(), v.as_ref());
        }
    }
    let mut req = http().post(url).body(body);
    if !headers.iter().any(|(k, _)| k == "content-type") {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}
