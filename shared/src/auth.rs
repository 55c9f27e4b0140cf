//! Who is calling: a Supabase user JWT (HS256 with the project's JWT secret; `exp` checked; `sub` is the user id).

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authorization required")]
    Missing,
    #[error("Authentication failed")]
    Invalid,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// The user id of a `Bearer` token, verified here (when no API Gateway authorizer did it before us).
pub fn user_from_bearer(
    authorization: Option<&str>,
    jwt_secret: &SecretString,
) -> Result<Uuid, AuthError> {
    let header = authorization
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(AuthError::Missing)?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .unwrap_or(header)
        .trim();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    validation.leeway = 30;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(jwt_secret.expose_secret().as_bytes()),
        &validation,
    )
    .map_err(|_| AuthError::Invalid)?;
    user_id(&data.claims.sub)
}

/// A `sub` claim as a user id (also for claims an API Gateway JWT authorizer already verified).
pub fn user_id(sub: &str) -> Result<Uuid, AuthError> {
    Uuid::parse_str(sub.trim()).map_err(|_| AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    fn secret() -> SecretString {
        SecretString::from("test-jwt-secret".to_owned())
    }

    fn token(claims: serde_json::Value, key: &str, alg: Algorithm) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn a_valid_token_gives_its_subject() {
        let user = Uuid::new_v4();
        let t = token(
            json!({"sub": user, "exp": now() + 600, "aud": "authenticated"}),
            "test-jwt-secret",
            Algorithm::HS256,
        );
        assert_eq!(
            user_from_bearer(Some(&format!("Bearer {t}")), &secret()),
            Ok(user)
        );
    }

    #[test]
    fn missing_expired_forged_and_malformed_tokens_are_refused() {
        let user = Uuid::new_v4();
        assert_eq!(user_from_bearer(None, &secret()), Err(AuthError::Missing));
        assert_eq!(
            user_from_bearer(Some("  "), &secret()),
            Err(AuthError::Missing)
        );
        let expired = token(
            json!({"sub": user, "exp": now() - 3600}),
            "test-jwt-secret",
            Algorithm::HS256,
        );
        let forged = token(
            json!({"sub": user, "exp": now() + 600}),
            "another-secret",
            Algorithm::HS256,
        );
        let no_exp = token(json!({"sub": user}), "test-jwt-secret", Algorithm::HS256);
        let not_uuid = token(
            json!({"sub": "admin", "exp": now() + 600}),
            "test-jwt-secret",
            Algorithm::HS256,
        );
        let hs512 = token(
            json!({"sub": user, "exp": now() + 600}),
            "test-jwt-secret",
            Algorithm::HS512,
        );
        for t in [
            expired,
            forged,
            no_exp,
            not_uuid,
            hs512,
            "not.a.jwt".into(),
            "garbage".into(),
        ] {
            assert_eq!(
                user_from_bearer(Some(&format!("Bearer {t}")), &secret()),
                Err(AuthError::Invalid),
                "{t}"
            );
        }
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let t = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(
                r#"{{"sub":"{}","exp":{}}}"#,
                Uuid::new_v4(),
                now() + 600
            ))
        );
        assert_eq!(
            user_from_bearer(Some(&format!("Bearer {t}")), &secret()),
            Err(AuthError::Invalid)
        );
    }
}
