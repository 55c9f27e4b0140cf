//! fal-image's job routes: job ids that are someone else's, not uuids, or hostile, other methods, and tokens in
//! another user's name.

use super::*;

#[tokio::test]
async fn job_routes_refuse_others_jobs_and_hostile_ids() {
    let world = World::new().await;
    let v = &world.victim;
    let now_s = now();
    let mut rows: Vec<Row> = Vec::new();

    // --- With the caller's own token: job ids that are someone else's, not uuids, or hostile --------------
    let get = |id: &str| (Method::GET, format!("/jobs/{id}"));
    let cancel = |id: &str| (Method::POST, format!("/jobs/{id}/cancel"));
    let nil = Uuid::nil().to_string();
    let uuid_then_sql = format!("{}{OR_TRUE}", v.queued_job);
    let delete = (Method::DELETE, format!("/jobs/{}", v.queued_job));
    for (name, (method, path), status) in [
        ("GET another user's queued job", get(&v.queued_job), 404),
        (
            "cancel another user's queued job",
            cancel(&v.queued_job),
            404,
        ),
        (
            "GET another user's completed job",
            get(&v.completed_job),
            404,
        ),
        (
            "cancel another user's completed job (404, not 409)",
            cancel(&v.completed_job),
            404,
        ),
        ("GET a job id that is not a uuid", get("not-a-uuid"), 404),
        ("GET the nil job id", get(&nil), 404),
        ("GET a job id followed by SQL", get(&uuid_then_sql), 404),
        ("cancel a job id that is SQL", cancel(DROP), 404),
        (
            "GET an encoded ../../etc/passwd job id",
            get("..%2F..%2Fetc%2Fpasswd"),
            404,
        ),
        ("DELETE a job", delete, 404),
        ("GET /fal-image", (Method::GET, "/fal-image".into()), 405),
    ] {
        let target = call(method, path, Auth::Caller);
        rows.push(row(name, target, Vec::new(), status).await);
    }

    // --- Another user's job without a token, or with one in their name that is not theirs ----------------
    let other_secret = hs_token(
        json!({"sub": v.id, "exp": now_s + 600}),
        "not-the-secret",
        jsonwebtoken::Algorithm::HS256,
    );
    let bearer = |token: String| Auth::Header(format!("Bearer {token}"));
    for (name, (method, path), auth) in [
        (
            "GET another user's job without a token",
            get(&v.queued_job),
            Auth::None,
        ),
        (
            "GET another user's job with an alg none token in their name",
            get(&v.queued_job),
            bearer(alg_none_token(v.id)),
        ),
        (
            "cancel another user's job with a token in their name signed with another secret",
            cancel(&v.queued_job),
            bearer(other_secret),
        ),
        (
            "cancel another user's job with their expired token",
            cancel(&v.queued_job),
            bearer(jwt_for(v.id, -3600)),
        ),
    ] {
        let target = call(method, path, auth);
        rows.push(row(name, target, Vec::new(), 401).await);
    }

    world.run("job routes", rows).await;
}

/// The storage signing routes storage-js calls: bodies past `MAX_BODY_BYTES` are 413 and more paths than one
/// call signs are 400, with Supabase's error shape; a call at the limit is answered.
#[tokio::test]
async fn storage_signing_bodies_past_their_bounds_are_refused() {
    let world = World::new().await;
    // Paths of a user no row calls as (the answer names each path, and must not name the victim).
    let someone = Uuid::new_v4();
    let many = |n: usize| {
        let paths: Vec<String> = (0..n).map(|i| format!("{someone}/{i}.png")).collect();
        serde_json::to_vec(&json!({ "expiresIn": 60, "paths": paths })).unwrap()
    };
    let big_one =
        serde_json::to_vec(&json!({ "expiresIn": 60, "pad": "x".repeat(2 << 20) })).unwrap();
    let sign = |path: String| call(Method::POST, path, Auth::Caller);
    let one = format!("/storage/v1/object/sign/workspace-temp/{someone}/a.png");
    let batch = "/storage/v1/object/sign/workspace-temp".to_owned();
    let mut rows = Vec::new();
    for (name, target, body, status) in [
        ("createSignedUrl with a 2 MiB body", sign(one), big_one, 413),
        (
            "createSignedUrls with 1001 paths",
            sign(batch.clone()),
            many(1001),
            400,
        ),
        (
            "createSignedUrls with 1000 paths (the limit)",
            sign(batch),
            many(1000),
            200,
        ),
    ] {
        rows.push(row(name, target, body, status).await);
    }
    world.run("storage signing bounds", rows).await;
}
