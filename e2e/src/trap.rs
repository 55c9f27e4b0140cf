//! A loopback HTTP listener of the test that records every request it gets and answers 200 `{}`: where planted
//! URLs point (nothing may reach it) and where the emulator delivers a webhook the test captures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::stack_var;
use crate::wait_until;

/// One request the trap got.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Captured {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("captured request has no {name} header: {:?}", self.headers))
    }

    /// Only fal's signature headers (and the content type), ready to replay.
    pub fn fal_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-fal-webhook-") || k == "content-type")
            .cloned()
            .collect()
    }

    /// [`Self::fal_headers`] with one header's value replaced.
    pub fn with_header(&self, name: &str, value: String) -> Vec<(String, String)> {
        self.fal_headers()
            .into_iter()
            .map(|(k, v)| {
                if k == name {
                    (k, value.clone())
                } else {
                    (k, v)
                }
            })
            .collect()
    }

    /// Whether it carries a provider's key: fal's, or Replicate's API token.
    pub fn carries_fal_key(&self) -> bool {
        let keys = [stack_var("FAL_KEY"), stack_var("REPLICATE_API_TOKEN")];
        self.headers
            .iter()
            .any(|(_, v)| keys.iter().any(|k| v.contains(k.as_str())))
    }
}

/// The listener; it stops when dropped.
pub struct Trap {
    base: String,
    seen: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Trap {
    pub async fn start() -> Trap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let read = tokio::time::timeout(Duration::from_secs(10), serve_one(stream));
                    if let Ok(Some(s)) = read.await {
                        log.lock().unwrap().push(s);
                    }
                });
            }
        });
        Trap { base, seen, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn seen(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }

    /// No planted URL was requested, above all not with the FAL key.
    pub fn assert_untouched(&self) {
        let seen = self.seen();
        let lines = |keyed: bool| -> Vec<String> {
            seen.iter()
                .filter(|s| !keyed || s.carries_fal_key())
                .map(|s| format!("{} {}", s.method, s.path))
                .collect()
        };
        assert!(
            lines(true).is_empty(),
            "a provider's key was sent to a planted URL: {:?}",
            lines(true)
        );
        assert!(
            seen.is_empty(),
            "a planted URL was requested: {:?}",
            lines(false)
        );
    }

    /// The first request the trap gets, waited for up to `timeout`.
    pub async fn first(&self, timeout: Duration) -> Captured {
        wait_until("a request at the trap", timeout, async || {
            !self.seen().is_empty()
        })
        .await;
        self.seen().remove(0)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (content-length framed), answers 200 `{}` and closes.
async fn serve_one(mut stream: tokio::net::TcpStream) -> Option<Captured> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split_whitespace();
    let (method, path) = (
        request_line.next()?.to_owned(),
        request_line.next()?.to_owned(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => body.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        .await;
    let _ = stream.shutdown().await;
    Some(Captured {
        method,
        path,
        headers,
        body,
    })
}
