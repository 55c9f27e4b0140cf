//! One streamed PutObject of a body whose length is known before it starts (the media's `Content-Length`): no part
//! buffers, and no CompleteMultipartUpload after the last byte. The body is handed to the SDK chunk by chunk as it
//! arrives (a small channel between the source and the request), so memory stays at a few chunks whatever the size.
//!
//! What it gives up: the SDK cannot retry a body it cannot rebuild, so a PUT failing half way fails the transfer
//! (the delivery is answered 5xx and retried), where a multipart upload would resend one part. BENCHMARKS.md has
//! what each costs.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body::{Frame, SizeHint};
use tokio::sync::mpsc;

use super::{BoxError, Storage, StorageError, StoredObject, s3_err};

/// S3's limit for one PutObject.
pub const MAX_SINGLE_PUT: u64 = 5 << 30;

/// Chunks waiting between the source and the request.
const CHANNEL_CHUNKS: usize = 8;

/// The wait for a PUT's answer, which comes only after the store has taken the whole object: the SDK's 20 s read
/// timeout (meant for a hung connection) plus a second per 16 MiB, so a store that checks and writes a large
/// object (moto takes ~20 s for 1 GiB) is not cut off.
fn answer_timeout(len: u64) -> aws_sdk_s3::config::timeout::TimeoutConfig {
    let read = Duration::from_secs(20 + len / (16 << 20));
    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(read)
        .build()
}

/// The request body: what the source sends through the channel, exactly `left` more bytes.
struct SizedBody {
    rx: mpsc::Receiver<Bytes>,
    left: u64,
}

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        Poll::Ready(match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(chunk) => {
                self.left = self.left.saturating_sub(chunk.len() as u64);
                Some(Ok(Frame::data(chunk)))
            }
            // The source failed or ended short: the request must fail, never store a truncated object.
            None => Some(Err("the source ended before its announced length".into())),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

impl Storage {
    /// Streams `body`, announced as `len` bytes, into `bucket/key` with one PutObject (`len` ≤
    /// [`MAX_SINGLE_PUT`]). A source that fails, sends more or fewer than `len` bytes fails the PUT: no object is
    /// stored. Rewriting a key replaces it.
    pub async fn put_sized<S, E>(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        mut body: S,
        len: u64,
    ) -> Result<StoredObject, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        if len > MAX_SINGLE_PUT {
            return Err(StorageError::TooLarge {
                limit: MAX_SINGLE_PUT,
            });
        }
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let feed = async move {
            let mut sent = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StorageError::Source(e.into().to_string()))?;
                sent += chunk.len() as u64;
                if sent > len {
                    return Err(StorageError::Source(format!(
                        "the source is longer than its announced {len} bytes"
                    )));
                }
                if tx.send(chunk).await.is_err() {
                    // The request ended early; its own error says why.
                    return Ok(sent);
                }
            }
            if sent < len {
                return Err(StorageError::Source(format!(
                    "the source ended after {sent} of its announced {len} bytes"
                )));
            }
            Ok(sent)
        };
        let put = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .content_length(len as i64)
            .body(ByteStream::from_body_1_x(SizedBody { rx, left: len }))
            .customize()
            // No checksum of a body not in memory: with one the SDK sends it aws-chunked, 64 KiB chunks each
            // signed on a plain-HTTP endpoint, which the stores then decode after the last byte.
            .config_override(
                aws_sdk_s3::config::Builder::default()
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                    .timeout_config(answer_timeout(len)),
            )
            .send();
        let (fed, put) = tokio::join!(feed, put);
        // A source fault is the reason when there is one (the PUT then failed because of it).
        let size = fed?;
        put.map_err(s3_err("PutObject"))?;
        Ok(StoredObject {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            content_type: content_type.to_owned(),
        })
    }
}
