//! Loopback networking for the stack and the bench: free ports, an HTTP client, random secrets.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::Context;
use rand::RngCore;

/// An HTTP client for loopback only: no proxy, bounded time.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .context("cannot build the HTTP client")
}

/// `n` distinct free ports on 127.0.0.1, found by binding port 0 and releasing it.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in ports.iter_mut() {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

/// `n` random bytes, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
