//! Token verification against a loopback JWKS endpoint, with keys made here (ES256, RS256) and the legacy secret.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const LEGACY: &str = "legacy-jwt-secret";

struct Keys {
    ec: EcdsaKeyPair,
    rsa: RsaKeyPair,
}

fn keys() -> Keys {
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    Keys { ec, rsa }
}

/// The public JWKS of `k`, as Supabase publishes it (kids `ec-1`, `rsa-1`).
fn jwks(k: &Keys) -> Value {
    let point = k.ec.public_key().as_ref();
    let rsa = k.rsa.public_key();
    json!({"keys": [
        {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ec-1", "use": "sig",
         "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])},
        {"kty": "RSA", "alg": "RS256", "kid": "rsa-1", "use": "sig",
         "n": B64.encode(rsa.modulus().big_endian_without_leading_zero()),
         "e": B64.encode(rsa.exponent().big_endian_without_leading_zero())},
    ]})
}

/// A compact JWS over `claims` with `header`, signed by `sign`.
fn jws(header: Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

fn es256(k: &Keys, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    jws(header, claims, |m| {
        k.ec.sign(&SystemRandom::new(), m)
            .unwrap()
            .as_ref()
            .to_vec()
    })
}

fn rs256(k: &Keys, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    jws(header, claims, |m| {
        let mut sig = vec![0; k.rsa.public_modulus_len()];
        k.rsa
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), m, &mut sig)
            .unwrap();
        sig
    })
}

fn hs256(secret: &[u8], header: Value, claims: &Value) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    jws(header, claims, |m| {
        aws_lc_rs::hmac::sign(&key, m).as_ref().to_vec()
    })
}

/// A loopback Supabase: serves `body` (shared, so a test can change it) at the JWKS path, counting requests.
struct Project {
    url: Url,
    body: Arc<Mutex<Option<String>>>,
    hits: Arc<AtomicUsize>,
}

async fn project(jwks: &Value) -> Project {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let body = Arc::new(Mutex::new(Some(jwks.to_string())));
    let hits = Arc::new(AtomicUsize::new(0));
    let (served, counter) = (body.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = match served.lock().unwrap().clone() {
                Some(b) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                ),
                None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned(),
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    Project { url, body, hits }
}

impl Project {
    fn tokens(&self) -> UserTokens {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        UserTokens::new(http, Some(&self.url))
    }

    fn claims(&self, user: Uuid) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": format!("{}/auth/v1", self.url.as_str().trim_end_matches('/')),
            "aud": "authenticated", "role": "authenticated", "sub": user,
            "exp": now + 3600, "iat": now, "session_id": Uuid::new_v4(), "is_anonymous": false,
        })
    }
}

fn bearer_of(t: &str) -> String {
    format!("Bearer {t}")
}

fn legacy() -> SecretString {
    SecretString::from(LEGACY.to_owned())
}

/// A token the project's legacy secret signed, as Supabase's auth server signs them.
fn legacy_hs256(claims: &Value) -> String {
    hs256(
        LEGACY.as_bytes(),
        json!({"alg": "HS256", "typ": "JWT"}),
        claims,
    )
}

#[tokio::test]
async fn es256_rs256_and_legacy_hs256_tokens_give_their_user() {
    let k = keys();
    let p = project(&jwks(&k)).await;
    let tokens = p.tokens();
    let user = Uuid::new_v4();
    let claims = p.claims(user);
    let hs = legacy_hs256(&claims);
    for t in [es256(&k, "ec-1", &claims), rs256(&k, "rsa-1", &claims), hs] {
        let got = tokens.verify(Some(&bearer_of(&t)), Some(&legacy())).await;
        assert_eq!(got, Ok(user), "{t}");
    }
    let mut anonymous = p.claims(user);
    anonymous["is_anonymous"] = json!(true);
    let t = es256(&k, "ec-1", &anonymous);
    assert_eq!(tokens.verify(Some(&bearer_of(&t)), None).await, Ok(user));
    assert_eq!(
        p.hits.load(Ordering::SeqCst),
        1,
        "one JWKS fetch serves them all"
    );
}

#[tokio::test]
async fn claims_other_than_a_signed_in_users_are_refused() {
    let k = keys();
    let p = project(&jwks(&k)).await;
    let tokens = p.tokens();
    let user = Uuid::new_v4();
    let now = chrono::Utc::now().timestamp();
    let changed = |key: &str, value: Value| {
        let mut c = p.claims(user);
        c[key] = value;
        c
    };
    let without = |key: &str| {
        let mut c = p.claims(user);
        c.as_object_mut().unwrap().remove(key);
        c
    };
    for (what, claims) in [
        ("expired", changed("exp", json!(now - 120))),
        ("not yet valid", changed("nbf", json!(now + 600))),
        ("wrong aud", changed("aud", json!("anon"))),
        (
            "wrong iss",
            changed("iss", json!("https://other.supabase.co/auth/v1")),
        ),
        ("anon role", changed("role", json!("anon"))),
        ("service role", changed("role", json!("service_role"))),
        ("no role", without("role")),
        ("no exp", without("exp")),
        ("sub not a uuid", changed("sub", json!("admin"))),
    ] {
        let t = es256(&k, "ec-1", &claims);
        let got = tokens.verify(Some(&bearer_of(&t)), Some(&legacy())).await;
        assert_eq!(got, Err(AuthError::Invalid), "{what}");
    }
}

