//! Standard Webhooks signatures, the scheme Replicate signs its deliveries with: headers `webhook-id` (the same on
//! retries), `webhook-timestamp` (unix seconds) and `webhook-signature` (space-separated `v1,<base64>` entries); the
//! signed content is `<id>.<timestamp>.<raw body>`, HMAC-SHA256 keyed with the base64-decoded part of the
//! account's `whsec_…` secret. Timestamps more than five minutes off are refused (replays).

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};

/// How far a delivery's timestamp may be from now.
pub const TOLERANCE_SECS: u64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandardWebhookError {
    #[error("the signing secret is not a whsec_ key")]
    BadSecret,
    #[error("webhook-id, webhook-timestamp or webhook-signature missing")]
    MissingHeaders,
    #[error("webhook-timestamp is not a unix time")]
    BadTimestamp,
    #[error("webhook-timestamp is more than five minutes off")]
    StaleTimestamp,
    #[error("no signature matches")]
    NoMatch,
}

/// The three headers of a delivery.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

/// The HMAC key of a `whsec_<base64>` secret (the prefix is optional, as in the reference libraries).
pub fn key_of(secret: &SecretString) -> Result<hmac::Key, StandardWebhookError> {
    let encoded = secret.expose_secret().trim();
    let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
    let raw = B64
        .decode(encoded)
        .map_err(|_| StandardWebhookError::BadSecret)?;
    if raw.is_empty() {
        return Err(StandardWebhookError::BadSecret);
    }
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &raw))
}

fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// The `webhook-signature` value for a delivery (`v1,<base64>`).
pub fn sign(key: &hmac::Key, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = hmac::sign(key, &signed_content(id, &timestamp.to_string(), body));
    format!("v1,{}", B64.encode(tag.as_ref()))
}

/// Verifies a delivery: a fresh timestamp, then any `v1` signature matching (compared in constant time).
pub fn verify(
    key: &hmac::Key,
    headers: Headers<'_>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), StandardWebhookError> {
    if headers.id.is_empty() || headers.timestamp.is_empty() || headers.signature.is_empty() {
        return Err(StandardWebhookError::MissingHeaders);
    }
    let timestamp: i64 = headers
        .timestamp
        .trim()
        .parse()
        .map_err(|_| StandardWebhookError::BadTimestamp)?;
    if timestamp.abs_diff(now_unix) > TOLERANCE_SECS {
        return Err(StandardWebhookError::StaleTimestamp);
    }
    let content = signed_content(headers.id, headers.timestamp.trim(), body);
    let matched = headers
        .signature
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|sig| B64.decode(sig).ok())
        .any(|tag| hmac::verify(key, &content, &tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(StandardWebhookError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    /// What the reference library (`standardwebhooks` 1.1.0 on PyPI) signs for the values above.
    const REFERENCE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key() -> hmac::Key {
        key_of(&SecretString::from(SECRET.to_owned())).unwrap()
    }

    fn headers(signature: &str) -> Headers<'_> {
        Headers {
            id: ID,
            timestamp: "1614265330",
            signature,
        }
    }

    #[test]
    fn signs_as_the_reference_library_and_verifies_its_signatures() {
        assert_eq!(sign(&key(), ID, TS, BODY), REFERENCE);
        assert_eq!(verify(&key(), headers(REFERENCE), BODY, TS + 10), Ok(()));
        let several = format!("v1,bm90IGl0 {REFERENCE} v2,abc");
        assert_eq!(verify(&key(), headers(&several), BODY, TS), Ok(()));
    }

    #[test]
    fn tampered_stale_or_foreign_deliveries_are_refused() {
        let other = key_of(&SecretString::from("whsec_c2VjcmV0".to_owned())).unwrap();
        assert_eq!(
            verify(&other, headers(REFERENCE), BODY, TS),
            Err(StandardWebhookError::NoMatch)
        );
        assert_eq!(
            verify(&key(), headers(REFERENCE), br#"{"test": 2432232315}"#, TS),
            Err(StandardWebhookError::NoMatch)
        );
        let late = TS + TOLERANCE_SECS as i64 + 1;
        assert_eq!(
            verify(&key(), headers(REFERENCE), BODY, late),
            Err(StandardWebhookError::StaleTimestamp)
        );
        let mut h = headers(REFERENCE);
        h.timestamp = "soon";
        assert_eq!(
            verify(&key(), h, BODY, TS),
            Err(StandardWebhookError::BadTimestamp)
        );
        h.timestamp = "-9223372036854775808";
        assert_eq!(
            verify(&key(), h, BODY, TS),
            Err(StandardWebhookError::StaleTimestamp)
        );
        assert_eq!(
            verify(&key(), headers(""), BODY, TS),
            Err(StandardWebhookError::MissingHeaders)
        );
        assert_eq!(
            verify(&key(), headers("v1,!!!"), BODY, TS),
            Err(StandardWebhookError::NoMatch)
        );
    }

    #[test]
    fn secrets_must_be_base64() {
        for bad in ["whsec_", "whsec_***", ""] {
            assert!(
                key_of(&SecretString::from(bad.to_owned())).is_err(),
                "{bad}"
            );
        }
    }
}
