//! fal's webhook signature: Ed25519 over `request_id \n user_id \n timestamp \n hex(sha256(body))`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How far a delivery's timestamp may be from our clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

pub const HEADER_REQUEST_ID: &str = "x-fal-webhook-request-id";
pub const HEADER_USER_ID: &str = "x-fal-webhook-user-id";
pub const HEADER_TIMESTAMP: &str = "x-fal-webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "x-fal-webhook-signature";

/// The bytes fal signs for one delivery.
pub fn signed_message(request_id: &str, user_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    format!("{request_id}\n{user_id}\n{timestamp}\n{digest}").into_bytes()
}

/// The signature headers of one delivery, as received.
#[derive(Debug, Clone)]
pub struct SignatureHeaders<'a> {
    pub request_id: &'a str,
    pub user_id: &'a str,
    pub timestamp: &'a str,
    pub signature_hex: &'a str,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature header missing: {0}")]
    MissingHeader(&'static str),
    #[error("timestamp is not a unix time")]
    BadTimestamp,
    #[error("timestamp outside the allowed window")]
    StaleTimestamp,
    #[error("signature is not 64 bytes of hex")]
    BadSignatureEncoding,
    #[error("webhook user id is not the pinned one")]
    UserMismatch,
    #[error("no key of the key set verifies the signature")]
    NoKeyVerifies,
}

/// A JSON Web Key Set as fal serves it (`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"…"}]}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

impl Jwk {
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some(URL_SAFE_NO_PAD.encode(key.as_bytes())),
            kid: None,
        }
    }
}

impl Jwks {
    /// The Ed25519 keys of the set; keys of other types or with bad encodings are skipped.
    pub fn ed25519_keys(&self) -> Vec<VerifyingKey> {
        self.keys
            .iter()
            .filter(|k| k.kty == "OKP" && k.crv.as_deref() == Some("Ed25519"))
            .filter_map(|k| {
                let raw = URL_SAFE_NO_PAD
                    .decode(k.x.as_deref()?.trim_end_matches('='))
                    .ok()?;
                let bytes: [u8; 32] = raw.try_into().ok()?;
                VerifyingKey::from_bytes(&bytes).ok()
            })
            .collect()
    }
}

/// Checks what can be checked without keys: timestamp window and user pinning.
pub fn check_envelope(
    headers: &SignatureHeaders<'_>,
    now_unix: i64,
    pinned_user_id: Option<&str>,
) -> Result<Signature, SignatureError> {
    let ts: i64 = headers
        .timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    // abs_diff: no overflow whatever the header says.
    if now_unix.abs_diff(ts) > MAX_CLOCK_SKEW_SECS as u64 {
        return Err(SignatureError::StaleTimestamp);
    }
    if let Some(pinned) = pinned_user_id
        && pinned != headers.user_id
    {
        return Err(SignatureError::UserMismatch);
    }
    let raw = hex::decode(headers.signature_hex.trim())
        .map_err(|_| SignatureError::BadSignatureEncoding)?;
    let bytes: [u8; 64] = raw
        .try_into()
        .map_err(|_| SignatureError::BadSignatureEncoding)?;
    Ok(Signature::from_bytes(&bytes))
}

/// Verifies one delivery against a set of keys: accepted if any key verifies.
pub fn verify(
    headers: &SignatureHeaders<'_>,
    body: &[u8],
    keys: &[VerifyingKey],
    now_unix: i64,
    pinned_user_id: Option<&str>,
) -> Result<(), SignatureError> {
    let signature = check_envelope(headers, now_unix, pinned_user_id)?;
    verify_with_keys(headers, body, &signature, keys)
}

