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

use aws_sdk_s3::config::{RequestChecksumCalculation, StalledStreamProtectionConfig};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body::{Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};

use super::{BoxError, Storage, StorageError, StoredObject, s3_err};

/// S3's limit for one PutObject.
pub const MAX_SINGLE_PUT: u64 = 5 << 30;

/// Chunks waiting between the source and the request.
const CHANNEL_CHUNKS: usize = 8;

/// A store that takes no chunk for this long is taken as hung, and so is one that does not answer this long (plus a
/// second per 16 MiB, for a store that checks and writes a large object: moto takes ~20 s for 1 GiB) after the
/// last byte. The SDK's read timeout cannot be that bound: it runs from the request's start to its answer's head,
/// and this request lasts as long as its source (the media download, which has bounds of its own), so a slow
/// download of a large result would be cut off however steadily it moved.
const STORE_STALL: Duration = Duration::from_secs(20);

fn answer_wait(len: u64) -> Duration {
    STORE_STALL + Duration::from_secs(len / (16 << 20))
}

fn hung(reason: String) -> StorageError {
    StorageError::S3 {
        operation: "PutObject",
        reason,
    }
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

/// Sends the source's chunks to the request, exactly `len` bytes; the bytes sent. `fed` is told when every byte is
/// sent (or the request took no more), and dropped untold when the feed fails.
async fn feed<S, E>(
    mut body: S,
    tx: mpsc::Sender<Bytes>,
    len: u64,
    fed: oneshot::Sender<()>,
) -> Result<u64, StorageError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    let mut sent = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StorageError::Source(e.into().to_string()))?;
        sent += chunk.len() as u64;
        if sent > len {
            return Err(StorageError::Source(format!(
                "the source is longer than its announced {len} bytes"
            )));
        }
        match tokio::time::timeout(STORE_STALL, tx.send(chunk)).await {
            Ok(Ok(())) => {}
            // The request ended early; its own answer says why.
            Ok(Err(_)) => {
                let _ = fed.send(());
                return Ok(sent);
            }
            Err(_) => {
                let secs = STORE_STALL.as_secs();
                return Err(hung(format!("the store took no data for {secs} s")));
            }
        }
    }
    if sent < len {
        return Err(StorageError::Source(format!(
            "the source ended after {sent} of its announced {len} bytes"
        )));
    }
    let _ = fed.send(());
    Ok(sent)
}

/// The PUT's answer, waited for without a bound while the feed runs (which has bounds of its own) and for
/// [`answer_wait`] once every byte is sent (`fed`); not at all once the feed failed (the request cannot succeed,
/// and the feed's error says why: `Err(None)`).
async fn answered<T, E: std::error::Error>(
    put: impl Future<Output = Result<T, E>>,
    fed: oneshot::Receiver<()>,
    len: u64,
) -> Result<(), Option<StorageError>> {
    let mut put = std::pin::pin!(put);
    let store_err = |e| Some(s3_err("PutObject")(e));
    tokio::select! {
        answered = &mut put => answered.map(drop).map_err(store_err),
        sent = fed => match sent {
            Err(_) => Err(None),
            Ok(()) => match tokio::time::timeout(answer_wait(len), put).await {
                Ok(answered) => answered.map(drop).map_err(store_err),
                Err(_) => {
                    let secs = answer_wait(len).as_secs();
                    Err(Some(hung(format!("no answer within {secs} s of the last byte"))))
                }
            },
        },
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
        body: S,
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
        // Told when the feed has sent every byte: from then on the answer's wait is bounded.
        let (fed_tx, fed_rx) = oneshot::channel::<()>();
        let feed = feed(body, tx, len, fed_tx);
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
            // signed on a plain-HTTP endpoint, which the stores then decode after the last byte. The bounds are
            // this module's (a store that takes no data, or does not answer): the SDK's stalled-stream check would
            // race the first with an error that names neither.
            .config_override(
                aws_sdk_s3::config::Builder::default()
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                    .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
                    .timeout_config(
                        aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                            .connect_timeout(Duration::from_secs(3))
                            .disable_read_timeout()
                            .build(),
                    ),
            )
            .send();
        let put = answered(put, fed_rx, len);
        let (fed, put) = tokio::join!(feed, put);
        // A source fault is the reason when there is one (the PUT then failed because of it); else the store's
        // own error is, rather than the feed's stall that an early answer of the store may have caused; else the
        // feed's (the store took no data).
        let size = match (fed, put) {
            (Err(e @ StorageError::Source(_)), _) | (_, Err(Some(e))) | (Err(e), _) => {
                return Err(e);
            }
            (Ok(size), Ok(())) => size,
            // The feed tells `fed` on every way it succeeds: not reached.
            (Ok(_), Err(None)) => return Err(hung("the request's body was not sent whole".into())),
        };
        Ok(StoredObject {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size,
            content_type: content_type.to_owned(),
        })
    }
}
