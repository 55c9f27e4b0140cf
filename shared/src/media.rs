//! Fetching result media from fal: only from allowed hosts, only over https (plain http only where configured,
//! for the local emulator), never from a private, loopback or link-local address (a loopback address listed with
//! its port, the local emulator, excepted), with redirects re-checked, and streamed (the body is never held whole) within an overall deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use url::{Host, Url};

use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("result URL is not a valid URL")]
    BadUrl,
    #[error("result URL scheme {0} is not allowed")]
    Scheme(String),
    #[error("result host {0} is not allowed")]
    HostNotAllowed(String),
    #[error("result host resolves to a non-public address")]
    PrivateAddress,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Our verdict: the URL may not be fetched at all.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Our verdict: fal's media answered a client error (e.g. 404: the file is gone).
    #[error("Failed to download result: {0}")]
    Gone(u16),
    /// Worth retrying: 5xx, timeout, broken connection.
    #[error("result download failed: {0}")]
    Transient(String),
}

/// Reading the body of a result failed part-way; worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The whole download (headers and body) took longer than its deadline: a slow drip, not a stall.
    #[error("result download did not finish within {} s", .0.as_secs())]
    Deadline(Duration),
    /// The connection broke off or stalled beyond the read timeout.
    #[error("result download broke off: {0}")]
    Read(String),
}

/// The media read timeout unless configured (`MEDIA_READ_TIMEOUT_SECS`).
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The deadline of one whole result download unless configured (`MEDIA_DOWNLOAD_DEADLINE_SECS`).
const DEFAULT_DOWNLOAD_DEADLINE: Duration = Duration::from_secs(600);

/// Which URLs may be fetched, how long a fetch may stall, and how long it may last.
#[derive(Debug, Clone)]
pub struct MediaPolicy {
    allowed_hosts: Vec<String>,
    allow_http: bool,
    /// Longest wait for a response's headers or its next bytes.
    read_timeout: Duration,
    /// Longest time for one whole download, headers and body.
    download_deadline: Duration,
}

impl MediaPolicy {
    pub fn new(allowed_hosts: Vec<String>, allow_http: bool) -> Self {
        MediaPolicy {
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allow_http,
            read_timeout: DEFAULT_READ_TIMEOUT,
            download_deadline: DEFAULT_DOWNLOAD_DEADLINE,
        }
    }

    pub fn from_config(c: &Config) -> Self {
        Self {
            read_timeout: c.media_read_timeout,
            download_deadline: c.media_download_deadline,
            ..Self::new(c.media_allowed_hosts.clone(), c.media_allow_http)
        }
    }

    /// Checks scheme and host of a URL before any connection is made.
    pub fn check(&self, raw: &str) -> Result<Url, Rejection> {
        let url = Url::parse(raw.trim()).map_err(|_| Rejection::BadUrl)?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            other => return Err(Rejection::Scheme(other.to_owned())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Rejection::BadUrl);
        }
        let host = url.host().ok_or(Rejection::BadUrl)?;
        let port = url.port_or_known_default().unwrap_or(443);
        let (name, ip) = match host {
            Host::Domain(d) => (d.trim_end_matches('.').to_ascii_lowercase(), None),
            Host::Ipv4(v4) => (v4.to_string(), Some(IpAddr::V4(v4))),
            Host::Ipv6(v6) => (format!("[{v6}]"), Some(IpAddr::V6(v6))),
        };
        if !self.host_allowed(&name, port) {
            return Err(Rejection::HostNotAllowed(name));
        }
        // A non-public address literal passes only when it is loopback and listed exactly with its port (the
        // local emulator). Private, link-local and other internal ranges never pass, whatever the list says.
        if let Some(ip) = ip
            && !is_public(ip)
            && !(ip.is_loopback() && self.literal_listed_with_port(&name, port))
        {
            return Err(Rejection::PrivateAddress);
        }
        Ok(url)
    }

    fn host_allowed(&self, host: &str, port: u16) -> bool {
        self.allowed_hosts.iter().any(|entry| {
            let (entry_host, entry_port) = split_entry(entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            match entry_host.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == entry_host,
            }
        })
    }

    fn literal_listed_with_port(&self, host: &str, port: u16) -> bool {
        self.allowed_hosts
            .iter()
            .any(|entry| split_entry(entry) == (host, Some(port)))
    }
}

/// `host`, `host:port`, `[v6]:port`.
fn split_entry(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((v6, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (&entry[..v6.len() + 2], port);
        }
        return (entry, None);
    }
    match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

/// True for addresses on the public internet; false for loopback, private, link-local, shared (CGNAT),
/// unspecified, multicast, broadcast, documentation and IPv6 unique-local ranges, and IPv4-mapped forms of those.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (18..20).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)
                || (seg[0] == 0x0064 && seg[1] == 0xff9b))
        }
    }
}

