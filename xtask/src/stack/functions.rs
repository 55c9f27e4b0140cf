//! The pipeline's Lambda functions as xtask builds, runs, measures and packages them: their names, and the
//! environment they get on the local stack.

use super::{aws, fal_emulator, watch};

pub const FAL_IMAGE: &str = "fal-image";
pub const FAL_WEBHOOK: &str = "fal-webhook";
pub const RECONCILER: &str = "reconciler";
/// The functions behind HTTP: served by `cargo lambda watch` on the stack, measured by the bench.
pub const HTTP: [&str; 2] = [FAL_IMAGE, FAL_WEBHOOK];
/// Every function of the workspace (`cargo xtask package` zips them all by default).
pub const ALL: [&str; 3] = [FAL_IMAGE, FAL_WEBHOOK, RECONCILER];

/// The functions' settings on the local stack, given where moto, the fal emulator (also the stack's Supabase Auth)
/// and `cargo lambda watch` listen. `stack.env` holds them all, whence the bench and `cargo xtask reconcile` pass
/// them on.
pub fn env(moto_url: &str, emulator_port: u16, watch_port: u16) -> Vec<(&'static str, String)> {
    let emulator_url = fal_emulator::url(emulator_port);
    vec![
        ("AWS_ENDPOINT_URL", moto_url.to_string()),
        ("AWS_REGION", aws::REGION.to_string()),
        ("AWS_DEFAULT_REGION", aws::REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", aws::ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", aws::SECRET_KEY.to_string()),
        ("APP_SECRET_ID", aws::SECRET_ID.to_string()),
        ("WORKSPACE_BUCKET", aws::WORKSPACE_BUCKET.to_string()),
        ("LIBRARY_BUCKET", aws::LIBRARY_BUCKET.to_string()),
        (
            "FAL_WEBHOOK_URL",
            watch::function_url(watch_port, FAL_WEBHOOK),
        ),
        (
            "FAL_JWKS_URL",
            format!("{emulator_url}/.well-known/jwks.json"),
        ),
        ("MEDIA_ALLOWED_HOSTS", format!("127.0.0.1:{emulator_port}")),
        ("MEDIA_ALLOW_HTTP", "true".to_string()),
        // User tokens: issuer `<SUPABASE_URL>/auth/v1`, keys from the JWKS the emulator serves under it.
        ("SUPABASE_URL", emulator_url),
        // The API clients call, whose URLs the storage links start with: fal-image's function URL under watch.
        ("PUBLIC_API_URL", watch::function_url(watch_port, FAL_IMAGE)),
        // Short backoff so fault tests of sync retries take a second, not seven.
        ("FAL_RETRY_BASE_MS", "100".to_string()),
        // A stalled media fetch gives up after 5 s, not 30, so the slow-media fault test takes seconds.
        ("MEDIA_READ_TIMEOUT_SECS", "5".to_string()),
    ]
}

/// The keys of [`env`], in its order.
pub fn env_keys() -> impl Iterator<Item = &'static str> {
    env("", 0, 0).into_iter().map(|(k, _)| k)
}
