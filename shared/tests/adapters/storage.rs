use std::time::Duration;

use crate::common::{fetch_digest, pattern_sha256, pattern_stream, sdk_config, stack_var, unique};
use gen_pipeline::aws;
use gen_pipeline::storage::{Storage, StorageError};

async fn storage() -> Storage {
    Storage::new(aws::s3(&sdk_config().await))
}

#[tokio::test]
async fn a_small_body_is_stored_whole_with_its_type_and_served_by_its_presigned_url() {
    let s = storage().await;
    let bucket = stack_var("WORKSPACE_BUCKET");
    let key = format!("{}/small.png", unique("user"));
    let stored = s
        .put_stream(&bucket, &key, "image/png", pattern_stream(10_000), None)
        .await
        .unwrap();
    assert_eq!(stored.size, 10_000);
    let meta = s.head(&bucket, &key).await.unwrap().unwrap();
    assert_eq!(meta.size, 10_000);
    assert_eq!(meta.content_type.as_deref(), Some("image/png"));
    let url = s
        .presign_get(&bucket, &key, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(url.contains("X-Amz-Signature"), "{url}");
    assert_eq!(
        fetch_digest(&url).await,
        (200, 10_000, pattern_sha256(10_000))
    );
}

#[tokio::test]
async fn a_multipart_body_keeps_every_byte_in_order() {
    // Small parts so several are in flight at once; S3's own minimum (5 MiB) applies to real parts.
    let s = Storage::with_part_size(aws::s3(&sdk_config().await), 5 * 1024 * 1024);
    let bucket = stack_var("WORKSPACE_BUCKET");
    let key = format!("{}/multi.mp4", unique("user"));
    let total = 17 * 1024 * 1024 + 123;
    let stored = s
        .put_stream(&bucket, &key, "video/mp4", pattern_stream(total), None)
        .await
        .unwrap();
    assert_eq!(stored.size, total);
    assert_holds_the_pattern(&s, &bucket, &key, total).await;
}

/// The object's presigned URL serves exactly the `total` bytes of the test pattern.
async fn assert_holds_the_pattern(s: &Storage, bucket: &str, key: &str, total: u64) {
    let url = s
        .presign_get(bucket, key, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        fetch_digest(&url).await,
        (200, total, pattern_sha256(total))
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_leaves_no_object() {
    let s = Storage::with_part_size(aws::s3(&sdk_config().await), 5 * 1024 * 1024);
    let bucket = stack_var("WORKSPACE_BUCKET");
    for total in [20_000u64, 12 * 1024 * 1024] {
        let key = format!("{}/big.bin", unique("user"));
        let err = s
            .put_stream(
                &bucket,
                &key,
                "application/octet-stream",
                pattern_stream(total),
                Some(10_000),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::TooLarge { limit: 10_000 }),
            "{err}"
        );
        assert_eq!(s.head(&bucket, &key).await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_download_without_a_byte_is_refused_before_any_put_and_a_plain_stream_stores_it_empty() {
    let s = storage().await;
    let bucket = stack_var("WORKSPACE_BUCKET");
    let empty_chunks =
        || futures::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::new())));
    // Announced empty; sent without a length (no chunk, or only empty ones).
    for (case, len) in [("announced", Some(0)), ("unannounced", None)] {
        for body in [
            Box::pin(pattern_stream(0)) as std::pin::Pin<Box<dyn futures::Stream<Item = _>>>,
            Box::pin(empty_chunks()),
        ] {
            let key = format!("{}/empty.png", unique("user"));
            let err = s
                .put_download(&bucket, &key, "image/png", body, len, Some(10_000))
                .await
                .unwrap_err();
            assert!(matches!(err, StorageError::Empty), "{case}: {err}");
            assert_eq!(s.head(&bucket, &key).await.unwrap(), None, "{case}");
        }
    }
    // A small download without a length is stored whole.
    let key = format!("{}/small.png", unique("user"));
    let stored = s
        .put_download(
            &bucket,
            &key,
            "image/png",
            pattern_stream(1_000),
            None,
            Some(10_000),
        )
        .await
        .unwrap();
    assert_eq!(stored.size, 1_000);
    assert_eq!(
        s.head(&bucket, &key).await.unwrap().map(|m| m.size),
        Some(1_000)
    );
    // `put_stream` is not a download: an empty source is an empty object.
    let key = format!("{}/empty.txt", unique("user"));
    let stored = s
        .put_stream(&bucket, &key, "text/plain", empty_chunks(), None)
        .await
        .unwrap();
    assert_eq!(stored.size, 0);
    assert_eq!(
        s.head(&bucket, &key).await.unwrap().map(|m| m.size),
        Some(0)
    );
}

#[tokio::test]
async fn a_source_that_breaks_off_fails_and_leaves_no_object() {
    let s = Storage::with_part_size(aws::s3(&sdk_config().await), 5 * 1024 * 1024);
    let bucket = stack_var("WORKSPACE_BUCKET");
    let key = format!("{}/broken.mp4", unique("user"));
    use futures::StreamExt;
    let broken = pattern_stream(11 * 1024 * 1024).chain(futures::stream::iter([Err(
        std::io::Error::other("connection reset"),
    )]));
    let err = s
        .put_stream(&bucket, &key, "video/mp4", Box::pin(broken), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Source(ref m) if m.contains("connection reset")),
        "{err}"
    );
    assert_eq!(s.head(&bucket, &key).await.unwrap(), None);
}

#[tokio::test]
async fn delete_keys_removes_exactly_the_given_keys_and_ignores_missing_ones() {
    let s = storage().await;
    let bucket = stack_var("WORKSPACE_BUCKET");
    let user = uuid::Uuid::new_v4();
    let job = uuid::Uuid::new_v4();
    let candidates = gen_pipeline::storage::result_key_candidates(user, job);
    let result = format!("{user}/{job}_0.mp4");
    let thumbnail = format!("{user}/{job}_0.thumb.webp");
    // A key under the same prefix that is no candidate (a prefix delete would take it): must survive.
    let neighbour = format!("{user}/{job}_0.mp4.bak");
    for key in [&result, &thumbnail, &neighbour] {
        s.put_stream(&bucket, key, "video/mp4", pattern_stream(1_000), None)
            .await
            .unwrap();
    }
    assert!(candidates.contains(&result) && candidates.contains(&thumbnail));
    assert!(!candidates.contains(&neighbour));

    // Six of the eight candidates do not exist: not an error.
    s.delete_keys(&bucket, &candidates).await.unwrap();
    assert_eq!(s.head(&bucket, &result).await.unwrap(), None);
    assert_eq!(s.head(&bucket, &thumbnail).await.unwrap(), None);
    assert!(s.head(&bucket, &neighbour).await.unwrap().is_some());

    // Again, with nothing left to delete, and with no keys at all.
    s.delete_keys(&bucket, &candidates).await.unwrap();
    s.delete_keys(&bucket, &[]).await.unwrap();
    s.delete(&bucket, &neighbour).await.unwrap();
}

#[tokio::test]
async fn a_sized_put_streams_every_byte_in_one_request() {
    let s = storage().await;
    let bucket = stack_var("WORKSPACE_BUCKET");
    let key = format!("{}/sized.mp4", unique("user"));
    let total = 9 * 1024 * 1024 + 7;
    let stored = s
        .put_sized(&bucket, &key, "video/mp4", pattern_stream(total), total)
        .await
        .unwrap();
    assert_eq!(stored.size, total);
    let meta = s.head(&bucket, &key).await.unwrap().unwrap();
    assert_eq!(meta.content_type.as_deref(), Some("video/mp4"));
    assert_holds_the_pattern(&s, &bucket, &key, total).await;
    s.delete(&bucket, &key).await.unwrap();
}

#[tokio::test]
async fn a_sized_put_whose_source_breaks_off_or_lies_about_its_length_stores_nothing() {
    use futures::StreamExt;
    let s = storage().await;
    let bucket = stack_var("WORKSPACE_BUCKET");
    let total = 3 * 1024 * 1024;
    let broken = || {
        pattern_stream(total).chain(futures::stream::iter([Err(std::io::Error::other(
            "connection reset",
        ))]))
    };
    let cases: [(&str, u64, _); 3] = [
        (
            "connection reset",
            total + 10,
            Box::pin(broken()) as futures::stream::BoxStream<_>,
        ),
        ("ended after", total + 10, pattern_stream(total).boxed()),
        ("longer than", total - 10, pattern_stream(total).boxed()),
    ];
    for (reason, announced, body) in cases {
        let key = format!("{}/sized-broken.mp4", unique("user"));
        let err = s
            .put_sized(&bucket, &key, "video/mp4", body, announced)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::Source(ref m) if m.contains(reason)),
            "{reason}: {err}"
        );
        assert_eq!(s.head(&bucket, &key).await.unwrap(), None, "{reason}");
    }
}