/// DNS resolution that drops non-public addresses, so an allowed name that resolves (or is rebound) to an
/// internal address is never connected to.
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(std::io::Error::other(Rejection::PrivateAddress))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The address check's refusal among a request error's sources ([`PublicOnlyResolver`]'s reaches the request
/// wrapped in the connector's errors, inside an `io::Error`).
fn rejection_in(e: &(dyn std::error::Error + 'static)) -> Option<Rejection> {
    let mut source = Some(e);
    while let Some(s) = source {
        let io_inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if let Some(r) = [Some(s), io_inner]
            .into_iter()
            .flatten()
            .find_map(|e| e.downcast_ref::<Rejection>())
        {
            return Some(r.clone());
        }
        source = s.source();
    }
    None
}

/// An HTTP client for media: public-only DNS, redirects re-checked against the policy, bounded waits.
pub fn http_client(policy: &MediaPolicy) -> anyhow::Result<reqwest::Client> {
    let redirect_policy = policy.clone();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(crate::tls::http_config()?)
        .no_proxy()
        .dns_resolver(Arc::new(PublicOnlyResolver))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 3 {
                attempt.error("too many redirects")
            } else if redirect_policy.check(attempt.url().as_str()).is_err() {
                attempt.error("redirect to a URL that is not allowed")
            } else {
                attempt.follow()
            }
        }))
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(policy.read_timeout)
        .build()?)
}

/// The body of a media response, as it arrives.
pub type Body = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// A media response whose body has not been read yet.
pub struct Media {
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    /// Ends with a [`BodyError`] when the download breaks off or outlives its deadline.
    pub body: Body,
}

/// Starts fetching an allowed URL. Client errors are final verdicts, everything else transient. The whole
/// download, body included, must finish within the policy's deadline.
pub async fn fetch(
    client: &reqwest::Client,
    policy: &MediaPolicy,
    raw_url: &str,
) -> Result<Media, FetchError> {
    let url = policy.check(raw_url)?;
    let deadline = tokio::time::Instant::now() + policy.download_deadline;
    let response = tokio::time::timeout_at(deadline, client.get(url).send())
        .await
        .map_err(|_| {
            FetchError::Transient(BodyError::Deadline(policy.download_deadline).to_string())
        })?
        .map_err(|e| {
            if e.is_redirect() {
                FetchError::Rejected(Rejection::HostNotAllowed("redirect target".into()))
            } else if let Some(r) = rejection_in(&e) {
                // The resolver found only non-public addresses: a verdict, not a fault a retry can mend.
                FetchError::Rejected(r)
            } else {
                FetchError::Transient(e.without_url().to_string())
            }
        })?;
    let status = response.status();
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        return Err(FetchError::Gone(status.as_u16()));
    }
    if !status.is_success() {
        return Err(FetchError::Transient(format!(
            "media host answered {status}"
        )));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty());
    let content_length = response.content_length();
    let body = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(|e| BodyError::Read(e.without_url().to_string())));
    Ok(Media {
        content_type,
        content_length,
        body: until_deadline(body, deadline, policy.download_deadline),
    })
}

