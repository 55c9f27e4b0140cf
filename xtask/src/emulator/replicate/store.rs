//! Every prediction the emulator has seen, and the account's webhook secret that signs their deliveries.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use anyhow::Context as _;
use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use gen_pipeline::standard_webhooks;
use rand::RngCore as _;
use secrecy::SecretString;
use tokio::sync::watch;

use super::Config;
use super::prediction::Prediction;
use crate::emulator::state::DeliveryAttempt;

/// Random bytes in a generated secret (Standard Webhooks asks for 24 to 64).
const SECRET_BYTES: usize = 32;

pub struct Store {
    /// The `whsec_…` secret `GET /v1/webhooks/default/secret` hands out.
    secret: SecretString,
    key: hmac::Key,
    predictions: Mutex<HashMap<String, Prediction>>,
}

impl Store {
    /// Takes the configured secret, or makes one; a malformed one stops the emulator from starting.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let secret = config
            .webhook_secret
            .clone()
            .unwrap_or_else(generate_secret);
        let key = standard_webhooks::key_of(&secret)
            .context("FAL_EMULATOR_REPLICATE_WEBHOOK_SECRET must be whsec_<base64>")?;
        Ok(Store {
            secret,
            key,
            predictions: Mutex::new(HashMap::new()),
        })
    }

    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The Standard Webhooks headers of one delivery attempt made at `timestamp` (unix seconds).
    pub fn signed_headers(
        &self,
        webhook_id: &str,
        timestamp: u64,
        body: &[u8],
    ) -> Vec<(&'static str, String)> {
        let seconds = i64::try_from(timestamp).unwrap_or(i64::MAX);
        let signature = standard_webhooks::sign(&self.key, webhook_id, seconds, body);
        vec![
            ("webhook-id", webhook_id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ]
    }

    /// Records a new prediction; the receiver turns true once it is over.
    pub fn insert(&self, prediction: Prediction) -> watch::Receiver<bool> {
        let finished = prediction.subscribe();
        self.lock().insert(prediction.id.clone(), prediction);
        finished
    }

    /// Runs `f` on prediction `id`; `None` when there is no such prediction.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&mut Prediction) -> R) -> Option<R> {
        self.lock().get_mut(id).map(f)
    }

    pub fn record_attempt(&self, id: &str, attempt: DeliveryAttempt) {
        self.with(id, |p| p.deliveries.push(attempt));
    }

    /// A poisoned lock only means another handler panicked; the map itself is still usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Prediction>> {
        self.predictions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn generate_secret() -> SecretString {
    let mut raw = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    SecretString::from(format!("whsec_{}", B64.encode(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn secrets_are_made_per_start_or_taken_as_given() {
        let made = Store::new(&Config::default()).unwrap();
        let again = Store::new(&Config::default()).unwrap();
        let encoded = made.secret().expose_secret();
        assert_ne!(encoded, again.secret().expose_secret());
        let raw = B64.decode(encoded.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(raw.len(), SECRET_BYTES);

        let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let config = Config {
            webhook_secret: Some(given.into()),
            ..Config::default()
        };
        let store = Store::new(&config).unwrap();
        assert_eq!(store.secret().expose_secret(), given);
        // The Standard Webhooks reference vector.
        let headers = store.signed_headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            headers[2],
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_owned()
            )
        );
        let bad = Config {
            webhook_secret: Some("whsec_***".into()),
            ..Config::default()
        };
        assert!(Store::new(&bad).is_err());
    }
}
