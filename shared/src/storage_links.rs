//! Storage links as `@supabase/storage-js` makes and uses them, for the two buckets the clients sign
//! (`workspace-temp`, `user-library`). A link is `<api>/storage/v1/object/sign/<bucket>/<path>?token=<jwt>`: the
//! token is an HS256 JWT of ours (`STORAGE_SIGNING_KEY` in the app secret) with Supabase's claims `url`
//! (`<bucket>/<path>`) and `exp`. Fetching the link needs no `Authorization` (it is an `<img>`/`<video>` source):
//! the token is checked and the answer is a redirect to an S3 presigned GET of a few minutes, made at that moment.
//! So a link lives as long as its token says, whatever the Lambda role's temporary credentials do.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;
use uuid::Uuid;

use crate::config::Settings;
use crate::ownership;
use crate::state::AppState;
use crate::storage::StorageError;

/// How long the S3 presigned GET behind a link lives: just long enough to follow the redirect.
pub const REDIRECT_TTL: Duration = Duration::from_secs(300);
/// The longest a client may ask a link to live.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(365 * 24 * 3600);

/// A bucket by the name the original's clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    WorkspaceTemp,
    UserLibrary,
}

impl Bucket {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "workspace-temp" => Some(Bucket::WorkspaceTemp),
            "user-library" => Some(Bucket::UserLibrary),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Bucket::WorkspaceTemp => "workspace-temp",
            Bucket::UserLibrary => "user-library",
        }
    }

    /// The S3 bucket behind it.
    pub fn s3_bucket(self, settings: &Settings) -> &str {
        match self {
            Bucket::WorkspaceTemp => &settings.config.workspace_bucket,
            Bucket::UserLibrary => &settings.config.library_bucket,
        }
    }
}

/// Why a path cannot be signed or a link followed; each maps to Supabase's error shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("Bucket not found")]
    UnknownBucket,
    #[error("expiresIn must be a number of seconds between 1 and {}", MAX_EXPIRES_IN.as_secs())]
    BadExpiry,
    /// Not under the caller's own user id (the original's storage policies).
    #[error("Either the object does not exist or you do not have access to it")]
    NotYours,
    #[error("Storage links are not configured")]
    NotConfigured,
    #[error("jwt expired")]
    Expired,
    #[error("invalid signature")]
    BadToken,
    /// A valid token of another object.
    #[error("The url does not match the signature")]
    OtherPath,
    /// The caller's own path, with no object there.
    #[error("Object not found")]
    NotFound,
    /// Whether the object exists could not be asked of our storage.
    #[error("Storage is unavailable")]
    StorageUnavailable,
}

#[derive(Serialize, Deserialize)]
struct LinkClaims {
    url: String,
    iat: i64,
    exp: i64,
}

fn signing_key(settings: &Settings) -> Result<&SecretString, LinkError> {
    settings
        .secrets
        .storage_signing_key
        .as_ref()
        .ok_or(LinkError::NotConfigured)
}

/// Whether links of `ttl` can be signed at all (a lifetime within bounds, a signing key): checked once per call,
/// before any path, so that a whole `createSignedUrls` is refused as `createSignedUrl` is.
pub fn check_signing(settings: &Settings, ttl: Duration) -> Result<(), LinkError> {
    if ttl.is_zero() || ttl > MAX_EXPIRES_IN {
        return Err(LinkError::BadExpiry);
    }
    signing_key(settings).map(|_| ())
}

/// `/object/sign/<bucket>/<path>?token=<jwt>`: what `createSignedUrl` answers, relative to `<api>/storage/v1`.
pub fn signed_path(
    settings: &Settings,
    bucket: Bucket,
    path: &str,
    ttl: Duration,
) -> Result<String, LinkError> {
    check_signing(settings, ttl)?;
    let url = format!("{}/{path}", bucket.name());
    let now = chrono::Utc::now().timestamp();
    let claims = LinkClaims {
        url: url.clone(),
        iat: now,
        exp: now.saturating_add(ttl.as_secs() as i64),
    };
    let key = EncodingKey::from_secret(signing_key(settings)?.expose_secret().as_bytes());
    let token =
        encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|_| LinkError::BadToken)?;
    Ok(format!("/object/sign/{url}?token={token}"))
}

