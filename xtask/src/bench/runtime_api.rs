//! A minimal Lambda runtime API on 127.0.0.1, enough to start a function binary as Lambda does: the runtime's
//! invocation/next (arrival recorded; an event served when one is queued, else held open) and the response and
//! error posts. No Extensions API: the functions register no extension.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;

/// What the function posted for an invocation (or for its init).
#[derive(Debug, Clone)]
pub struct Posted {
    pub request_id: String,
    /// `response`, `error` or `init-error`.
    pub kind: &'static str,
    pub body: Bytes,
    /// When it was posted.
    pub at: Instant,
    /// When the invocation's event was handed to the function (`None` for an init error).
    pub served_at: Option<Instant>,
}

struct Shared {
    /// When the first `GET /runtime/invocation/next` arrived: the end of init.
    first_next: watch::Sender<Option<Instant>>,
    events: Mutex<VecDeque<(String, Vec<u8>)>>,
    /// When each invocation's event was handed out.
    served: Mutex<HashMap<String, Instant>>,
    posted: watch::Sender<Vec<Posted>>,
    /// Flipped on drop, so held-open requests end and their connections close.
    shutdown: watch::Sender<bool>,
}

pub struct RuntimeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the runtime API")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            first_next: watch::channel(None).0,
            events: Mutex::new(VecDeque::new()),
            served: Mutex::new(HashMap::new()),
            posted: watch::channel(Vec::new()).0,
            shutdown: watch::channel(false).0,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(invocation_next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/{kind}",
                post(invocation_result),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let mut stop = shared.shutdown.subscribe();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(RuntimeApi {
            addr,
            shared,
            server,
        })
    }

    /// Queues an event for the next `invocation/next`.
    pub fn push_event(&self, request_id: &str, event: Vec<u8>) {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((request_id.to_owned(), event));
    }

    /// When the first `invocation/next` arrived, waiting for it up to `timeout`.
    pub async fn first_next(&self, timeout: Duration) -> anyhow::Result<Instant> {
        let mut rx = self.shared.first_next.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(at)) => Ok(at.expect("waited for Some")),
            Ok(Err(_)) => bail!("runtime API closed"),
            Err(_) => bail!("no invocation/next within {timeout:?}"),
        }
    }

    /// The first response or error posted for `request_id`, or an init error, waiting up to `timeout`.
    pub async fn posted(&self, request_id: &str, timeout: Duration) -> anyhow::Result<Posted> {
        let mut rx = self.shared.posted.subscribe();
        let found = |all: &Vec<Posted>| {
            all.iter()
                .find(|p| p.request_id == request_id || p.kind == "init-error")
                .cloned()
        };
        match tokio::time::timeout(timeout, rx.wait_for(|all| found(all).is_some())).await {
            Ok(Ok(all)) => Ok(found(&all).expect("waited for it")),
            Ok(Err(_)) => bail!("runtime API closed"),
            Err(_) => bail!("no response for invocation {request_id} within {timeout:?}"),
        }
    }

    /// An init error, if the function reported one.
    pub fn init_error(&self) -> Option<Posted> {
        self.shared
            .posted
            .borrow()
            .iter()
            .find(|p| p.kind == "init-error")
            .cloned()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        // Graceful shutdown waits for open connections; a killed function's are already gone, and nothing else
        // needs this server once its owner is done.
        self.server.abort();
    }
}

async fn invocation_next(State(shared): State<Arc<Shared>>) -> Response {
    let now = Instant::now();
    shared.first_next.send_if_modified(|at| {
        if at.is_none() {
            *at = Some(now);
            true
        } else {
            false
        }
    });
    let event = shared
        .events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    let Some((request_id, body)) = event else {
        return hold(&shared).await;
    };
    shared
        .served
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(request_id.clone(), Instant::now());
    let deadline_ms = chrono::Utc::now().timestamp_millis() + 15 * 60 * 1000;
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("lambda-runtime-aws-request-id", request_id);
    put("lambda-runtime-deadline-ms", deadline_ms.to_string());
    put(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
    );
    put("content-type", "application/json".into());
    (StatusCode::OK, headers, body).into_response()
}

async fn hold(shared: &Shared) -> Response {
    let mut stop = shared.shutdown.subscribe();
    let _ = stop.wait_for(|s| *s).await;
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

fn record(shared: &Shared, request_id: String, kind: &'static str, body: Bytes) -> Response {
    let at = Instant::now();
    let served_at = shared
        .served
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&request_id)
        .copied();
    shared.posted.send_modify(|all| {
        all.push(Posted {
            request_id,
            kind,
            body,
            at,
            served_at,
        })
    });
    (StatusCode::ACCEPTED, r#"{"status":"OK"}"#).into_response()
}

/// `invocation/{id}/response` or `invocation/{id}/error`: what the function posted for an invocation.
async fn invocation_result(
    State(shared): State<Arc<Shared>>,
    Path((id, kind)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let kind = match kind.as_str() {
        "response" => "response",
        "error" => "error",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    record(&shared, id, kind, body)
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    record(&shared, String::new(), "init-error", body)
}

/// A POST as API Gateway's HTTP API (payload 2.0) and function URLs hand it to a function: `path` with its raw
/// query, the headers (a repeated one already joined with commas), a UTF-8 body.
pub fn post_event(
    domain: &str,
    path: &str,
    raw_query: &str,
    headers: serde_json::Map<String, serde_json::Value>,
    body: &str,
    request_id: &str,
) -> serde_json::Value {
    let query: serde_json::Map<String, serde_json::Value> =
        url::form_urlencoded::parse(raw_query.as_bytes())
            .map(|(k, v)| (k.into_owned(), serde_json::json!(v)))
            .collect();
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.as_str())
        .unwrap_or("bench")
        .to_owned();
    let now = chrono::Utc::now();
    serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": raw_query,
        "headers": headers,
        "queryStringParameters": query,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "bench",
            "domainName": domain,
            "domainPrefix": "bench",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": user_agent,
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S +0000").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "body": body,
        "isBase64Encoded": false,
    })
}