/// Passes `body` through until `deadline`, then yields one [`BodyError::Deadline`] and ends; ends after any error.
fn until_deadline(
    body: impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    deadline: tokio::time::Instant,
    limit: Duration,
) -> Body {
    let state = (
        Box::pin(body),
        Box::pin(tokio::time::sleep_until(deadline)),
        false,
    );
    Box::pin(futures::stream::unfold(
        state,
        move |(mut body, mut expiry, ended)| async move {
            if ended {
                return None;
            }
            let item = tokio::select! {
                biased;
                () = &mut expiry => Err(BodyError::Deadline(limit)),
                next = body.next() => next?,
            };
            let ended = item.is_err();
            Some((item, (body, expiry, ended)))
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fal_policy() -> MediaPolicy {
        MediaPolicy::new(vec!["fal.media".into(), "*.fal.media".into()], false)
    }

    #[test]
    fn fal_media_hosts_over_https_are_allowed() {
        let p = fal_policy();
        assert!(p.check("https://v3.fal.media/files/x/out.png").is_ok());
        assert!(p.check("https://v3b.fal.media/files/y/out.mp4").is_ok());
        assert!(p.check("https://fal.media/files/z").is_ok());
    }

    #[test]
    fn other_schemes_and_hosts_are_refused() {
        let p = fal_policy();
        assert_eq!(
            p.check("http://v3.fal.media/a"),
            Err(Rejection::Scheme("http".into()))
        );
        assert_eq!(
            p.check("file:///etc/passwd"),
            Err(Rejection::Scheme("file".into()))
        );
        assert_eq!(
            p.check("gopher://v3.fal.media/a"),
            Err(Rejection::Scheme("gopher".into()))
        );
        assert!(matches!(
            p.check("https://evil.example/a"),
            Err(Rejection::HostNotAllowed(_))
        ));
        assert!(matches!(
            p.check("https://fal.media.evil.example/a"),
            Err(Rejection::HostNotAllowed(_))
        ));
        assert!(matches!(
            p.check("https://notfal.media/a"),
            Err(Rejection::HostNotAllowed(_))
        ));
        assert_eq!(
            p.check("https://user:pw@v3.fal.media/a"),
            Err(Rejection::BadUrl)
        );
        assert_eq!(p.check("not a url"), Err(Rejection::BadUrl));
    }

    #[test]
    fn private_and_link_local_literals_are_refused_even_when_the_host_pattern_is_broad() {
        // A careless allow-list entry must still not reach internal addresses.
        let p = MediaPolicy::new(
            vec![
                "169.254.169.254".into(),
                "10.0.0.5:443".into(),
                "127.0.0.1".into(),
            ],
            false,
        );
        assert_eq!(
            p.check("https://169.254.169.254/latest/meta-data"),
            Err(Rejection::PrivateAddress)
        );
        assert_eq!(
            p.check("https://10.0.0.5/a"),
            Err(Rejection::PrivateAddress)
        );
        assert_eq!(
            p.check("https://127.0.0.1/a"),
            Err(Rejection::PrivateAddress),
            "loopback needs its exact port"
        );
        let p = fal_policy();
        for url in [
            "https://10.0.0.5/a",
            "https://192.168.1.1/a",
            "https://172.16.0.1/a",
            "https://169.254.169.254/latest/meta-data",
            "https://127.0.0.1/a",
            "https://[::1]/a",
            "https://[fe80::1]/a",
            "https://[fd00::1]/a",
        ] {
            assert!(p.check(url).is_err(), "{url}");
        }
    }

    #[test]
    fn an_exactly_listed_loopback_address_and_port_is_allowed_for_the_local_emulator() {
        let p = MediaPolicy::new(vec!["127.0.0.1:9100".into()], true);
        assert!(p.check("http://127.0.0.1:9100/media/r/output.png").is_ok());
        assert!(matches!(
            p.check("http://127.0.0.2:9100/media/r/output.png"),
            Err(Rejection::HostNotAllowed(_))
        ));
        assert!(matches!(
            p.check("http://127.0.0.1:9101/media/r/output.png"),
            Err(Rejection::HostNotAllowed(_))
        ));
    }

    /// A loopback media host that sends its headers at once, then one byte every `every` (of 1000 promised).
    async fn dripping_host(every: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: video/mp4\r\ncontent-length: 1000\r\n\r\n";
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for _ in 0..1000 {
                        tokio::time::sleep(every).await;
                        if conn.write_all(b"x").await.is_err() || conn.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        format!("{addr}")
    }

    #[tokio::test]
    async fn a_body_dripping_past_the_download_deadline_is_cut_off_as_a_transient_source_error() {
        let host = dripping_host(Duration::from_millis(50)).await;
        let policy = MediaPolicy {
            download_deadline: Duration::from_millis(400),
            ..MediaPolicy::new(vec![host.clone()], true)
        };
        let client = http_client(&policy).unwrap();
        let started = std::time::Instant::now();
        let media = fetch(&client, &policy, &format!("http://{host}/media/r/out.mp4"))
            .await
            .unwrap();
        assert_eq!(media.content_length, Some(1000));
        // Each byte arrives well within the read timeout; only the overall deadline ends the download.
        let mut body = media.body;
        let mut read = 0;
        let err = loop {
            match body.next().await {
                Some(Ok(b)) => read += b.len(),
                Some(Err(e)) => break e,
                None => panic!("the body ended after {read} bytes without an error"),
            }
        };
        assert_eq!(err, BodyError::Deadline(Duration::from_millis(400)));
        assert!(read > 0 && read < 1000, "{read}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(body.next().await.is_none(), "nothing after the deadline");

        // Stored through the S3 adapter, the cut-off is a source failure (the completion's transient media
        // fault: 5xx, fal retries), raised before any S3 call.
        let media = fetch(&client, &policy, &format!("http://{host}/media/r/out.mp4"))
            .await
            .unwrap();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url("http://127.0.0.1:9")
                .build(),
        );
        let err = crate::storage::Storage::new(s3)
            .put_stream("bucket", "key", "video/mp4", media.body, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, crate::storage::StorageError::Source(ref m) if m.contains("did not finish within")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_allowed_name_resolving_only_to_non_public_addresses_is_refused_not_retried() {
        // `localhost` resolves (from the hosts file) to loopback addresses only, which the resolver drops: no
        // connection is made, and the refusal is a verdict, as for a non-public literal.
        let policy = MediaPolicy::new(vec!["localhost".into()], true);
        let client = http_client(&policy).unwrap();
        let err = fetch(&client, &policy, "http://localhost:9/media/r/out.png")
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, FetchError::Rejected(Rejection::PrivateAddress)),
            "{err}"
        );
    }

    #[test]
    fn public_address_classification() {
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.1.2.3",
            "172.31.255.255",
            "192.168.0.1",
            "127.0.0.1",
            "127.0.0.2",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