/// The key part of [`verify`], for callers that refetch keys between attempts.
pub fn verify_with_keys(
    headers: &SignatureHeaders<'_>,
    body: &[u8],
    signature: &Signature,
    keys: &[VerifyingKey],
) -> Result<(), SignatureError> {
    let message = signed_message(headers.request_id, headers.user_id, headers.timestamp, body);
    if keys
        .iter()
        .any(|k| k.verify_strict(&message, signature).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::NoKeyVerifies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sign(k: &SigningKey, rid: &str, uid: &str, ts: &str, body: &[u8]) -> String {
        hex::encode(k.sign(&signed_message(rid, uid, ts, body)).to_bytes())
    }

    fn headers<'a>(sig: &'a str, ts: &'a str) -> SignatureHeaders<'a> {
        SignatureHeaders {
            request_id: "req-1",
            user_id: "user-1",
            timestamp: ts,
            signature_hex: sig,
        }
    }

    #[test]
    fn message_is_ids_timestamp_and_body_digest_on_lines() {
        let m = String::from_utf8(signed_message("r", "u", "1", b"")).unwrap();
        assert_eq!(
            m,
            "r\nu\n1\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn valid_signature_verifies_with_any_key_of_the_set() {
        let k = key(7);
        let body = br#"{"status":"OK"}"#;
        let sig = sign(&k, "req-1", "user-1", "1000", body);
        let keys = [key(1).verifying_key(), k.verifying_key()];
        assert_eq!(
            verify(&headers(&sig, "1000"), body, &keys, 1000, None),
            Ok(())
        );
    }

    #[test]
    fn one_changed_body_byte_fails() {
        let k = key(7);
        let body = br#"{"status":"OK"}"#.to_vec();
        let sig = sign(&k, "req-1", "user-1", "1000", &body);
        let mut tampered = body.clone();
        tampered[3] ^= 1;
        let keys = [k.verifying_key()];
        assert_eq!(
            verify(&headers(&sig, "1000"), &tampered, &keys, 1000, None),
            Err(SignatureError::NoKeyVerifies)
        );
    }

    #[test]
    fn timestamps_beyond_five_minutes_either_way_fail() {
        let k = key(7);
        let sig = sign(&k, "req-1", "user-1", "1000", b"x");
        let keys = [k.verifying_key()];
        for now in [1301, 699] {
            assert_eq!(
                verify(&headers(&sig, "1000"), b"x", &keys, now, None),
                Err(SignatureError::StaleTimestamp)
            );
        }
        assert_eq!(
            verify(&headers(&sig, "1000"), b"x", &keys, 1300, None),
            Ok(())
        );
    }

    #[test]
    fn extreme_timestamps_are_stale_not_a_crash() {
        let keys = [key(7).verifying_key()];
        for ts in [i64::MIN.to_string(), i64::MAX.to_string()] {
            assert_eq!(
                verify(&headers("00", &ts), b"x", &keys, 1000, None),
                Err(SignatureError::StaleTimestamp)
            );
        }
    }

    #[test]
    fn pinned_user_id_must_match() {
        let k = key(7);
        let sig = sign(&k, "req-1", "user-1", "1000", b"x");
        let keys = [k.verifying_key()];
        assert_eq!(
            verify(&headers(&sig, "1000"), b"x", &keys, 1000, Some("other")),
            Err(SignatureError::UserMismatch)
        );
        assert_eq!(
            verify(&headers(&sig, "1000"), b"x", &keys, 1000, Some("user-1")),
            Ok(())
        );
    }

    #[test]
    fn malformed_signature_and_timestamp_are_rejected() {
        let keys = [key(7).verifying_key()];
        assert_eq!(
            verify(&headers("zz", "1000"), b"x", &keys, 1000, None),
            Err(SignatureError::BadSignatureEncoding)
        );
        assert_eq!(
            verify(&headers("00", "soon"), b"x", &keys, 1000, None),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn jwks_round_trips_ed25519_keys_and_skips_others() {
        let k = key(9).verifying_key();
        let mut set = Jwks {
            keys: vec![Jwk::from_verifying_key(&k)],
        };
        set.keys.push(Jwk {
            kty: "RSA".into(),
            crv: None,
            x: None,
            kid: None,
        });
        let parsed: Jwks = serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
        assert_eq!(parsed.ed25519_keys(), vec![k]);
    }
}