/// A copy whose source is gone is told apart from one that failed: false, not an error (post-processing then
/// records a library row without a thumbnail, and retries the step on an error).
#[tokio::test]
async fn a_copy_of_a_missing_source_is_false_and_of_a_present_one_true() {
    let s = storage().await;
    let (workspace, library) = (stack_var("WORKSPACE_BUCKET"), stack_var("LIBRARY_BUCKET"));
    let user = unique("user");
    let (source, target) = (format!("{user}/thumb.jpg"), format!("{user}/copy.jpg"));
    let missing = s.copy_if_exists(&workspace, &source, &library, &target);
    assert!(!missing.await.unwrap());
    assert!(s.head(&library, &target).await.unwrap().is_none());
    s.put_stream(
        &workspace,
        &source,
        "image/jpeg",
        pattern_stream(1000),
        None,
    )
    .await
    .unwrap();
    let present = s.copy_if_exists(&workspace, &source, &library, &target);
    assert!(present.await.unwrap());
    assert_eq!(s.head(&library, &target).await.unwrap().unwrap().size, 1000);
}

#[tokio::test]
async fn a_sized_put_fed_slower_than_the_sdk_read_timeout_is_stored_whole() {
    // The SDK's read timeout (20 s) runs from the request's start to its answer: a PUT fed by a download that
    // keeps moving for longer than that must still be stored, as a slow result host's would be.
    use futures::StreamExt;
    let s = storage().await;
    let bucket = stack_var("WORKSPACE_BUCKET");
    let key = format!("{}/slow.bin", unique("user"));
    let chunk = 64 * 1024;
    let chunks = 24u64;
    let body = futures::stream::iter(0..chunks).then(move |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![i as u8; chunk]))
    });
    let stored = s
        .put_sized(
            &bucket,
            &key,
            "application/octet-stream",
            Box::pin(body),
            chunks * chunk as u64,
        )
        .await
        .unwrap();
    assert_eq!(stored.size, chunks * chunk as u64);
    let meta = s.head(&bucket, &key).await.unwrap().unwrap();
    assert_eq!(meta.size, chunks * chunk as u64);
}

