//! Supabase Auth's public keys, for the local stack (whose `SUPABASE_URL` is the emulator's URL):
//! `GET /auth/v1/.well-known/jwks.json` serves the file given with `--supabase-jwks`, read at each request so a
//! rewritten file is a key rotation; `POST /_emulator/auth/jwks-status {"status": N}` makes it answer N instead
//! (a JWKS outage) until set back to 200.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::replies::json_status;
use super::state::AppState;

pub async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    let Some(path) = &state.settings.supabase_jwks else {
        return error(StatusCode::NOT_FOUND, "no Supabase JWKS configured");
    };
    let status = state.jwks_status.load(Ordering::Relaxed);
    if status != 200 {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "emulated JWKS failure");
    }
    match tokio::fs::read(path).await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read the Supabase JWKS");
            error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the JWKS")
        }
    }
}

#[derive(Deserialize)]
pub struct JwksStatus {
    status: u16,
}

pub async fn set_jwks_status(
    State(state): State<Arc<AppState>>,
    Json(body): Json<JwksStatus>,
) -> Response {
    if !(200..=599).contains(&body.status) {
        return error(StatusCode::BAD_REQUEST, "status must be 200..=599");
    }
    state.jwks_status.store(body.status, Ordering::Relaxed);
    json_status(StatusCode::OK, json!({"status": body.status}))
}

/// GoTrue's error shape.
fn error(status: StatusCode, msg: &str) -> Response {
    json_status(status, json!({"code": status.as_u16(), "msg": msg}))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gen_pipeline::auth::{AuthError, UserTokens};
    use jsonwebtoken::Algorithm;
    use url::Url;
    use uuid::Uuid;

    use super::super::{Settings, start};
    use crate::stack::auth_keys::{AuthFiles, SigningKeys};
    use crate::stack::token::{Signer, TTL, make_jwt};

    struct Served {
        base: String,
        http: reqwest::Client,
        keys: SigningKeys,
        files: AuthFiles,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            if let Some(dir) = self.files.signing_keys.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    async fn served(with_jwks: bool) -> Served {
        let dir = std::env::temp_dir().join(format!("supabase-auth-{}", Uuid::new_v4()));
        let files = AuthFiles {
            signing_keys: dir.join("signing-keys.json"),
            jwks: dir.join("jwks.json"),
        };
        let keys = files.create().expect("keys");
        let settings = Settings {
            supabase_jwks: with_jwks.then(|| files.jwks.clone()),
            ..Settings::default()
        };
        let running = start("127.0.0.1:0".parse().expect("addr"), settings)
            .await
            .expect("starts");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        Served {
            base: format!("http://{}", running.addr),
            http,
            keys,
            files,
        }
    }

    impl Served {
        async fn jwks_status(&self) -> u16 {
            let url = format!("{}/auth/v1/.well-known/jwks.json", self.base);
            let resp = self.http.get(url).send().await.expect("answers");
            resp.status().as_u16()
        }

        async fn set_status(&self, status: u16) -> u16 {
            let url = format!("{}/_emulator/auth/jwks-status", self.base);
            let body = serde_json::json!({ "status": status });
            let resp = self
                .http
                .post(url)
                .json(&body)
                .send()
                .await
                .expect("answers");
            resp.status().as_u16()
        }

        /// Verified as the functions verify: a fresh verifier (no cached keys) for `SUPABASE_URL` = the emulator.
        async fn verify(&self, jwt: &str) -> Result<Uuid, AuthError> {
            let url = Url::parse(&self.base).expect("url");
            let tokens = UserTokens::new(self.http.clone(), Some(&url));
            tokens.verify(Some(&format!("Bearer {jwt}")), None).await
        }

        fn token(&self, alg: Algorithm, user: Uuid) -> String {
            let key = self.keys.for_algorithm(alg).expect("key");
            make_jwt(&Signer::Key(key), &self.base, user, TTL).expect("signs")
        }
    }

    #[tokio::test]
    async fn the_served_jwks_is_the_file_and_verifies_stack_tokens() {
        let s = served(true).await;
        let url = format!("{}/auth/v1/.well-known/jwks.json", s.base);
        let body = s.http.get(url).send().await.expect("answers");
        assert_eq!(body.status(), 200);
        assert_eq!(
            body.text().await.expect("text"),
            std::fs::read_to_string(&s.files.jwks).expect("file")
        );
        for alg in [Algorithm::ES256, Algorithm::RS256] {
            let user = Uuid::new_v4();
            assert_eq!(s.verify(&s.token(alg, user)).await, Ok(user), "{alg:?}");
        }
        // HS256 needs the legacy secret, which this verifier has not got.
        let hs = make_jwt(&Signer::Secret("legacy"), &s.base, Uuid::new_v4(), TTL).expect("signs");
        assert_eq!(s.verify(&hs).await, Err(AuthError::Invalid));
    }

    #[tokio::test]
    async fn the_jwks_status_switch_makes_verification_fail_closed_until_reset() {
        let s = served(true).await;
        let user = Uuid::new_v4();
        let jwt = s.token(Algorithm::ES256, user);
        assert_eq!(s.set_status(503).await, 200);
        assert_eq!(s.jwks_status().await, 503);
        // No key set fetched yet: neither accepted nor blamed on the token.
        assert_eq!(s.verify(&jwt).await, Err(AuthError::KeysUnavailable));
        assert_eq!(s.set_status(200).await, 200);
        assert_eq!(s.jwks_status().await, 200);
        assert_eq!(s.verify(&jwt).await, Ok(user));
        assert_eq!(s.set_status(99).await, 400);
    }

    #[tokio::test]
    async fn without_a_jwks_file_the_route_is_not_found() {
        let s = served(false).await;
        assert_eq!(s.jwks_status().await, 404);
    }
}
