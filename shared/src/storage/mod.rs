//! S3: streaming uploads with bounded memory — one streamed PutObject when the length is known ahead
//! ([`single_put`]), else a multipart upload (one buffer of `part_size` being filled, at most [`PARTS_IN_FLIGHT`]
//! parts uploading, so download and upload overlap) —, presigned GETs, object metadata, and
//! deletes by exact key (no listing: the functions' roles hold no s3:ListBucket).

use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::task::JoinSet;
use uuid::Uuid;

mod single_put;

pub use single_put::MAX_SINGLE_PUT;

/// 8 MiB: above S3's 5 MiB minimum part size, small enough for a 128 MB Lambda.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading while the next one is read.
pub const PARTS_IN_FLIGHT: usize = 2;

/// S3's limit of keys in one DeleteObjects request.
const MAX_KEYS_PER_DELETE: usize = 1000;

/// Every extension a result can be stored under: all that `completion::content_type_and_ext` produces.
pub const RESULT_EXTENSIONS: [&str; 7] = ["png", "jpg", "webp", "gif", "mp4", "webm", "mov"];

/// Every key a job's result objects can have in the workspace bucket: `<user>/<job>_0.<ext>` for each result
/// extension, and the video thumbnail `<user>/<job>_0.thumb.webp`. Deleting these needs no listing.
pub fn result_key_candidates(user_id: Uuid, job_id: Uuid) -> Vec<String> {
    RESULT_EXTENSIONS
        .iter()
        .map(|ext| format!("{user_id}/{job_id}_0.{ext}"))
        .chain([format!("{user_id}/{job_id}_0.thumb.webp")])
        .collect()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Reading the source failed (e.g. the media download broke off); nothing was stored.
    #[error("reading the source failed: {0}")]
    Source(String),
    #[error("the object is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// A download that brought no byte ([`Storage::put_download`]); nothing was stored.
    #[error("the source was empty")]
    Empty,
    #[error("S3 {operation} failed: {reason}")]
    S3 {
        operation: &'static str,
        reason: String,
    },
}

fn s3_err<E: std::error::Error>(operation: &'static str) -> impl FnOnce(E) -> StorageError {
    move |e| StorageError::S3 {
        operation,
        reason: DisplayErrorContext(&e).to_string(),
    }
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub content_type: String,
}

impl StoredObject {
    fn new(bucket: &str, key: &str, content_type: &str) -> Self {
        StoredObject {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: 0,
            content_type: content_type.to_owned(),
        }
    }
}

/// What a stream that ends with no byte becomes: an empty object, or [`StorageError::Empty`] with nothing stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfEmpty {
    Store,
    Refuse,
}

/// Metadata of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub content_type: Option<String>,
}

#[derive(Clone)]
pub struct Storage {
    s3: aws_sdk_s3::Client,
    part_size: usize,
}

impl Storage {
    pub fn new(s3: aws_sdk_s3::Client) -> Self {
        Self::with_part_size(s3, DEFAULT_PART_SIZE)
    }

    pub fn with_part_size(s3: aws_sdk_s3::Client, part_size: usize) -> Self {
        Storage { s3, part_size }
    }