/// The caller's own path signed for `ttl` (`createSignedUrl`), or why not.
pub fn sign_for_user(
    settings: &Settings,
    user_id: Uuid,
    bucket: Bucket,
    path: &str,
    ttl: Duration,
) -> Result<String, LinkError> {
    // Not logged here: the refusal is the answer, and a batch of them is logged once by `Signing::many`.
    if !ownership::is_owned_key(user_id, path) {
        return Err(LinkError::NotYours);
    }
    signed_path(settings, bucket, path, ttl)
}

/// Existence checks in flight for one `createSignedUrls`.
const CHECKS_AT_ONCE: usize = 16;

/// One caller's signing request: `createSignedUrl(s)` of objects that exist, as Supabase Storage answers from its
/// `storage.objects` rows (a link to nothing is `Object not found`, not a link that fails when followed).
#[derive(Clone, Copy)]
pub struct Signing<'a> {
    pub state: &'a AppState,
    pub settings: &'a Settings,
    pub user_id: Uuid,
    pub bucket: Bucket,
    pub ttl: Duration,
}

impl Signing<'_> {
    /// `createSignedUrl`: [`sign_for_user`], for an object that exists.
    pub async fn present(self, path: &str) -> Result<String, LinkError> {
        let Signing {
            state,
            settings,
            user_id,
            bucket,
            ttl,
        } = self;
        let signed = sign_for_user(settings, user_id, bucket, path, ttl)?;
        match state.storage.exists(bucket.s3_bucket(settings), path).await {
            Ok(true) => Ok(signed),
            Ok(false) => Err(LinkError::NotFound),
            Err(e) => {
                tracing::warn!(error = %e, "whether an object to sign exists could not be asked");
                Err(LinkError::StorageUnavailable)
            }
        }
    }

    /// `createSignedUrls`: each path as [`Self::present`] signs it, or the reason it cannot be, in the order
    /// given.
    pub async fn many(self, paths: &[String]) -> Vec<(String, Result<String, LinkError>)> {
        use futures::StreamExt as _;
        // Collected first: a stream over the closure would not be `Send` for every lifetime the handler needs.
        let entries: Vec<_> = paths.iter().map(|p| self.entry(p)).collect();
        let signed: Vec<_> = futures::stream::iter(entries)
            .buffered(CHECKS_AT_ONCE)
            .collect()
            .await;
        let refused = signed
            .iter()
            .filter(|(_, r)| matches!(r, Err(LinkError::NotYours)))
            .count();
        if refused > 0 {
            let user_id = self.user_id;
            tracing::warn!(%user_id, refused, "paths outside the caller's prefix refused");
        }
        signed
    }

    async fn entry(self, path: &str) -> (String, Result<String, LinkError>) {
        (path.to_owned(), self.present(path).await)
    }
}

/// A link a client keeps for `ttl` to an object of the functions' own making (a result, a storyboard clip): a
/// storage link when links are configured and the API's public base is known; otherwise an S3 presigned GET of
/// [`REDIRECT_TTL`], so no answer carries a presigned URL that outlives the Lambda role's credentials.
pub async fn client_link(
    state: &AppState,
    settings: &Settings,
    api_base: Option<&Url>,
    bucket: Bucket,
    key: &str,
    ttl: Duration,
) -> Result<String, StorageError> {
    if let Some(base) = api_base
        && let Ok(link) = link(settings, base, bucket, key, ttl)
    {
        return Ok(link);
    }
    let s3_bucket = bucket.s3_bucket(settings);
    state
        .storage
        .presign_get(s3_bucket, key, REDIRECT_TTL)
        .await
}

/// A whole link for a stored object of the functions' own making (results, storyboard clips).
pub fn link(
    settings: &Settings,
    api_base: &Url,
    bucket: Bucket,
    path: &str,
    ttl: Duration,
) -> Result<String, LinkError> {
    let signed = signed_path(settings, bucket, path, ttl)?;
    Ok(format!(
        "{}/storage/v1{signed}",
        api_base.as_str().trim_end_matches('/')
    ))
}