/// A store on loopback that accepts a request and then does no more: `read` false takes none of the body (its
/// buffers fill), `read` true takes all of it and never answers. A hung store, as S3 behind a broken path would be.
async fn hung_store(read: bool) -> (Storage, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            if read {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1 << 16];
                    while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                });
            } else {
                conns.push(conn);
            }
        }
    });
    let config = sdk_config().await.to_builder().endpoint_url(url).build();
    (Storage::new(aws::s3(&config)), held)
}

/// `len` bytes, from memory, as fast as they are taken.
fn zeros(len: u64) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
    const CHUNK: u64 = 1 << 20;
    Box::pin(futures::stream::iter((0..len.div_ceil(CHUNK)).map(
        move |i| {
            let n = CHUNK.min(len - i * CHUNK) as usize;
            Ok(bytes::Bytes::from(vec![0u8; n]))
        },
    )))
}

/// A PUT of `len` bytes into a [`hung_store`]: the error it ends with, and when (bounded at 60 s by the test).
async fn put_into_hung_store(read: bool, len: u64) -> (StorageError, Duration) {
    let (s, held) = hung_store(read).await;
    let started = std::time::Instant::now();
    let put = s.put_sized(
        "bucket",
        "user/hung.bin",
        "application/octet-stream",
        zeros(len),
        len,
    );
    let err = tokio::time::timeout(Duration::from_secs(60), put)
        .await
        .expect("nothing gave the PUT up within 60 s")
        .unwrap_err();
    let took = started.elapsed();
    held.abort();
    (err, took)
}

/// A PUT the store stops taking is given up once no chunk went for 20 s (not sooner: a slow store is not a hung
/// one), with an error, not an object.
#[tokio::test]
async fn a_put_the_store_stops_taking_is_given_up_after_20_s_without_data() {
    let (err, took) = put_into_hung_store(false, 64 << 20).await;
    assert!(err.to_string().contains("took no data for 20 s"), "{err}");
    assert!(
        took >= Duration::from_secs(20),
        "gave up after {took:?}: {err}"
    );
}

/// A PUT whose every byte the store took, and which it never answers, is given up 20 s (and a second per 16 MiB)
/// after the last byte.
#[tokio::test]
async fn a_put_the_store_never_answers_is_given_up_20_s_after_its_last_byte() {
    let (err, took) = put_into_hung_store(true, 4 << 20).await;
    let answer = "no answer within 20 s of the last byte";
    assert!(err.to_string().contains(answer), "{err}");
    assert!(
        took >= Duration::from_secs(20),
        "gave up after {took:?}: {err}"
    );
}
