//! Reference images and videos (§2.4 steps 5–6): what a reference string names, every reference a request
//! carries, and the URL fal is given for each.

use std::collections::HashMap;

use serde_json::{Map, Value};
use url::Url;

use super::InputError;
use super::request::GenerationRequest;
use super::schema::non_empty_array;

/// The original's buckets; a bare path whose first segment is one of them names an object in that bucket.
pub const KNOWN_BUCKETS: &[&str] = &[
    "user-library",
    "workspace-temp",
    "reference_images",
    "sdxl_image_high",
    "sdxl_image_fast",
    "video_high",
    "image_high",
    "videos",
];

/// References read from one list (`image_urls`, `images`, `videos`): more are ignored, so a hostile body cannot
/// make the caller presign thousands of keys.
pub const MAX_LIST_REFERENCES: usize = 16;

pub(crate) const MSG_I2I: &str = "I2I request requires a valid reference image URL";
pub(crate) const MSG_FORMAT: &str = "Invalid reference image URL format";
pub(crate) const MSG_MULTI: &str = "Multi-reference request requires valid image URLs";

/// Which of our buckets a stored reference lives in. The port has two buckets (configuration: the workspace and
/// the library bucket); the original's other buckets are kept by name for the caller to map or refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredBucket {
    /// The original's `workspace-temp`.
    Workspace,
    /// The original's `user-library`.
    Library,
    /// Another of [`KNOWN_BUCKETS`] (`reference_images`, `videos`, …), which the port does not configure.
    Legacy(String),
}

impl StoredBucket {
    fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "workspace-temp" => Some(Self::Workspace),
            "user-library" => Some(Self::Library),
            other if KNOWN_BUCKETS.contains(&other) => Some(Self::Legacy(other.to_owned())),
            _ => None,
        }
    }

    /// The bucket's name in the original system.
    pub fn original_name(&self) -> &str {
        match self {
            Self::Workspace => "workspace-temp",
            Self::Library => "user-library",
            Self::Legacy(name) => name,
        }
    }
}

/// How a reference string is handed to fal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A `data:` URL or an http(s) URL fal can fetch as it is.
    Pass(String),
    /// An object in our storage: a bare path (`<bucket>/<key>` or `<key>`), or an original Supabase signed URL
    /// (`…/object/sign/<bucket>/<key>?token=…`) whose object now lives in S3 under the same key. `bucket: None`
    /// when the path names no known bucket: the caller picks the default (workspace for videos). Keys are not
    /// checked for ownership here: the caller should presign only keys under the requesting user's `<user_id>/`.
    Stored {
        bucket: Option<StoredBucket>,
        key: String,
    },
    /// Nothing fal could fetch (another scheme, an empty or climbing path, a malformed URL).
    Invalid,
}

pub fn classify_reference(s: &str) -> Reference {
    let s = s.trim();
    if s.is_empty() || s.chars().any(char::is_control) {
        return Reference::Invalid;
    }
    if has_scheme(s, "data:") {
        return if s.contains(',') {
            Reference::Pass(s.to_owned())
        } else {
            Reference::Invalid
        };
    }
    if has_scheme(s, "http://") || has_scheme(s, "https://") {
        let Ok(url) = Url::parse(s) else {
            return Reference::Invalid;
        };
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Reference::Invalid;
        }
        return match supabase_signed(url.path()) {
            Some(stored) => stored,
            None => Reference::Pass(s.to_owned()),
        };
    }
    // A bare path. Any scheme-like prefix (`file:`, `javascript:`, `s3://`) is not one.
    let first = s.split('/').next().unwrap_or_default();
    if first.contains(':') || s.contains('\\') {
        return Reference::Invalid;
    }
    let path = s.trim_start_matches('/');
    if let Some(stored) =
        supabase_signed(&format!("/{}", path.split('?').next().unwrap_or_default()))
    {
        return stored;
    }
    stored(path)
}

