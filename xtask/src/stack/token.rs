//! User tokens for the local stack, shaped like Supabase Auth's access tokens: ES256 or RS256 with the stack's
//! signing keys (`auth_keys`, the kind a project has since asymmetric keys), or HS256 with the legacy
//! `SUPABASE_JWT_SECRET`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

use super::auth_keys::{self, PrivateJwk, SigningKeys};

/// The `aud` and `role` of a signed-in user's token.
pub const AUTHENTICATED: &str = "authenticated";
/// How long a token is valid (Supabase's default JWT expiry).
pub const TTL: Duration = Duration::from_secs(3600);

/// The algorithm of `cargo xtask token --alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenAlg {
    #[value(name = "ES256")]
    Es256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "HS256")]
    Hs256,
}

/// What signs a token: one of the stack's signing keys, or the legacy shared secret.
pub enum Signer<'a> {
    Key(&'a PrivateJwk),
    Secret(&'a str),
}

/// The issuer of the project at `supabase_url`: `<SUPABASE_URL>/auth/v1`.
pub fn issuer(supabase_url: &str) -> String {
    format!("{}/auth/v1", supabase_url.trim_end_matches('/'))
}

/// A user's access token valid for `ttl` from now, with Supabase Auth's header (`alg`, `kid` for a key, `typ`) and
/// claims (an email/password sign-in of a non-anonymous user).
pub fn make_jwt(
    signer: &Signer<'_>,
    supabase_url: &str,
    user_id: Uuid,
    ttl: Duration,
) -> anyhow::Result<String> {
    let iat = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).context("ttl too large")?;
    let claims = json!({
        "iss": issuer(supabase_url),
        "sub": user_id.to_string(),
        "aud": AUTHENTICATED,
        "exp": iat + ttl,
        "iat": iat,
        "email": format!("{user_id}@local.test"),
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
        "role": AUTHENTICATED,
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": iat}],
        "session_id": Uuid::new_v4().to_string(),
        "is_anonymous": false,
    });
    let (header, key) = match signer {
        Signer::Key(jwk) => {
            let mut header = Header::new(jwk.algorithm());
            header.kid = Some(jwk.kid().to_owned());
            (header, jwk.encoding_key()?)
        }
        Signer::Secret(secret) => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(secret.as_bytes()),
        ),
    };
    jsonwebtoken::encode(&header, &claims, &key).context("cannot sign the token")
}

