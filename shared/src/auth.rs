//! Who is calling: a Supabase user's access token, verified here with the project's keys. Asymmetric tokens
//! (ES256, RS256) are checked with the key their `kid` names in the project's JWKS
//! (`<SUPABASE_URL>/auth/v1/.well-known/jwks.json`, cached per instance, refetched on an unknown `kid` at most once
//! a minute, failing closed); HS256 tokens only with the legacy JWT secret, when one is configured. The key decides
//! the algorithm, never the token's header: an HS256 header cannot select a public key, a JWKS key verifies only
//! its own algorithm, and `none` is no algorithm at all. `iss`, `aud = authenticated`, `exp`/`nbf` (30 s leeway)
//! and `role = authenticated` are checked: anon and service-role keys are refused, anonymous sign-ins accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;
use uuid::Uuid;

use crate::key_cache::KeySetCache;

/// How long a fetched JWKS is used before it is fetched again (Supabase serves it with a 10-minute cache).
const JWKS_FRESH_FOR: Duration = Duration::from_secs(600);
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// The `aud` and `role` of a signed-in user's access token.
pub const AUTHENTICATED: &str = "authenticated";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Authorization required")]
    Missing,
    #[error("Authentication failed")]
    Invalid,
    /// `SUPABASE_URL` is not set: no token can be checked for its issuer.
    #[error("Server misconfigured")]
    NotConfigured,
    /// The project's JWKS cannot be had and no copy is cached: the token can be neither accepted nor refused
    /// (our fault, not the caller's session's).
    #[error("Authentication temporarily unavailable")]
    KeysUnavailable,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
}

/// A verification key of the project's JWKS, with the one algorithm it verifies.
#[derive(Clone)]
struct UserKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

type Keys = Arc<HashMap<String, UserKey>>;

/// The ES256 (P-256) and RS256 keys of a JWKS, by `kid`. Keys of other types (an `oct` key would turn a public set
/// into an HMAC secret), without a `kid`, or whose `alg` disagrees with their type are skipped. A set with none of
/// them is still a set: a project that signs with the legacy secret alone publishes `{"keys": []}`, and a token
/// naming a `kid` is then the caller's fault (401), not an outage (503).
fn user_keys(body: &[u8]) -> Result<Keys, String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("JWKS is not a key set: {e}"))?;
    let keys: HashMap<String, UserKey> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                _ => return None,
            };
            let declared = jwk.common.key_algorithm;
            let agrees = match algorithm {
                Algorithm::ES256 => matches!(declared, None | Some(KeyAlgorithm::ES256)),
                _ => matches!(declared, None | Some(KeyAlgorithm::RS256)),
            };
            let kid = jwk.common.key_id.clone().filter(|_| agrees)?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, UserKey { algorithm, key }))
        })
        .collect();
    Ok(Arc::new(keys))
}

/// The project's token issuer and its public keys.
pub struct UserTokens {
    issuer: Option<String>,
    keys: Option<KeySetCache<Keys>>,
}

impl UserTokens {
    /// For the Supabase project at `supabase_url` (none: every token is refused as a misconfiguration).
    pub fn new(http: reqwest::Client, supabase_url: Option<&Url>) -> Self {
        let base = supabase_url.map(|u| u.as_str().trim_end_matches('/').to_owned());
        let jwks = base
            .as_ref()
            .and_then(|b| Url::parse(&format!("{b}/auth/v1/.well-known/jwks.json")).ok());
        UserTokens {
            issuer: base.map(|b| format!("{b}/auth/v1")),
            keys: jwks.map(|url| KeySetCache::new(http, url, JWKS_FRESH_FOR, user_keys)),
        }
    }

    /// The user id of an `Authorization: Bearer <token>` header.
    pub async fn verify(
        &self,
        authorization: Option<&str>,
        legacy_secret: Option<&SecretString>,
    ) -> Result<Uuid, AuthError> {
        let token = bearer(authorization)?;
        let (Some(issuer), Some(keys)) = (&self.issuer, &self.keys) else {
            tracing::error!("SUPABASE_URL is not set: user tokens cannot be verified");
            return Err(AuthError::NotConfigured);
        };
        let header = decode_header(token).map_err(|_| AuthError::Invalid)?;
        let (algorithm, key) = match (header.alg, header.kid) {
            (Algorithm::HS256, _) => {
                let secret = legacy_secret.ok_or(AuthError::Invalid)?;
                let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
                (Algorithm::HS256, key)
            }
            (_, Some(kid)) => {
                let k = key_for(keys, &kid).await?;
                (k.algorithm, k.key)
            }
            (_, None) => return Err(AuthError::Invalid),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_audience(&[AUTHENTICATED]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        if claims.role.as_deref() != Some(AUTHENTICATED) {
            return Err(AuthError::Invalid);
        }
        user_id(&claims.sub)
    }
}

/// The key named `kid`: from the cached set, else from one refetch (a rotation publishes the next key first).
/// Failing closed: `Invalid` when it is not in the set, `KeysUnavailable` when no set can be had at all.
async fn key_for(keys: &KeySetCache<Keys>, kid: &str) -> Result<UserKey, AuthError> {
    let (set, served) = keys.keys().await.map_err(|e| {
        tracing::warn!(error = %e, "the project's JWKS is unavailable");
        AuthError::KeysUnavailable
    })?;
    if let Some(k) = set.get(kid) {
        return Ok(k.clone());
    }
    if served.just_fetched {
        return Err(AuthError::Invalid);
    }
    let refetched = keys.refetch(served).await.ok_or(AuthError::Invalid)?;
    refetched.get(kid).cloned().ok_or(AuthError::Invalid)
}

fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let header = authorization
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(AuthError::Missing)?;
    Ok(header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .unwrap_or(header)
        .trim())
}

/// A `sub` claim as a user id (also for claims an API Gateway JWT authorizer already verified).
pub fn user_id(sub: &str) -> Result<Uuid, AuthError> {
    Uuid::parse_str(sub.trim()).map_err(|_| AuthError::Invalid)
}

#[cfg(test)]
mod tests;