fn has_scheme(s: &str, scheme: &str) -> bool {
    s.get(..scheme.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
}

/// `…/object/sign/<bucket>/<key>` (a Supabase signed URL path, percent-encoded) as a stored reference, when the
/// bucket is one of ours; other buckets' URLs pass as they are.
fn supabase_signed(url_path: &str) -> Option<Reference> {
    const MARKER: &str = "/object/sign/";
    let start = url_path.find(MARKER)? + MARKER.len();
    let rest = percent_decode(url_path.get(start..)?)?;
    let (bucket, _) = rest.split_once('/')?;
    StoredBucket::from_segment(bucket)?;
    Some(stored(&rest))
}

/// A path `<known bucket>/<key>` or `<key>`.
fn stored(path: &str) -> Reference {
    let path = path.trim_start_matches('/');
    let valid_key = |key: &str| {
        !key.is_empty()
            && !key.split('/').any(|seg| seg == ".." || seg == ".")
            && !key.chars().any(char::is_control)
    };
    let (first, rest) = path.split_once('/').unwrap_or((path, ""));
    match StoredBucket::from_segment(first) {
        Some(bucket) if valid_key(rest) => Reference::Stored {
            bucket: Some(bucket),
            key: rest.to_owned(),
        },
        Some(_) => Reference::Invalid,
        None if valid_key(path) => Reference::Stored {
            bucket: None,
            key: path.to_owned(),
        },
        None => Reference::Invalid,
    }
}

/// `%XX` decoding of a URL path; `None` when the result is not UTF-8 or an escape is malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What kind of media a reference is, which decides the caller's default bucket for a bucket-less path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

/// A reference string of the request that names our storage, for the caller to presign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReference {
    /// The string exactly as in the request: the key of the `resolved` map given to `build_input`.
    pub original: String,
    pub bucket: Option<StoredBucket>,
    pub key: String,
    pub kind: MediaKind,
}

/// The string of a reference value: a string, or the first string among `keys` of an object.
pub(crate) fn url_in<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a str> {
    match value {
        Value::String(s) => Some(s),
        Value::Object(o) => keys.iter().find_map(|k| o.get(*k).and_then(Value::as_str)),
        _ => None,
    }
}

/// The first [`MAX_LIST_REFERENCES`] items of an array field.
pub(crate) fn list<'a>(input: &'a Map<String, Value>, field: &str) -> &'a [Value] {
    let items = non_empty_array(input.get(field))
        .map(Vec::as_slice)
        .unwrap_or_default();
    items.get(..MAX_LIST_REFERENCES).unwrap_or(items)
}

fn references(input: &Map<String, Value>) -> Vec<(&str, MediaKind)> {
    let mut found = Vec::new();
    if let Some(s) = input.get("image_url").and_then(Value::as_str) {
        found.push((s, MediaKind::Image));
    }
    found.extend(
        list(input, "image_urls")
            .iter()
            .filter_map(Value::as_str)
            .map(|s| (s, MediaKind::Image)),
    );
    if let Some(s) = input
        .get("video")
        .and_then(|v| url_in(v, &["video_url", "url"]))
    {
        found.push((s, MediaKind::Video));
    }
    found.extend(
        list(input, "images")
            .iter()
            .filter_map(|v| url_in(v, &["image_url", "url"]))
            .map(|s| (s, MediaKind::Image)),
    );
    found.extend(
        list(input, "videos")
            .iter()
            .filter_map(|v| url_in(v, &["video_url", "url"]))
            .map(|s| (s, MediaKind::Video)),
    );
    let mut seen = std::collections::HashSet::new();
    found.retain(|(s, _)| !s.is_empty() && seen.insert(*s));
    found
}

/// Every reference string the request carries (`input.image_url`, `image_urls[]`, `video` as a string or
/// `{video_url|url}`, `images[].image_url|url`, `videos[].video_url|url`), each once, as written.
pub fn reference_strings(req: &GenerationRequest) -> Vec<String> {
    let Some(input) = req.input.as_ref() else {
        return Vec::new();
    };
    references(input)
        .into_iter()
        .map(|(s, _)| s.to_owned())
        .collect()
}

/// The references of the request that name our storage: what the caller must presign before `build_input`.
pub fn stored_references(req: &GenerationRequest) -> Vec<StoredReference> {
    let Some(input) = req.input.as_ref() else {
        return Vec::new();
    };
    references(input)
        .into_iter()
        .filter_map(|(s, kind)| match classify_reference(s) {
            Reference::Stored { bucket, key } => Some(StoredReference {
                original: s.to_owned(),
                bucket,
                key,
                kind,
            }),
            _ => None,
        })
        .collect()
}

/// Why a reference could not be given to fal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// A stored reference the caller could not presign (absent from `resolved`).
    NotSigned,
    /// Not a URL fal can fetch.
    BadFormat,
}