/// Checks a link's token for `<bucket>/<path>`.
pub fn verify(
    settings: &Settings,
    bucket: Bucket,
    path: &str,
    token: &str,
) -> Result<(), LinkError> {
    let current = signing_key(settings)?;
    let previous = settings.secrets.storage_signing_key_previous.as_ref();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    let decode_with = |key: &SecretString| {
        let key = DecodingKey::from_secret(key.expose_secret().as_bytes());
        decode::<LinkClaims>(token, &key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => LinkError::Expired,
            _ => LinkError::BadToken,
        })
    };
    // The current key, then the one before the last rotation (links handed out before it stay valid).
    let claims = match decode_with(current) {
        Err(LinkError::BadToken) => previous.map_or(Err(LinkError::BadToken), decode_with),
        decoded => decoded,
    }?
    .claims;
    if claims.url != format!("{}/{path}", bucket.name()) {
        return Err(LinkError::OtherPath);
    }
    Ok(())
}

/// Following a link: the token checked, then an S3 presigned GET of [`REDIRECT_TTL`] (as an attachment named
/// `download` when asked).
pub async fn redirect(
    state: &AppState,
    settings: &Settings,
    bucket: Bucket,
    path: &str,
    token: &str,
    download: Option<&str>,
) -> Result<Result<String, StorageError>, LinkError> {
    verify(settings, bucket, path, token)?;
    let disposition = download.map(|name| {
        let name = if name.is_empty() {
            path.rsplit('/').next().unwrap_or(path)
        } else {
            name
        };
        attachment(name)
    });
    let s3_bucket = bucket.s3_bucket(settings);
    Ok(state
        .storage
        .presign_get_as(s3_bucket, path, REDIRECT_TTL, disposition)
        .await)
}