#[tokio::test]
async fn the_key_decides_the_algorithm_never_the_header() {
    let k = keys();
    let p = project(&jwks(&k)).await;
    let tokens = p.tokens();
    let claims = p.claims(Uuid::new_v4());
    let rsa_public = k.rsa.public_key().as_ref().to_vec();
    let ec_public = k.ec.public_key().as_ref().to_vec();
    let none = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none", "kid": "ec-1"}).to_string()),
        B64.encode(claims.to_string())
    );
    let mut tampered = es256(&k, "ec-1", &claims);
    let mut other = claims.clone();
    other["sub"] = json!(Uuid::new_v4());
    let payload = B64.encode(other.to_string());
    let parts: Vec<&str> = tampered.split('.').collect();
    tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    for (what, t) in [
        ("alg none", none),
        (
            "HS256 with the RSA public key",
            hs256(
                &rsa_public,
                json!({"alg": "HS256", "kid": "rsa-1"}),
                &claims,
            ),
        ),
        (
            "HS256 with the EC public key",
            hs256(&ec_public, json!({"alg": "HS256", "kid": "ec-1"}), &claims),
        ),
        ("RS256 header on the EC key", rs256(&k, "ec-1", &claims)),
        ("ES256 header on the RSA key", es256(&k, "rsa-1", &claims)),
        (
            "ES256 without a kid",
            jws(json!({"alg": "ES256"}), &claims, |m| {
                k.ec.sign(&SystemRandom::new(), m)
                    .unwrap()
                    .as_ref()
                    .to_vec()
            }),
        ),
        ("tampered payload", tampered),
        ("not a JWT", "not.a.jwt".to_owned()),
    ] {
        let got = tokens.verify(Some(&bearer_of(&t)), Some(&legacy())).await;
        assert_eq!(got, Err(AuthError::Invalid), "{what}");
    }
    // Without a legacy secret, no HS256 token verifies, whatever it was signed with.
    let hs = hs256(LEGACY.as_bytes(), json!({"alg": "HS256"}), &claims);
    assert_eq!(
        tokens.verify(Some(&bearer_of(&hs)), None).await,
        Err(AuthError::Invalid)
    );
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_a_minute_and_a_down_jwks_fails_closed() {
    let k = keys();
    let p = project(&jwks(&k)).await;
    let tokens = p.tokens();
    let claims = p.claims(Uuid::new_v4());
    assert!(
        tokens
            .verify(Some(&bearer_of(&es256(&k, "ec-1", &claims))), None)
            .await
            .is_ok()
    );
    for n in 0..5 {
        let t = es256(&k, &format!("rotated-{n}"), &claims);
        assert_eq!(
            tokens.verify(Some(&bearer_of(&t)), None).await,
            Err(AuthError::Invalid)
        );
    }
    assert_eq!(
        p.hits.load(Ordering::SeqCst),
        1,
        "the refetch waits a minute after the last fetch"
    );

    let down = project(&jwks(&k)).await;
    *down.body.lock().unwrap() = None;
    let tokens = down.tokens();
    let t = es256(&k, "ec-1", &down.claims(Uuid::new_v4()));
    for _ in 0..3 {
        assert_eq!(
            tokens.verify(Some(&bearer_of(&t)), None).await,
            Err(AuthError::KeysUnavailable),
            "no key set at all: neither accepted nor the caller's fault"
        );
    }
    assert_eq!(
        down.hits.load(Ordering::SeqCst),
        1,
        "a failing endpoint is backed off"
    );
}

/// A project that signs with the legacy secret alone publishes an empty JWKS: its users' HS256 tokens pass, and a
/// token naming a `kid` is refused as invalid (401), not as keys unavailable (503), from the one cached fetch.
#[tokio::test]
async fn an_empty_jwks_of_a_legacy_secret_project_refuses_kid_tokens_as_invalid() {
    let k = keys();
    let p = project(&json!({"keys": []})).await;
    let tokens = p.tokens();
    let user = Uuid::new_v4();
    let claims = p.claims(user);
    let hs = legacy_hs256(&claims);
    assert_eq!(
        tokens.verify(Some(&bearer_of(&hs)), Some(&legacy())).await,
        Ok(user)
    );
    for _ in 0..3 {
        let t = rs256(&k, "rsa-1", &claims);
        assert_eq!(
            tokens.verify(Some(&bearer_of(&t)), Some(&legacy())).await,
            Err(AuthError::Invalid)
        );
    }
    assert_eq!(p.hits.load(Ordering::SeqCst), 1, "the empty set is cached");
}

#[tokio::test]
async fn missing_headers_and_a_missing_project_url_are_told_apart() {
    let tokens = UserTokens::new(reqwest::Client::new(), None);
    assert_eq!(tokens.verify(None, None).await, Err(AuthError::Missing));
    assert_eq!(
        tokens.verify(Some("  "), None).await,
        Err(AuthError::Missing)
    );
    assert_eq!(
        tokens.verify(Some("Bearer x.y.z"), None).await,
        Err(AuthError::NotConfigured)
    );
}
