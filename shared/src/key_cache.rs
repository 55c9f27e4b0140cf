//! A cached key set fetched from a URL (a JWKS): fresh for a while, a stale copy kept when a refetch fails, and
//! one refetch when no cached key fits (key rotation), at most once a minute so forged requests cannot make us
//! hammer the key endpoint. One fetch at a time, never under the lock readers take, and while fetches fail the
//! next waits longer (1 s doubling to a minute). Used for fal's webhook keys and the Supabase project's JWKS.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use url::Url;

const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Cached<K> {
    keys: K,
    fetched_at: Instant,
}

/// What the cache knows; held only for short, await-free sections.
struct State<K> {
    cached: Option<Cached<K>>,
    last_attempt: Option<Instant>,
    /// Fetches failed in a row since the last success.
    failures: u32,
}

impl<K: Clone> State<K> {
    fn fresh(&self, fresh_for: Duration) -> Option<(K, Served)> {
        self.cached
            .as_ref()
            .filter(|c| c.fetched_at.elapsed() < fresh_for)
            .map(|c| c.served(false))
    }

    fn any(&self) -> Option<(K, Served)> {
        self.cached.as_ref().map(|c| c.served(false))
    }
}

impl<K: Clone> Cached<K> {
    fn served(&self, just_fetched: bool) -> (K, Served) {
        let served = Served {
            just_fetched,
            fetched_at: self.fetched_at,
        };
        (self.keys.clone(), served)
    }
}

/// Which copy of the keys [`KeySetCache::keys`] handed out: a key it lacks is looked for with
/// [`KeySetCache::refetch`] of it, which answers with a newer copy when there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// Fetched by this very call: a key it lacks is not worth a refetch.
    pub just_fetched: bool,
    fetched_at: Instant,
}

/// Why a fetch is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// No key cached, or the cached ones are no longer fresh.
    Expired,
    /// No cached key fits a request: perhaps the keys were rotated (or the request is forged).
    Rotation,
}

/// The wait after `failures` failed fetches in a row: none after a success, then 1 s doubling up to a minute.
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => FIRST_BACKOFF
            .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
            .min(MAX_BACKOFF),
    }
}

/// Whether a fetch may start now, given the failures in a row and the time since the last attempt.
fn may_fetch(reason: Reason, failures: u32, since_last_attempt: Option<Duration>) -> bool {
    let Some(since) = since_last_attempt else {
        return true;
    };
    let wait = match reason {
        Reason::Expired => backoff(failures),
        Reason::Rotation => backoff(failures).max(MIN_REFETCH_INTERVAL),
    };
    since >= wait
}

/// Turns a fetched body into the keys kept (an error when it is not a key set the caller can use).
pub type ParseKeys<K> = fn(&[u8]) -> Result<K, String>;

pub struct KeySetCache<K> {
    http: reqwest::Client,
    url: Url,
    fresh_for: Duration,
    parse: ParseKeys<K>,
    state: Mutex<State<K>>,
    /// Held across the network fetch (single flight); readers of the cached keys never wait for it.
    fetching: tokio::sync::Mutex<()>,
}

