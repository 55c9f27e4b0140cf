//! Result files: deterministic bytes generated on the fly (files can be 1 GiB+), served with scripted faults.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

use super::state::{AppState, MediaFetch};

/// Bytes generated and sent per chunk: bounded memory whatever the file size.
const CHUNK: usize = 64 * 1024;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// FNV-1a: a cheap, stable hash (std's hasher is randomly seeded per process, which would break
/// recomputing the expected bytes in another process).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bytes `offset..offset+len` of the result file of `request_id`. Byte i depends only on
/// (request_id, i), so any slice can be recomputed independently (tests, range checks, digests).
pub fn media_bytes_at(request_id: &str, offset: u64, len: usize) -> Vec<u8> {
    let seed = fnv1a(request_id.as_bytes());
    let mut out = Vec::with_capacity(len);
    let mut i = offset;
    while out.len() < len {
        // One 64-bit word per 8 bytes keeps generation far cheaper than the network.
        let word = splitmix64(seed.wrapping_add((i >> 3).wrapping_add(1).wrapping_mul(GOLDEN)))
            .to_le_bytes();
        let start = (i & 7) as usize;
        let n = (8 - start).min(len - out.len());
        out.extend_from_slice(&word[start..start + n]);
        i += n as u64;
    }
    out
}

/// The file body as a stream of chunks, paced to at most `rate` bytes per second when given.
fn body_stream(
    request_id: String,
    size: u64,
    rate: Option<u64>,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    // Small chunks under a rate limit, so pacing is smooth rather than one burst per 64 KiB.
    let chunk = rate.map_or(CHUNK as u64, |r| (r / 10).clamp(1, CHUNK as u64));
    let start = tokio::time::Instant::now();
    futures::stream::unfold(0u64, move |sent| {
        let id = request_id.clone();
        async move {
            if sent >= size {
                return None;
            }
            let n = chunk.min(size - sent);
            if let Some(r) = rate {
                // A chunk leaves only once the whole of it fits under the rate since the start.
                let due = Duration::from_secs_f64((sent + n) as f64 / r as f64);
                tokio::time::sleep_until(start + due).await;
            }
            let bytes = media_bytes_at(&id, sent, n as usize);
            Some((Ok(Bytes::from(bytes)), sent + n))
        }
    })
}

/// `GET /media/{request_id}/{file_name}`.
pub async fn serve_media(
    State(state): State<Arc<AppState>>,
    Path((request_id, file_name)): Path<(String, String)>,
) -> Response {
    match state.record_media_fetch(&request_id, &file_name) {
        Some(fetch) => respond(request_id, fetch).await,
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The answer to one fetch of a result file, faults included; fal's media and Replicate's delivery share it.
pub async fn respond(request_id: String, fetch: MediaFetch) -> Response {
    let d = &fetch.directives;
    let status = d
        .media_status
        .or(d.queue_media_status.filter(|_| fetch.queued));
    if let Some(code) = status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, "emulated media status").into_response();
    }
    if fetch.fetch_number <= u64::from(d.media_fail_first) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "emulated media failure").into_response();
    }
    if d.media_slow_ms > 0
        && (d.media_slow_first == 0 || fetch.fetch_number <= u64::from(d.media_slow_first))
    {
        tokio::time::sleep(Duration::from_millis(d.media_slow_ms)).await;
    }
    let body = Body::from_stream(body_stream(request_id, fetch.media.size, d.media_rate));
    let mut response = (
        [(header::CONTENT_TYPE, fetch.media.content_type.clone())],
        body,
    )
        .into_response();
    // A body of unknown length is sent chunked.
    if !d.media_no_length {
        response.headers_mut().insert(
            header::CONTENT_LENGTH,
            header::HeaderValue::from(fetch.media.size),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn bytes_are_deterministic_and_slice_independent() {
        let whole = media_bytes_at("req-a", 0, 1000);
        assert_eq!(whole, media_bytes_at("req-a", 0, 1000));
        assert_eq!(&whole[3..700], media_bytes_at("req-a", 3, 697).as_slice());
        assert_ne!(whole, media_bytes_at("req-b", 0, 1000));
        assert!(media_bytes_at("req-a", 5, 0).is_empty());
        // Not a constant or trivially repeating pattern.
        assert_ne!(whole[..8], whole[8..16]);
    }

    #[tokio::test]
    async fn stream_yields_exactly_the_file() {
        let size = (CHUNK as u64) * 2 + 123;
        let chunks: Vec<Bytes> = body_stream("r".into(), size, None)
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert!(chunks.iter().all(|c| c.len() <= CHUNK));
        let joined: Vec<u8> = chunks.concat();
        assert_eq!(joined, media_bytes_at("r", 0, size as usize));
    }

    #[tokio::test]
    async fn a_file_is_sent_with_its_length_unless_told_not_to() {
        let fetch = |prompt: &str| {
            let directives = super::super::directives::Directives::parse(prompt);
            MediaFetch {
                media: super::super::outputs::MediaSpec::new("fal-ai/flux/dev", &directives),
                directives,
                fetch_number: 1,
                queued: true,
            }
        };
        let announced = respond("r".into(), fetch("#media-bytes=0")).await;
        assert_eq!(announced.headers()[header::CONTENT_LENGTH], "0");
        let unannounced = respond("r".into(), fetch("#media-bytes=0 #media-no-length")).await;
        assert_eq!(unannounced.status(), StatusCode::OK);
        assert!(unannounced.headers().get(header::CONTENT_LENGTH).is_none());
    }

    #[tokio::test]
    async fn rate_limited_stream_takes_its_time() {
        let started = std::time::Instant::now();
        let total: usize = body_stream("r".into(), 2000, Some(10_000))
            .map(|c| c.unwrap().len())
            .collect::<Vec<_>>()
            .await
            .iter()
            .sum();
        assert_eq!(total, 2000);
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
    }
}