/// The URL fal fetches for a reference string: the caller's presigned URL for a stored one (or its override of a
/// passing one), the string itself for a passing one; whatever it is, it must be a data: or http(s) URL.
pub(crate) fn resolve(s: &str, resolved: &HashMap<String, String>) -> Result<String, Unusable> {
    let given = resolved.get(s).or_else(|| resolved.get(s.trim()));
    let url = match classify_reference(s) {
        Reference::Invalid => return Err(Unusable::BadFormat),
        Reference::Pass(url) => given.cloned().unwrap_or(url),
        Reference::Stored { .. } => given.cloned().ok_or(Unusable::NotSigned)?,
    };
    if fetchable(&url) {
        Ok(url)
    } else {
        Err(Unusable::BadFormat)
    }
}

/// A `data:` URL, or an http(s) URL with a host.
fn fetchable(url: &str) -> bool {
    if has_scheme(url, "data:") {
        return url.contains(',');
    }
    (has_scheme(url, "http://") || has_scheme(url, "https://"))
        && Url::parse(url).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()))
}

/// One reference image (`image_url`): the errors of the original's single-image path.
pub(crate) fn single_image(
    s: &str,
    resolved: &HashMap<String, String>,
) -> Result<String, InputError> {
    resolve(s, resolved).map_err(|why| {
        InputError::InvalidReference(match why {
            Unusable::NotSigned => MSG_I2I.to_owned(),
            Unusable::BadFormat => MSG_FORMAT.to_owned(),
        })
    })
}