impl<K: Clone> KeySetCache<K> {
    pub fn new(http: reqwest::Client, url: Url, fresh_for: Duration, parse: ParseKeys<K>) -> Self {
        KeySetCache {
            http,
            url,
            fresh_for,
            parse,
            state: Mutex::new(State {
                cached: None,
                last_attempt: None,
                failures: 0,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<K>> {
        // A panic elsewhere cannot leave the state half-written: every section assigns whole fields.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached keys, refreshed when no longer fresh, and which copy they are; an error (the reason, without the
    /// URL) when there are none to serve.
    pub async fn keys(&self) -> Result<(K, Served), String> {
        let stale = {
            let state = self.state();
            if let Some(fresh) = state.fresh(self.fresh_for) {
                return Ok(fresh);
            }
            state.any()
        };
        let _flight = match stale {
            // A stale copy serves while someone else refreshes it.
            Some(stale) => match self.fetching.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(stale),
            },
            // Nothing to serve: wait for the fetch in flight, then decide again.
            None => self.fetching.lock().await,
        };
        {
            let mut state = self.state();
            if let Some(fresh) = state.fresh(self.fresh_for) {
                return Ok(fresh);
            }
            let since = state.last_attempt.map(|t| t.elapsed());
            if !may_fetch(Reason::Expired, state.failures, since) {
                return state
                    .any()
                    .ok_or_else(|| format!("backing off after {} failed fetches", state.failures));
            }
            state.last_attempt = Some(Instant::now());
        }
        match self.fetch_and_store().await {
            Ok(fetched) => Ok(fetched),
            Err(e) => match self.state().any() {
                Some(stale) => {
                    tracing::warn!(error = %e, "key set refresh failed; using the cached keys");
                    Ok(stale)
                }
                None => Err(e),
            },
        }
    }

    /// The keys for a key that the `served` copy lacks: a newer copy when one was stored since (a refresh that
    /// was in flight is waited for: it may be what brings a rotated key), else one refetch, unless one was
    /// attempted within the last minute.
    pub async fn refetch(&self, served: Served) -> Option<K> {
        let _flight = self.fetching.lock().await;
        {
            let mut state = self.state();
            if let Some(c) = &state.cached
                && c.fetched_at != served.fetched_at
            {
                return Some(c.keys.clone());
            }
            let since = state.last_attempt.map(|t| t.elapsed());
            if !may_fetch(Reason::Rotation, state.failures, since) {
                return None;
            }
            state.last_attempt = Some(Instant::now());
        }
        match self.fetch_and_store().await {
            Ok((keys, _)) => Some(keys),
            Err(e) => {
                tracing::warn!(error = %e, "key set refetch failed");
                None
            }
        }
    }

    /// Fetches (the caller holds `fetching`) and records the outcome: new keys, or one more failure.
    async fn fetch_and_store(&self) -> Result<(K, Served), String> {
        let fetched = self.fetch().await;
        let mut state = self.state();
        match fetched {
            Ok(keys) => {
                let cached = Cached {
                    keys,
                    fetched_at: Instant::now(),
                };
                let served = cached.served(true);
                state.cached = Some(cached);
                state.failures = 0;
                Ok(served)
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<K, String> {
        let response = self
            .http
            .get(self.url.clone())
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("key endpoint answered {}", response.status()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| e.without_url().to_string())?;
        (self.parse)(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn failed_fetches_back_off_exponentially_up_to_a_minute() {
        let secs = |n| backoff(n).as_secs();
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7, 8].map(secs),
            [1, 2, 4, 8, 16, 32, 60, 60]
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);

        let s = Duration::from_secs;
        assert!(may_fetch(Reason::Expired, 0, None), "never fetched");
        assert!(
            may_fetch(Reason::Expired, 0, Some(Duration::ZERO)),
            "after a success"
        );
        assert!(!may_fetch(
            Reason::Expired,
            1,
            Some(Duration::from_millis(999))
        ));
        assert!(may_fetch(Reason::Expired, 1, Some(s(1))));
        assert!(!may_fetch(Reason::Expired, 4, Some(s(7))));
        assert!(may_fetch(Reason::Expired, 4, Some(s(8))));
        assert!(!may_fetch(Reason::Expired, 30, Some(s(59))));
        assert!(may_fetch(Reason::Expired, 30, Some(s(60))));
    }

    #[test]
    fn a_rotation_refetch_waits_a_minute_whatever_the_backoff() {
        let s = Duration::from_secs;
        assert!(may_fetch(Reason::Rotation, 0, None));
        assert!(!may_fetch(Reason::Rotation, 0, Some(s(59))));
        assert!(may_fetch(Reason::Rotation, 0, Some(s(60))));
        assert!(!may_fetch(Reason::Rotation, 1, Some(s(30))));
        assert!(may_fetch(Reason::Rotation, 30, Some(s(60))));
    }

    /// A loopback JWKS endpoint that counts requests and answers each with `response` (or never, when `None`).
    async fn endpoint(response: Option<&'static str>) -> (Url, Arc<AtomicUsize>) {
        endpoint_after(response, Duration::ZERO).await
    }

    /// [`endpoint`], answering `delay` after each request.
    async fn endpoint_after(
        response: Option<&'static str>,
        delay: Duration,
    ) -> (Url, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    match response {
                        Some(r) => {
                            let _ = conn.write_all(r.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        (url, hits)
    }

    const FRESH_FOR: Duration = Duration::from_secs(3600);

    fn count(body: &[u8]) -> Result<usize, String> {
        Ok(body.len())
    }

    fn cache(url: Url) -> KeySetCache<usize> {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        KeySetCache::new(http, url, FRESH_FOR, count)
    }

    #[tokio::test]
    async fn a_down_endpoint_is_not_refetched_by_every_delivery() {
        let (url, hits) = endpoint(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ))
        .await;
        let c = cache(url);
        for _ in 0..5 {
            assert!(c.keys().await.is_err());
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "one fetch, then backing off"
        );
        assert_eq!(c.state().failures, 1);
    }

    /// A cache on `url` holding `stale` keys no longer fresh, and a reader refreshing them, once its fetch has
    /// reached the endpoint (`hits`).
    async fn refreshing_from_stale(
        url: Url,
        stale: usize,
        hits: &AtomicUsize,
    ) -> (
        Arc<KeySetCache<usize>>,
        tokio::task::JoinHandle<Result<(usize, Served), String>>,
    ) {
        let c = Arc::new(cache(url));
        c.state().cached = Some(Cached {
            keys: stale,
            fetched_at: Instant::now()
                .checked_sub(FRESH_FOR + Duration::from_secs(1))
                .expect("the clock reaches a day back"),
        });
        let refreshing = tokio::spawn({
            let c = c.clone();
            async move { c.keys().await }
        });
        while hits.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (c, refreshing)
    }

    #[tokio::test]
    async fn stale_keys_serve_at_once_while_a_refresh_hangs() {
        let (url, hits) = endpoint(None).await;
        let stale = 7usize;
        let (c, refreshing) = refreshing_from_stale(url, stale, &hits).await;
        let (keys, served) = tokio::time::timeout(Duration::from_millis(500), c.keys())
            .await
            .expect("a reader does not wait behind the fetch")
            .unwrap();
        assert!(!served.just_fetched);
        assert_eq!(keys, stale);
        assert!(
            !refreshing.is_finished(),
            "the refresh is still waiting for the endpoint"
        );
        refreshing.abort();
    }

    /// A rotated key's refetch that finds a refresh in flight waits for it and takes its keys, rather than
    /// refusing the token with the stale set: the refresh may be what brings the new key.
    #[tokio::test]
    async fn a_rotation_refetch_takes_the_keys_of_the_refresh_in_flight() {
        let (url, hits) = endpoint_after(
            Some("HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nkeys"),
            Duration::from_millis(300),
        )
        .await;
        let (c, refreshing) = refreshing_from_stale(url, 1, &hits).await;
        // The stale copy, as a reader got it while the refresh was in flight.
        let (stale, served) = c.keys().await.unwrap();
        assert_eq!((stale, served.just_fetched), (1, false));
        assert_eq!(c.refetch(served).await, Some(4), "the refresh's keys");
        let (refreshed, fetched) = refreshing.await.unwrap().unwrap();
        assert_eq!((refreshed, fetched.just_fetched), (4, true));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "one fetch for both");
        // A copy served after the refresh stored its keys is that copy: no newer one, and the minute since the
        // last fetch is not over, so no refetch either.
        let (_, current) = c.keys().await.unwrap();
        assert_eq!(c.refetch(current).await, None);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