    /// Stores a download of announced length `len` (its `Content-Length`, when it has one) under `bucket/key`: one
    /// streamed PutObject ([`Self::put_sized`]) when the length is known, at least a part long and within one PUT's
    /// limit, so nothing is buffered and no CompleteMultipartUpload follows the last byte; otherwise streamed as
    /// [`Self::put_stream`] does. A length over `max_bytes` is refused before anything is read. A download is never
    /// an empty object ([`StorageError::Empty`]): an announced length of 0 is refused before anything is read, and
    /// any other body that ends with no byte before anything is stored.
    pub async fn put_download<S, E>(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        body: S,
        len: Option<u64>,
        max_bytes: Option<u64>,
    ) -> Result<StoredObject, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        if let (Some(len), Some(limit)) = (len, max_bytes)
            && len > limit
        {
            return Err(StorageError::TooLarge { limit });
        }
        match len {
            Some(0) => Err(StorageError::Empty),
            Some(len) if len >= self.part_size as u64 && len <= MAX_SINGLE_PUT => {
                self.put_sized(bucket, key, content_type, body, len).await
            }
            _ => {
                let stored = StoredObject::new(bucket, key, content_type);
                self.stream_into(stored, body, max_bytes, IfEmpty::Refuse)
                    .await
            }
        }
    }

    /// Streams `body` into `bucket/key`. Small bodies become one PUT; larger ones a multipart upload that is
    /// aborted on any failure, so a failed transfer leaves no object behind. Rewriting a key replaces it.
    pub async fn put_stream<S, E>(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        body: S,
        max_bytes: Option<u64>,
    ) -> Result<StoredObject, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let stored = StoredObject::new(bucket, key, content_type);
        self.stream_into(stored, body, max_bytes, IfEmpty::Store)
            .await
    }

    async fn stream_into<S, E>(
        &self,
        stored: StoredObject,
        mut body: S,
        max_bytes: Option<u64>,
        if_empty: IfEmpty,
    ) -> Result<StoredObject, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let mut buffer = BytesMut::with_capacity(self.part_size);
        let mut upload: Option<Multipart> = None;
        let filled = self
            .fill_parts(&stored, &mut body, max_bytes, &mut buffer, &mut upload)
            .await;
        let size = match (filled, upload) {
            (Err(e), Some(u)) => {
                u.abort().await;
                return Err(e);
            }
            (Err(e), None) => return Err(e),
            (Ok(total), Some(u)) => {
                Self::finish_multipart(u, buffer).await?;
                total
            }
            (Ok(0), None) if if_empty == IfEmpty::Refuse => return Err(StorageError::Empty),
            (Ok(total), None) => {
                self.put_whole(&stored, buffer).await?;
                total
            }
        };
        Ok(StoredObject { size, ..stored })
    }

    /// Reads the body into part-sized buffers, sending each full one as a part (the upload starts with the first
    /// full part); what is left in `buffer` is the last part, or the whole object when no upload started.
    async fn fill_parts<S, E>(
        &self,
        stored: &StoredObject,
        body: &mut S,
        max_bytes: Option<u64>,
        buffer: &mut BytesMut,
        upload: &mut Option<Multipart>,
    ) -> Result<u64, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let mut total: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::Source(e.into().to_string()))?;
            total += chunk.len() as u64;
            if let Some(limit) = max_bytes
                && total > limit
            {
                return Err(StorageError::TooLarge { limit });
            }
            let mut rest = chunk;
            while !rest.is_empty() {
                let take = (self.part_size - buffer.len()).min(rest.len());
                buffer.extend_from_slice(&rest.split_to(take));
                if buffer.len() == self.part_size {
                    // The next buffer is allocated only once this part has an upload slot: at most the parts in
                    // flight plus the one filling are held, not one more waiting for a slot.
                    let part = std::mem::take(buffer);
                    if upload.is_none() {
                        *upload = Some(Multipart::start(&self.s3, stored).await?);
                    }
                    if let Some(u) = upload.as_mut() {
                        u.send(part.freeze()).await?;
                    }
                    buffer.reserve(self.part_size);
                }
            }
        }
        Ok(total)
    }

    /// Sends the last part, waits for every part, completes the upload; aborts it on any failure.
    async fn finish_multipart(mut upload: Multipart, last: BytesMut) -> Result<(), StorageError> {
        let parts = async {
            if !last.is_empty() {
                upload.send(last.freeze()).await?;
            }
            upload.finish_parts().await
        }
        .await;
        match parts {
            Ok(parts) => upload.complete(parts).await,
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    /// An object smaller than one part, in one request.
    async fn put_whole(&self, stored: &StoredObject, body: BytesMut) -> Result<(), StorageError> {
        let len = body.len() as i64;
        self.s3
            .put_object()
            .bucket(&stored.bucket)
            .key(&stored.key)
            .content_type(&stored.content_type)
            .content_length(len)
            .body(ByteStream::from(body.freeze()))
            .send()
            .await
            .map_err(s3_err("PutObject"))?;
        Ok(())
    }

    /// A GET URL for the object, valid for `expires_in`.
    pub async fn presign_get(
        &self,
        bucket: &str,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, StorageError> {
        self.presign_get_as(bucket, key, expires_in, None).await
    }

    /// [`Self::presign_get`] with the `Content-Disposition` the answer should carry (an attachment's name).
    pub async fn presign_get_as(
        &self,
        bucket: &str,
        key: &str,
        expires_in: Duration,
        content_disposition: Option<String>,
    ) -> Result<String, StorageError> {
        let config = PresigningConfig::expires_in(expires_in).map_err(|e| StorageError::S3 {
            operation: "presign",
            reason: e.to_string(),
        })?;
        let request = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_response_content_disposition(content_disposition)
            .presigned(config)
            .await
            .map_err(s3_err("presign GetObject"))?;
        Ok(request.uri().to_owned())
    }

    /// The object's size and type, or `None` when it does not exist. The functions' roles may list their buckets
    /// (template.yaml), so S3 answers a HEAD of a missing key 404; a 403 is a refusal (a role or key policy that
    /// does not let us read), an error, not an absent object.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        match self.s3.head_object().bucket(bucket).key(key).send().await {
            Ok(out) => Ok(Some(ObjectMeta {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                content_type: out.content_type().map(str::to_owned),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(s3_err("HeadObject")(e)),
        }
    }

    /// Whether the object exists, as [`Storage::head`] tells.
    pub async fn exists(&self, bucket: &str, key: &str) -> Result<bool, StorageError> {
        Ok(self.head(bucket, key).await?.is_some())
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        self.s3
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(s3_err("DeleteObject"))?;
        Ok(())
    }

    /// Deletes exactly these keys (DeleteObjects, up to 1000 keys a request); a key that does not exist is not an
    /// error. Needs s3:DeleteObject only.
    pub async fn delete_keys(&self, bucket: &str, keys: &[String]) -> Result<(), StorageError> {
        for batch in keys.chunks(MAX_KEYS_PER_DELETE) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(s3_err("DeleteObjects"))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(s3_err("DeleteObjects"))?;
            let out = self
                .s3
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await
                .map_err(s3_err("DeleteObjects"))?;
            // Quiet mode: only the keys that could not be deleted come back.
            if let Some(failed) = out.errors().first() {
                return Err(StorageError::S3 {
                    operation: "DeleteObjects",
                    reason: format!(
                        "{} of {} keys not deleted, e.g. {}: {} {}",
                        out.errors().len(),
                        batch.len(),
                        failed.key().unwrap_or("?"),
                        failed.code().unwrap_or("?"),
                        failed.message().unwrap_or("")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Server-side copy within or across buckets.
    pub async fn copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
    ) -> Result<(), StorageError> {
        self.send_copy(from_bucket, from_key, to_bucket, to_key)
            .await
            .map_err(s3_err("CopyObject"))?;
        Ok(())
    }

    /// [`Self::copy`] of a source that may be gone: false when it is (S3 answers 404 to a role that may list the
    /// bucket), an error for anything else, which a retry may mend.
    pub async fn copy_if_exists(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
    ) -> Result<bool, StorageError> {
        match self
            .send_copy(from_bucket, from_key, to_bucket, to_key)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(s3_err("CopyObject")(e)),
        }
    }

    async fn send_copy(
        &self,
        from_bucket: &str,
        from_key: &str,
        to_bucket: &str,
        to_key: &str,
    ) -> Result<
        aws_sdk_s3::operation::copy_object::CopyObjectOutput,
        aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::copy_object::CopyObjectError>,
    > {
        self.s3
            .copy_object()
            .copy_source(format!("{from_bucket}/{}", urlencode_key(from_key)))
            .bucket(to_bucket)
            .key(to_key)
            .send()
            .await
    }
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping `/` separators and unreserved characters.
fn urlencode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One multipart upload in progress: parts are uploaded by background tasks, at most [`PARTS_IN_FLIGHT`] at a time.
struct Multipart {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    done: Vec<CompletedPart>,
}

impl Multipart {
    async fn start(s3: &aws_sdk_s3::Client, target: &StoredObject) -> Result<Self, StorageError> {
        let out = s3
            .create_multipart_upload()
            .bucket(&target.bucket)
            .key(&target.key)
            .content_type(&target.content_type)
            .send()
            .await
            .map_err(s3_err("CreateMultipartUpload"))?;
        let upload_id = out.upload_id().ok_or_else(|| StorageError::S3 {
            operation: "CreateMultipartUpload",
            reason: "no upload id in the answer".into(),
        })?;
        Ok(Multipart {
            s3: s3.clone(),
            bucket: target.bucket.clone(),
            key: target.key.clone(),
            upload_id: upload_id.to_owned(),
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
        })
    }

    async fn send(&mut self, part: Bytes) -> Result<(), StorageError> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let request = self
            .s3
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(part.len() as i64)
            .body(ByteStream::from(part));
        self.in_flight.spawn(async move {
            let out = request.send().await.map_err(s3_err("UploadPart"))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_owned))
                .set_checksum_crc64_nvme(out.checksum_crc64_nvme().map(str::to_owned))
                .set_checksum_sha1(out.checksum_sha1().map(str::to_owned))
                .set_checksum_sha256(out.checksum_sha256().map(str::to_owned))
                .build())
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StorageError> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined.map_err(|e| StorageError::S3 {
                operation: "UploadPart",
                reason: e.to_string(),
            })??;
            self.done.push(part);
        }
        Ok(())
    }

    async fn finish_parts(&mut self) -> Result<Vec<CompletedPart>, StorageError> {
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    async fn complete(&self, parts: Vec<CompletedPart>) -> Result<(), StorageError> {
        self.s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(s3_err("CompleteMultipartUpload"))?;
        Ok(())
    }

    /// Best effort: an upload that cannot be aborted is left to the bucket's lifecycle rule.
    async fn abort(mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Err(e) = self
            .s3
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
        {
            tracing::warn!(error = %DisplayErrorContext(&e), key = %self.key, "abort of multipart upload failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_key_candidates_cover_every_key_a_result_can_have() {
        let user = Uuid::from_u128(1);
        let job = Uuid::from_u128(2);
        let keys = result_key_candidates(user, job);
        assert_eq!(keys.len(), RESULT_EXTENSIONS.len() + 1);
        assert!(
            keys.iter()
                .all(|k| k.starts_with(&format!("{user}/{job}_0.")))
        );
        assert!(keys.contains(&format!("{user}/{job}_0.thumb.webp")));
        // Every extension the completion can choose, from a served or named type or the defaults.
        use crate::completion::ResultType;
        use crate::completion::content_type_and_ext;
        for ct in [
            "image/png",
            "image/jpeg",
            "image/jpg",
            "image/webp",
            "image/gif",
            "video/mp4",
            "video/webm",
            "video/quicktime",
            "application/octet-stream",
        ] {
            for t in [ResultType::Image, ResultType::Video] {
                let (_, ext) = content_type_and_ext(Some(ct), None, t);
                assert!(
                    keys.contains(&format!("{user}/{job}_0.{ext}")),
                    "{ct}: {ext}"
                );
            }
        }
    }

    #[test]
    fn copy_source_keys_are_encoded_per_segment() {
        assert_eq!(urlencode_key("u/a b+c.png"), "u/a%20b%2Bc.png");
    }
}
