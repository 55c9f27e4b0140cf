//! fal-image's authentication: missing, malformed, expired, forged and wrongly signed tokens, and the order of
//! the checks (the token before the body's size, type and syntax).

use super::*;

#[tokio::test]
async fn fal_image_requests_without_a_valid_token_are_row() {
    let world = World::new().await;
    let jwt_secret = stack_var("SUPABASE_JWT_SECRET");
    let sync = sync_model();
    let mut rows: Vec<Row> = Vec::new();

    // The token is checked first, as Supabase's gateway and the API's JWT authorizer do: an anonymous request is
    // 401 whatever its body (its size, type and syntax are the authenticated caller's errors, `body.rs`).
    let anonymous_text = Target::Api {
        method: Method::POST,
        path: "/fal-image".into(),
        auth: Auth::None,
        content_type: Some("text/plain"),
    };
    for (name, target, body, status) in [
        (
            "no token and text/plain",
            anonymous_text,
            valid().to_string(),
            401,
        ),
        (
            "no token and truncated JSON",
            post_json(Auth::None),
            "{\"prompt\"".into(),
            401,
        ),
        (
            "no token and 2 MiB",
            post_json(Auth::None),
            pad(2 * MIB, &sync),
            401,
        ),
    ] {
        rows.push(row(name, target, body, status).await);
    }

    let stranger = Uuid::new_v4();
    let now_s = now();
    for (name, auth) in [
        ("no Authorization header", Auth::None),
        ("Bearer garbage", Auth::Header("Bearer garbage".into())),
        ("Bearer and nothing", Auth::Header("Bearer ".into())),
        (
            "Basic credentials",
            Auth::Header("Basic dXNlcjpwYXNz".into()),
        ),
        (
            "expired token",
            Auth::Header(format!("Bearer {}", jwt_for(stranger, -3600))),
        ),
        (
            "token signed with another secret",
            Auth::Header(format!(
                "Bearer {}",
                hs_token(
                    json!({"sub": stranger, "exp": now_s + 600}),
                    "not-the-secret",
                    jsonwebtoken::Algorithm::HS256
                )
            )),
        ),
        (
            "alg none token",
            Auth::Header(format!("Bearer {}", alg_none_token(stranger))),
        ),
        (
            "HS512 token with the right secret",
            Auth::Header(format!(
                "Bearer {}",
                hs_token(
                    json!({"sub": stranger, "exp": now_s + 600}),
                    &jwt_secret,
                    jsonwebtoken::Algorithm::HS512
                )
            )),
        ),
        (
            "token without exp",
            Auth::Header(format!(
                "Bearer {}",
                hs_token(
                    json!({"sub": stranger}),
                    &jwt_secret,
                    jsonwebtoken::Algorithm::HS256
                )
            )),
        ),
        (
            // A valid token of a user who no longer exists (deleted with their profile): not a database fault.
            "valid token of a user with no profile",
            Auth::Header(format!("Bearer {}", jwt_for(stranger, 600))),
        ),
        (
            "token whose sub is SQL",
            Auth::Header(format!(
                "Bearer {}",
                hs_token(
                    json!({"sub": OR_TRUE, "exp": now_s + 600}),
                    &jwt_secret,
                    jsonwebtoken::Algorithm::HS256
                )
            )),
        ),
    ] {
        let name = format!("POST /fal-image: {name}");
        rows.push(row(name, post_json(auth), valid().to_string(), 401).await);
    }

    world.run("fal-image tokens", rows).await;
}