/// Step 6 for image models: `image_urls` (multi) or `image_url` (single, as `image_urls: [x]` when the schema
/// takes a list). Multi wins when both are given, as in the original; failing entries of a list are dropped.
pub(crate) fn apply_image_references(
    out: &mut Map<String, Value>,
    input: &Map<String, Value>,
    schema_takes_list: bool,
    resolved: &HashMap<String, String>,
) -> Result<(), InputError> {
    let multi = list(input, "image_urls");
    if !multi.is_empty() {
        let urls: Vec<Value> = multi
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| resolve(s, resolved).ok())
            .map(Value::from)
            .collect();
        if urls.is_empty() {
            return Err(InputError::InvalidReference(MSG_MULTI.to_owned()));
        }
        // Ambiguous in the original ("Multi → image_urls"): a list is always sent as `image_urls`, whatever the
        // schema says; a single-image model then rejects it with fal's 422 rather than silently losing images.
        out.insert("image_urls".into(), Value::Array(urls));
        return Ok(());
    }
    match input.get("image_url") {
        Some(Value::String(s)) if !s.is_empty() => {
            let url = single_image(s, resolved)?;
            if schema_takes_list {
                out.insert("image_urls".into(), Value::Array(vec![Value::from(url)]));
            } else {
                out.insert("image_url".into(), Value::from(url));
            }
            Ok(())
        }
        // A truthy non-string `image_url` (a number, an object) still asked for i2i: it is not a URL.
        other if super::schema::truthy(other) => {
            Err(InputError::InvalidReference(MSG_FORMAT.to_owned()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(bucket: Option<StoredBucket>, key: &str) -> Reference {
        Reference::Stored {
            bucket,
            key: key.to_owned(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn data_and_http_urls_pass_as_they_are() {
        let data = "data:image/png;base64,iVBORw0KGgo=";
        assert_eq!(classify_reference(data), Reference::Pass(data.into()));
        let cdn = "https://v3.fal.media/files/a/b.png?x=1";
        assert_eq!(classify_reference(cdn), Reference::Pass(cdn.into()));
        assert_eq!(
            classify_reference(" HTTP://example.com/a.png "),
            Reference::Pass("HTTP://example.com/a.png".into())
        );
    }

    #[test]
    fn other_schemes_and_malformed_urls_are_invalid() {
        for bad in [
            "",
            "   ",
            "ftp://x/y.png",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "s3://bucket/key",
            "data:nocomma",
            "https://",
            "http://[::1",
            "user-library/",
            "workspace-temp",
            "a/../b.png",
            "C:\\x.png",
            "a\u{0}b",
        ] {
            assert_eq!(classify_reference(bad), Reference::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn bare_paths_in_a_known_bucket_name_that_bucket() {
        assert_eq!(
            classify_reference("workspace-temp/u1/a.png"),
            stored(Some(StoredBucket::Workspace), "u1/a.png")
        );
        assert_eq!(
            classify_reference("/user-library/u1/a.png"),
            stored(Some(StoredBucket::Library), "u1/a.png")
        );
        assert_eq!(
            classify_reference("reference_images/u1/a.png"),
            stored(
                Some(StoredBucket::Legacy("reference_images".into())),
                "u1/a.png"
            )
        );
        assert_eq!(
            StoredBucket::Legacy("videos".into()).original_name(),
            "videos"
        );
    }

    #[test]
    fn bare_paths_without_a_known_bucket_leave_the_bucket_to_the_caller() {
        assert_eq!(classify_reference("u1/a.png"), stored(None, "u1/a.png"));
        assert_eq!(classify_reference("a.png"), stored(None, "a.png"));
        assert_eq!(classify_reference("u1/x:1.png"), stored(None, "u1/x:1.png"));
    }

    #[test]
    fn supabase_signed_urls_of_our_buckets_become_stored_keys() {
        let url = "https://abc.supabase.co/storage/v1/object/sign/workspace-temp/u1/my%20file.png?token=ey";
        assert_eq!(
            classify_reference(url),
            stored(Some(StoredBucket::Workspace), "u1/my file.png")
        );
        let relative = "/storage/v1/object/sign/user-library/u1/a.mp4?token=x";
        assert_eq!(
            classify_reference(relative),
            stored(Some(StoredBucket::Library), "u1/a.mp4")
        );
        let foreign = "https://abc.supabase.co/storage/v1/object/sign/other/u1/a.png?token=ey";
        assert_eq!(classify_reference(foreign), Reference::Pass(foreign.into()));
        let climbing = "https://abc.supabase.co/storage/v1/object/sign/workspace-temp/u1%2F..%2Fsecret?token=ey";
        assert_eq!(classify_reference(climbing), Reference::Invalid);
    }

    #[test]
    fn reference_strings_cover_every_field_once_in_order() {
        let req = GenerationRequest {
            input: Some(
                json!({
                    "image_url": "a.png",
                    "image_urls": ["b.png", 3, "a.png", ""],
                    "video": {"url": "v.mp4"},
                    "images": [{"image_url": "c.png"}, {"url": "d.png"}, "e.png", {"x": 1}],
                    "videos": [{"video_url": "w.mp4"}, {"url": "https://x.test/y.mp4"}]
                })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            ),
            ..Default::default()
        };
        let all = reference_strings(&req);
        assert_eq!(
            all,
            [
                "a.png",
                "b.png",
                "v.mp4",
                "c.png",
                "d.png",
                "e.png",
                "w.mp4",
                "https://x.test/y.mp4"
            ]
        );
        let stored = stored_references(&req);
        assert_eq!(stored.len(), 7);
        assert_eq!(
            stored.iter().filter(|r| r.kind == MediaKind::Video).count(),
            2
        );
        assert!(reference_strings(&GenerationRequest::default()).is_empty());
    }

    #[test]
    fn long_lists_are_cut_to_the_limit() {
        let urls: Vec<Value> = (0..100)
            .map(|i| Value::from(format!("u/{i}.png")))
            .collect();
        let req = GenerationRequest {
            input: Some(Map::from_iter([(
                "image_urls".to_owned(),
                Value::Array(urls),
            )])),
            ..Default::default()
        };
        assert_eq!(reference_strings(&req).len(), MAX_LIST_REFERENCES);
    }

    #[test]
    fn resolution_uses_the_callers_presigned_url_for_stored_references() {
        let resolved = map(&[("u1/a.png", "https://s3.test/b/u1/a.png?X-Amz-Signature=1")]);
        assert_eq!(
            resolve("u1/a.png", &resolved).as_deref(),
            Ok("https://s3.test/b/u1/a.png?X-Amz-Signature=1")
        );
        assert_eq!(
            resolve("u1/missing.png", &resolved),
            Err(Unusable::NotSigned)
        );
        assert_eq!(
            resolve("https://x.test/a.png", &resolved).as_deref(),
            Ok("https://x.test/a.png")
        );
        assert_eq!(
            resolve("ftp://x/a.png", &resolved),
            Err(Unusable::BadFormat)
        );
        // Whatever the caller put in the map must still be a URL fal can fetch.
        assert_eq!(
            resolve("u1/b.png", &map(&[("u1/b.png", "u1/b.png")])),
            Err(Unusable::BadFormat)
        );
    }

    #[test]
    fn single_image_errors_are_the_originals_messages() {
        let none = HashMap::new();
        let err = |s| single_image(s, &none).err().map(|e| e.to_string());
        assert_eq!(err("u1/a.png").as_deref(), Some(MSG_I2I));
        assert_eq!(err("javascript:x").as_deref(), Some(MSG_FORMAT));
        assert_eq!(err("data:image/png;base64,AA"), None);
    }

    #[test]
    fn percent_decoding_rejects_broken_escapes() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("é%C3%A9").as_deref(), Some("éé"));
    }
}
