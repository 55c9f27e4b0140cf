//! Waiting for a part the stack started to answer, and asking a running one whether it still does.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::procs::{self, ProcRecord};

/// A GET that tells whether a part answers: its URL and which statuses count as ready.
pub struct Probe {
    pub url: String,
    pub ready: fn(reqwest::StatusCode) -> bool,
}

/// Any answer but a server error: the part is up even if this URL is not one it serves.
pub fn below_500(s: reqwest::StatusCode) -> bool {
    s.as_u16() < 500
}

pub fn success(s: reqwest::StatusCode) -> bool {
    s.is_success()
}

impl Probe {
    /// One GET: whether it answers ready now.
    pub async fn answers(&self, http: &reqwest::Client) -> bool {
        matches!(http.get(&self.url).send().await, Ok(r) if (self.ready)(r.status()))
    }

    /// Polls until the answer is ready; fails early if `proc` died, and after `timeout`.
    pub async fn wait(
        &self,
        http: &reqwest::Client,
        proc: &ProcRecord,
        timeout: Duration,
    ) -> anyhow::Result<reqwest::StatusCode> {
        let url = &self.url;
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            if !procs::is_ours(proc.pid, proc.start_ticks) {
                bail!(
                    "{} exited before answering {url}; last lines of {}:\n{}",
                    proc.name,
                    proc.log,
                    log_tail(&proc.log, 30)
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} did not answer {url} within {timeout:?} ({last}); last lines of {}:\n{}",
                    proc.name,
                    proc.log,
                    log_tail(&proc.log, 30)
                );
            }
            match http
                .get(url)
                .timeout(left.min(Duration::from_secs(120)))
                .send()
                .await
            {
                Ok(r) if (self.ready)(r.status()) => return Ok(r.status()),
                Ok(r) => last = format!("last answer {}", r.status()),
                Err(e) => last = format!("last error: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}
