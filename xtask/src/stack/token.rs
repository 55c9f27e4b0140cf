//! User tokens for the local stack: HS256 JWTs shaped like Supabase's, signed with `SUPABASE_JWT_SECRET`.

use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use uuid::Uuid;

pub const ISSUER: &str = "gen-pipeline-local";
pub const AUDIENCE: &str = "authenticated";

#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    aud: &'a str,
    role: &'a str,
    iat: i64,
    exp: i64,
    iss: &'a str,
}

/// A user JWT valid for `ttl` from now.
pub fn make_jwt(secret: &str, user_id: Uuid, ttl: Duration) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).context("ttl too large")?;
    let claims = Claims {
        sub: user_id.to_string(),
        aud: AUDIENCE,
        role: "authenticated",
        iat: now,
        exp: now + ttl,
        iss: ISSUER,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("cannot sign the token")
}

/// Makes sure the user and its profile exist.
pub async fn ensure_user(database_url: &str, user_id: Uuid) -> anyhow::Result<()> {
    let client = gen_pipeline::db::connect(database_url)
        .await
        .context("cannot connect to the database")?;
    gen_pipeline::db::users::ensure(&client, user_id)
        .await
        .context("cannot create the user")?;
    Ok(())
}

/// Creates the user in the stack's database and returns a JWT for it, valid for an hour.
pub async fn ensure_user_and_token(env: &super::StackEnv, user_id: Uuid) -> anyhow::Result<String> {
    ensure_user(env.require("DATABASE_URL")?, user_id).await?;
    make_jwt(
        env.require("SUPABASE_JWT_SECRET")?,
        user_id,
        Duration::from_secs(3600),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn token_verifies_with_the_secret_and_names_the_user() {
        let user = Uuid::new_v4();
        let jwt = make_jwt("s3cret", user, Duration::from_secs(3600)).expect("signs");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .expect("verifies");
        assert_eq!(data.claims["sub"], user.to_string());
        assert_eq!(data.claims["role"], "authenticated");
        let exp = data.claims["exp"].as_i64().unwrap_or_default();
        let iat = data.claims["iat"].as_i64().unwrap_or_default();
        assert_eq!(exp - iat, 3600);
    }

    #[test]
    fn token_fails_with_another_secret() {
        let jwt = make_jwt("one", Uuid::new_v4(), Duration::from_secs(60)).expect("signs");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &jwt,
                &DecodingKey::from_secret(b"two"),
                &validation
            )
            .is_err()
        );
    }
}