/// A token for `user_id` signed with `alg`, from the stack's settings `var` looks up: `SUPABASE_URL`, and
/// `SUPABASE_SIGNING_KEYS` (the private key set's path) or, for HS256, `SUPABASE_JWT_SECRET`.
pub fn token_from(
    var: impl Fn(&str) -> anyhow::Result<String>,
    alg: TokenAlg,
    user_id: Uuid,
) -> anyhow::Result<String> {
    let supabase_url = var("SUPABASE_URL")?;
    let alg = match alg {
        TokenAlg::Hs256 => {
            let secret = var("SUPABASE_JWT_SECRET")?;
            return make_jwt(&Signer::Secret(&secret), &supabase_url, user_id, TTL);
        }
        TokenAlg::Es256 => Algorithm::ES256,
        TokenAlg::Rs256 => Algorithm::RS256,
    };
    let keys = SigningKeys::read(Path::new(&var(auth_keys::ENV_KEY)?))?;
    make_jwt(
        &Signer::Key(keys.for_algorithm(alg)?),
        &supabase_url,
        user_id,
        TTL,
    )
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

/// Creates the user in the stack's database and returns an ES256 token for it, valid for an hour.
pub async fn ensure_user_and_token(env: &super::StackEnv, user_id: Uuid) -> anyhow::Result<String> {
    ensure_user(env.require("DATABASE_URL")?, user_id).await?;
    token_from(
        |key| env.require(key).map(str::to_owned),
        TokenAlg::Es256,
        user_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
    use serde_json::Value;

    const URL: &str = "http://127.0.0.1:4000";

    fn validation(alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_audience(&[AUTHENTICATED]);
        v.set_issuer(&[format!("{URL}/auth/v1")]);
        v.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        v
    }

    /// Verifies `jwt` as a client of the JWKS would: the key its `kid` names, the algorithm that key has.
    fn verify_with_jwks(jwt: &str, keys: &SigningKeys) -> anyhow::Result<Value> {
        let set: JwkSet = serde_json::from_str(&serde_json::to_string(&keys.public())?)?;
        let header = decode_header(jwt)?;
        let kid = header.kid.context("no kid")?;
        let jwk = set.find(&kid).context("kid not in the set")?;
        let alg = keys
            .keys
            .iter()
            .find(|k| k.kid() == kid)
            .context("kid")?
            .algorithm();
        Ok(decode::<Value>(jwt, &DecodingKey::from_jwk(jwk)?, &validation(alg))?.claims)
    }

    #[test]
    fn es256_and_rs256_tokens_verify_with_the_public_set_and_carry_supabase_claims() {
        let keys = SigningKeys::generate().expect("generates");
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let user = Uuid::new_v4();
            let key = keys.for_algorithm(alg).expect("has the key");
            let jwt = make_jwt(&Signer::Key(key), URL, user, TTL).expect("signs");
            let header = decode_header(&jwt).expect("header");
            assert_eq!(header.alg, alg);
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            let c = verify_with_jwks(&jwt, &keys).expect("verifies");
            assert_eq!(c["sub"], user.to_string());
            assert_eq!(c["iss"], format!("{URL}/auth/v1"));
            assert_eq!(c["role"], AUTHENTICATED);
            assert_eq!(c["aal"], "aal1");
            assert_eq!(c["is_anonymous"], false);
            assert_eq!(c["email"], format!("{user}@local.test"));
            assert_eq!(c["app_metadata"]["provider"], "email");
            assert_eq!(c["app_metadata"]["providers"], json!(["email"]));
            assert_eq!(c["user_metadata"], json!({}));
            assert_eq!(c["amr"][0]["method"], "password");
            assert_eq!(c["amr"][0]["timestamp"], c["iat"]);
            let session = c["session_id"].as_str().unwrap_or_default();
            assert!(Uuid::parse_str(session).is_ok(), "session_id {session}");
            let exp = c["exp"].as_i64().unwrap_or_default();
            let iat = c["iat"].as_i64().unwrap_or_default();
            assert_eq!(exp - iat, 3600);
        }
    }

    #[test]
    fn a_token_does_not_verify_with_another_stacks_keys() {
        let ours = SigningKeys::generate().expect("generates");
        let theirs = SigningKeys::generate().expect("generates");
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let key = ours.for_algorithm(alg).expect("has the key");
            let jwt = make_jwt(&Signer::Key(key), URL, Uuid::new_v4(), TTL).expect("signs");
            assert!(verify_with_jwks(&jwt, &theirs).is_err());
        }
    }

    #[test]
    fn hs256_tokens_have_no_kid_and_verify_with_the_secret_only() {
        let user = Uuid::new_v4();
        let jwt = make_jwt(&Signer::Secret("s3cret"), URL, user, TTL).expect("signs");
        let header = decode_header(&jwt).expect("header");
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.kid, None);
        let claims = decode::<Value>(
            &jwt,
            &DecodingKey::from_secret(b"s3cret"),
            &validation(Algorithm::HS256),
        )
        .expect("verifies")
        .claims;
        assert_eq!(claims["sub"], user.to_string());
        assert!(
            decode::<Value>(
                &jwt,
                &DecodingKey::from_secret(b"other"),
                &validation(Algorithm::HS256)
            )
            .is_err()
        );
    }

    #[test]
    fn token_from_reads_the_key_file_the_settings_name() {
        let dir = std::env::temp_dir().join(format!("token-{}", Uuid::new_v4()));
        let files = auth_keys::AuthFiles {
            signing_keys: dir.join("signing-keys.json"),
            jwks: dir.join("jwks.json"),
        };
        let keys = files.create().expect("creates");
        let path = files.signing_keys.display().to_string();
        let var = |k: &str| -> anyhow::Result<String> {
            match k {
                "SUPABASE_URL" => Ok(format!("{URL}/")),
                "SUPABASE_SIGNING_KEYS" => Ok(path.clone()),
                "SUPABASE_JWT_SECRET" => Ok("s3cret".into()),
                _ => anyhow::bail!("{k} unset"),
            }
        };
        let user = Uuid::new_v4();
        for alg in [TokenAlg::Es256, TokenAlg::Rs256] {
            let jwt = token_from(var, alg, user).expect("mints");
            assert_eq!(
                verify_with_jwks(&jwt, &keys).expect("verifies")["sub"],
                user.to_string()
            );
        }
        let jwt = token_from(var, TokenAlg::Hs256, user).expect("mints");
        assert!(
            decode::<Value>(
                &jwt,
                &DecodingKey::from_secret(b"s3cret"),
                &validation(Algorithm::HS256)
            )
            .is_ok()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
