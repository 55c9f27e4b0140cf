//! A 50 MiB streamed upload, alone in its own process so its peak memory can be read.

mod common;

use std::time::Duration;

use common::{
    fetch_digest, pattern_sha256, pattern_stream, peak_rss_bytes, sdk_config, stack_var, unique,
};
use gen_pipeline::aws;
use gen_pipeline::storage::Storage;

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn fifty_mib_streamed_upload_lands_whole_with_memory_far_below_its_size() {
    let storage = Storage::new(aws::s3(&sdk_config().await));
    let bucket = stack_var("WORKSPACE_BUCKET");
    let user = unique("user");
    // Warm up clients, TLS-free connection pool and allocator so the baseline includes them.
    storage
        .put_stream(
            &bucket,
            &format!("{user}/warmup"),
            "image/png",
            pattern_stream(9 * MIB),
            None,
        )
        .await
        .unwrap();
    let baseline = peak_rss_bytes();

    let key = format!("{user}/fifty.mp4");
    let total = 50 * MIB;
    let stored = storage
        .put_stream(&bucket, &key, "video/mp4", pattern_stream(total), None)
        .await
        .unwrap();
    let extra = peak_rss_bytes().saturating_sub(baseline);
    assert_eq!(stored.size, total);
    assert!(
        extra < 32 * MIB,
        "peak memory grew by {} MiB while streaming 50 MiB",
        extra / MIB
    );
    let meta = storage.head(&bucket, &key).await.unwrap().unwrap();
    assert_eq!(meta.size, total);
    assert_eq!(meta.content_type.as_deref(), Some("video/mp4"));
    let url = storage
        .presign_get(&bucket, &key, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        fetch_digest(&url).await,
        (200, total, pattern_sha256(total))
    );
}