/// RFC 5987's `attr-char`s: what `filename*` carries as it is; every other byte is percent-encoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The `Content-Disposition` of a download named `name` (RFC 6266). S3 refuses a header value it cannot write in
/// ISO-8859-1 (400 `InvalidArgument`), so a name beyond ASCII goes in `filename*` (RFC 5987: UTF-8,
/// percent-encoded), which browsers prefer, beside an ASCII `filename` (each other character an `_`) for clients
/// that do not read it. Control characters are dropped, and `"` and `\` from the quoted name.
fn attachment(name: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    let quoted: String = name
        .chars()
        .filter(|c| !matches!(c, '"' | '\\'))
        .map(|c| if c.is_ascii() { c } else { '_' })
        .collect();
    if name.is_ascii() {
        format!("attachment; filename=\"{quoted}\"")
    } else {
        let encoded = utf8_percent_encode(&name, ATTR_CHAR);
        format!("attachment; filename=\"{quoted}\"; filename*=UTF-8''{encoded}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::secrets::AppSecrets;
    use std::sync::Arc;

    fn settings() -> Settings {
        settings_with(r#""STORAGE_SIGNING_KEY":"links""#)
    }

    /// Settings whose secret holds these storage keys (a JSON fragment).
    fn settings_with(keys: &str) -> Settings {
        let json = format!(r#"{{"FAL_KEY":"k","DATABASE_URL":"postgres://x",{keys}}}"#);
        let secrets = AppSecrets::from_json("s", &json).unwrap();
        let config =
            Config::from_lookup(|k| (k == "APP_SECRET_ID").then(|| "s".to_owned())).unwrap();
        Settings {
            config: Arc::new(config),
            secrets: Arc::new(secrets),
        }
    }

    fn token_of(signed: &str) -> &str {
        signed.split_once("?token=").unwrap().1
    }

    #[test]
    fn a_signed_path_verifies_for_its_own_object_only() {
        let s = settings();
        let me = Uuid::new_v4();
        let path = format!("{me}/job_0.png");
        let signed = sign_for_user(
            &s,
            me,
            Bucket::WorkspaceTemp,
            &path,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(signed.starts_with(&format!("/object/sign/workspace-temp/{path}?token=")));
        let token = token_of(&signed);
        assert_eq!(verify(&s, Bucket::WorkspaceTemp, &path, token), Ok(()));
        assert_eq!(
            verify(&s, Bucket::UserLibrary, &path, token),
            Err(LinkError::OtherPath)
        );
        let other = format!("{me}/job_1.png");
        assert_eq!(
            verify(&s, Bucket::WorkspaceTemp, &other, token),
            Err(LinkError::OtherPath)
        );
        let mut forged = token.to_owned();
        forged.push('x');
        assert_eq!(
            verify(&s, Bucket::WorkspaceTemp, &path, &forged),
            Err(LinkError::BadToken)
        );
    }

    #[test]
    fn after_a_rotation_links_of_the_previous_key_verify_and_new_ones_use_the_current_key() {
        let me = Uuid::new_v4();
        let path = format!("{me}/clip.mp4");
        let ttl = Duration::from_secs(600);
        let before = settings_with(r#""STORAGE_SIGNING_KEY":"old""#);
        let old_link = sign_for_user(&before, me, Bucket::WorkspaceTemp, &path, ttl).unwrap();
        let rotated =
            settings_with(r#""STORAGE_SIGNING_KEY":"new","STORAGE_SIGNING_KEY_PREVIOUS":"old""#);
        let new_link = sign_for_user(&rotated, me, Bucket::WorkspaceTemp, &path, ttl).unwrap();

        let at = |s: &Settings, link: &str| verify(s, Bucket::WorkspaceTemp, &path, token_of(link));
        assert_eq!(at(&rotated, &old_link), Ok(()));
        assert_eq!(at(&rotated, &new_link), Ok(()));
        assert_eq!(at(&before, &new_link), Err(LinkError::BadToken));
        // Once the previous key is dropped from the secret, its links stop working.
        let dropped = settings_with(r#""STORAGE_SIGNING_KEY":"new""#);
        assert_eq!(at(&dropped, &old_link), Err(LinkError::BadToken));
        // A link of the previous key still names only its own object.
        let other = format!("{me}/other.mp4");
        assert_eq!(
            verify(&rotated, Bucket::WorkspaceTemp, &other, token_of(&old_link)),
            Err(LinkError::OtherPath)
        );
    }

    #[test]
    fn only_the_callers_paths_are_signed_and_expiry_is_bounded() {
        let s = settings();
        let me = Uuid::new_v4();
        let someone = Uuid::new_v4();
        let day = Duration::from_secs(86_400);
        for path in [
            format!("{someone}/x.png"),
            format!("{me}/../{someone}/x.png"),
            "x.png".into(),
        ] {
            assert_eq!(
                sign_for_user(&s, me, Bucket::UserLibrary, &path, day),
                Err(LinkError::NotYours),
                "{path}"
            );
        }
        let mine = format!("{me}/x.png");
        for ttl in [Duration::ZERO, MAX_EXPIRES_IN + Duration::from_secs(1)] {
            assert_eq!(
                sign_for_user(&s, me, Bucket::UserLibrary, &mine, ttl),
                Err(LinkError::BadExpiry)
            );
        }
    }

    #[test]
    fn an_expired_token_is_told_from_a_forged_one() {
        let s = settings();
        let claims = LinkClaims {
            url: "workspace-temp/u/x.png".into(),
            iat: 0,
            exp: chrono::Utc::now().timestamp() - 5,
        };
        let key = EncodingKey::from_secret(b"links");
        let token = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        assert_eq!(
            verify(&s, Bucket::WorkspaceTemp, "u/x.png", &token),
            Err(LinkError::Expired)
        );
        let other_key = EncodingKey::from_secret(b"not ours");
        let claims = LinkClaims {
            exp: claims.exp + 3600,
            ..claims
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &other_key).unwrap();
        assert_eq!(
            verify(&s, Bucket::WorkspaceTemp, "u/x.png", &token),
            Err(LinkError::BadToken)
        );
    }

    #[test]
    fn a_download_name_beyond_ascii_goes_in_filename_star_and_every_value_is_ascii() {
        assert_eq!(
            attachment("photo 1.png"),
            "attachment; filename=\"photo 1.png\""
        );
        assert_eq!(
            attachment("a\"b\\c\n.png"),
            "attachment; filename=\"abc.png\""
        );
        assert_eq!(
            attachment("사진.png"),
            "attachment; filename=\"__.png\"; filename*=UTF-8''%EC%82%AC%EC%A7%84.png"
        );
        assert_eq!(
            attachment("résumé \"v2\".pdf"),
            "attachment; filename=\"r_sum_ v2.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%22v2%22.pdf"
        );
        for name in ["사진.png", "ü\u{7f}.png", "emoji 😀.gif", "plain.png"] {
            let value = attachment(name);
            assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{value}");
        }
    }
}
