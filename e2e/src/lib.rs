//! End-to-end tests live in `tests/e2e/`: they drive both functions under `cargo lambda watch` over HTTP.
//! Their support is shared with the adapter tests through `shared/tests/common/mod.rs` (the stack's coordinates,
//! and `as_user`, which runs statements as a signed-in client under the database's row level security) and
//! `tests/e2e/support.rs` (users, tokens, the functions' URLs).

use uuid::Uuid;

/// The credential query fal-image puts on a job's webhook URL: `job_id=<id>&token=<token>`, the token being
/// [`job_token`]. `secret` is the deployment's `FAL_WEBHOOK_SECRET`.
pub fn webhook_query(secret: &str, job_id: Uuid) -> Vec<(&'static str, String)> {
    vec![
        ("job_id", job_id.to_string()),
        ("token", job_token(secret, job_id)),
    ]
}

/// A job's webhook token, exactly as fal-image makes it: lowercase hex HMAC-SHA256(secret, hyphenated job id).
pub fn job_token(secret: &str, job_id: Uuid) -> String {
    gen_pipeline::webhook_auth::job_token(&secrecy::SecretString::from(secret), job_id)
}
