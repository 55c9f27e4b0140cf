//! Property tests of everything that parses what outsiders send: the webhook body, the generation request and
//! the input builder, result-URL checks and fal's signature. None may panic on any input, and no forged
//! signature may ever pass. Pure: no stack needed. 256 cases per property (proptest's default);
//! `PROPTEST_CASES=20000 cargo test -p gen-pipeline --test fuzz` searches harder.

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use gen_pipeline::fal::signature::{SignatureHeaders, signed_message, verify};
use gen_pipeline::input::{GenerationRequest, Modality, ModelSpec, build_input, reference_strings};
use gen_pipeline::media::MediaPolicy;
use gen_pipeline::webhook::{WebhookOutcome, parse_body};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value, json};

fn config() -> ProptestConfig {
    // Failures are kept as the named regression tests at the end of this file, not as files beside it.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------------------

/// Field names the builder reads (request input, model defaults, schemas, webhook bodies), so generated objects
/// hit real code paths instead of only unknown keys.
const KEYS: &[&str] = &[
    "prompt",
    "image_url",
    "image_urls",
    "video",
    "video_url",
    "url",
    "images",
    "videos",
    "strength",
    "image_size",
    "aspect_ratio",
    "aspectRatio",
    "width",
    "height",
    "num_frames",
    "max_num_frames",
    "limit_num_frames",
    "duration",
    "fps",
    "frame_rate",
    "frames_per_second",
    "resolution",
    "seed",
    "num_images",
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "enable_safety_checker",
    "safety_tolerance",
    "safety_checker_param",
    "start_frame_num",
    "start_frame_number",
    "startFrameNum",
    "frame_num",
    "conditioning_type",
    "conditioning_timeline",
    "frame_field",
    "multipleOf",
    "min",
    "max",
    "default",
    "required",
    "type",
    "input_schema",
    "source_video_duration",
    "reverse_video",
    "contentType",
    "modality",
    "destination",
    "character_id",
    "request_id",
    "status",
    "payload",
    "error",
    "detail",
    "payload_error",
    "output",
    "content_type",
    "file_size",
];

/// Strings that mean something to some parser here, plus hostile ones.
const WORDS: &[&str] = &[
    "",
    " ",
    "0",
    "-1",
    "1e309",
    "-1e309",
    "NaN",
    "inf",
    "-inf",
    "1.5",
    "9007199254740993",
    "99999999999999999999999",
    "16:9",
    "9:16",
    "1:1",
    "4:3",
    "0:0",
    "1:0",
    ":",
    "auto",
    "square_hd",
    "landscape_16_9",
    "480p",
    "720p",
    "fast",
    "high",
    "sfw",
    "nsfw",
    "video",
    "image",
    "enum",
    "safety_tolerance",
    "OK",
    "ERROR",
    "ltx",
    "fal-ai/ltx-video",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:",
    "https://v3.fal.media/files/x.png",
    "http://127.0.0.1:1/x.mp4",
    "https://example.supabase.co/storage/v1/object/sign/workspace-temp/u/x.png?token=t",
    "https://example.supabase.co/storage/v1/object/sign/user-library/%ZZ",
    "https://example.supabase.co/storage/v1/object/sign/%F0%9F",
    "workspace-temp/00000000-0000-0000-0000-000000000000/x.png",
    "user-library/u/x.png",
    "reference_images/x.png",
    "videos/../x.mp4",
    "../../etc/passwd",
    "/../../etc/passwd",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "s3://bucket/key",
    "C:\\windows",
    "'; DROP TABLE jobs; --",
    "' OR '1'='1",
    "a child",
    "\u{0}",
    "\u{202e}",
    "é",
    "👩‍👩‍👧",
    "x\ny",
];

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(WORDS).prop_map(str::to_owned)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => word(),
        2 => any::<String>(),
        1 => prop::collection::vec(word(), 1..4).prop_map(|w| w.concat()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // non-finite become null
        prop::sample::select(
            &[
                0.0,
                -0.0,
                0.5,
                1.0,
                -1.0,
                8.0,
                160.0,
                1e-300,
                1e300,
                f64::MAX,
                f64::MIN,
                f64::EPSILON,
                9_007_199_254_740_993.0,
            ][..]
        )
        .prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ]
}

/// Any JSON value, nested a few levels, keyed mostly by names the code reads.
fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), json()), 0..10).prop_map(|kv| kv.into_iter().collect())
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.7, s)
}

prop_compose! {
    fn request()(
        prompt in opt(text()),
        api_model_id in opt(text()),
        model_key_override in opt(text()),
        modality in opt(text()),
        quality in opt(text()),
        job_type in opt(text()),
        input in opt(object()),
        metadata in opt(object()),
    ) -> GenerationRequest {
        GenerationRequest {
            prompt, api_model_id, model_key_override, modality,
            quality, job_type, input, metadata,
        }
    }
}

/// One `input_schema` field definition: mostly the shape the builder expects, with hostile values.
fn field_def() -> impl Strategy<Value = Value> {
    (
        opt(prop_oneof![any::<bool>().prop_map(Value::Bool), leaf()]),
        opt(leaf()),
        opt(leaf()),
        opt(json()),
        opt(prop_oneof![Just(Value::from("enum")), leaf()]),
        opt(leaf()),
    )
        .prop_map(|(required, min, max, default, ty, multiple_of)| {
            let mut def = Map::new();
            for (k, v) in [
                ("required", required),
                ("min", min),
                ("max", max),
                ("default", default),
                ("type", ty),
                ("multipleOf", multiple_of),
            ] {
                if let Some(v) = v {
                    def.insert(k.into(), v);
                }
            }
            Value::Object(def)
        })
}

fn capabilities() -> impl Strategy<Value = Value> {
    let structured = (
        opt(prop::collection::vec((key(), field_def()), 0..12)),
        opt(prop_oneof![Just(Value::from("safety_tolerance")), leaf()]),
        opt(prop::collection::vec(
            (
                prop::sample::select(&["min", "max", "multipleOf", "frame_field"][..]),
                leaf(),
            ),
            0..4,
        )),
    )
        .prop_map(|(schema, safety, timeline)| {
            let mut caps = Map::new();
            if let Some(fields) = schema {
                caps.insert(
                    "input_schema".into(),
                    Value::Object(fields.into_iter().collect()),
                );
            }
            if let Some(s) = safety {
                caps.insert("safety_checker_param".into(), s);
            }
            if let Some(t) = timeline {
                caps.insert(
                    "conditioning_timeline".into(),
                    Value::Object(t.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
                );
            }
            Value::Object(caps)
        });
    prop_oneof![4 => structured, 1 => json()]
}

fn model() -> impl Strategy<Value = ModelSpec> {
    (
        prop_oneof![
            Just("fal-ai/bytedance/seedream/v4/text-to-image".to_owned()),
            Just("fal-ai/ltx-video-13b-distilled/multiconditioning".to_owned()),
            text(),
        ],
        any::<bool>(),
        prop_oneof![3 => object().prop_map(Value::Object), 1 => json()],
        capabilities(),
    )
        .prop_map(
            |(model_key, video, input_defaults, capabilities)| ModelSpec {
                model_key,
                modality: if video {
                    Modality::Video
                } else {
                    Modality::Image
                },
                input_defaults,
                capabilities,
                override_capabilities: None,
            },
        )
}

/// Presigned URLs for the request's references: each reference string resolved or not by one bit of `mask`.
fn resolved_for(req: &GenerationRequest, mask: u64) -> HashMap<String, String> {
    reference_strings(req)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << (i % 64)) != 0)
        .map(|(i, s)| {
            (
                s,
                format!("https://s3.local/presigned/{i}?X-Amz-Signature=x"),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// (a) The webhook body
// ---------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn webhook_body_of_any_bytes_parses_or_is_refused(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_body(&body);
    }

    #[test]
    fn webhook_body_of_any_json_parses_or_is_refused(value in json()) {
        let body = serde_json::to_vec(&value).unwrap();
        match parse_body(&body) {
            // Only objects are deliveries.
            Ok(parsed) => {
                prop_assert!(value.is_object());
                if let Some(id) = parsed.request_id {
                    prop_assert!(!id.is_empty());
                }
            }
            Err(_) => prop_assert!(!value.is_object()),
        }
    }

    #[test]
    fn webhook_body_shaped_like_fal_parses_with_the_right_outcome(
        request_id in opt(json()),
        status in opt(prop_oneof![Just(json!("OK")), Just(json!("ERROR")), leaf()]),
        payload in opt(json()),
        error in opt(json()),
        extra in object(),
    ) {
        let mut body = extra;
        for (k, v) in [("request_id", request_id), ("status", status.clone()), ("payload", payload), ("error", error)] {
            if let Some(v) = v {
                body.insert(k.into(), v);
            }
        }
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap();
        let parsed = parse_body(&bytes).expect("a JSON object is a delivery");
        if status == Some(json!("ERROR")) {
            prop_assert!(matches!(parsed.outcome, WebhookOutcome::Error(_)));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// (b) The generation request and the input builder
// ---------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn build_input_never_panics(req in request(), model in model(), mask in any::<u64>()) {
        let resolved = resolved_for(&req, mask);
        if let Ok(built) = build_input(&req, &model, &resolved) {
            // What fal gets is always a flat object with the prompt in it.
            prop_assert!(built.input.is_object());
            prop_assert!(built.input.get("prompt").and_then(Value::as_str).is_some_and(|p| !p.is_empty()));
            prop_assert!(["sfw", "nsfw"].contains(&built.content_mode.as_str()));
        }
    }

    #[test]
    fn any_json_body_parses_or_is_refused_then_builds_or_is_refused(
        body in prop_oneof![
            object().prop_map(Value::Object),
            json(),
            // The fields of the request, each with any value.
            prop::collection::vec((
                prop::sample::select(&["prompt", "apiModelId", "model_key_override", "modality", "quality",
                    "job_type", "jobType", "input", "metadata"][..]).prop_map(str::to_owned),
                json(),
            ), 0..9).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ],
        model in model(),
        mask in any::<u64>(),
    ) {
        if let Ok(req) = serde_json::from_value::<GenerationRequest>(body) {
            let resolved = resolved_for(&req, mask);
            let _ = build_input(&req, &model, &resolved);
            let _ = (req.modality(), req.quality(), req.content_mode());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// (c) Result-URL policy
// ---------------------------------------------------------------------------------------------------------

fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(
        &[
            "https://",
            "http://",
            "HTTPS://",
            "ftp://",
            "file://",
            "gopher://",
            "data:",
            "//",
            "",
        ][..],
    );
    let userinfo = prop::sample::select(&["", "user@", "user:pw@", ":@", "@"][..]);
    let host = prop_oneof![
        prop::sample::select(
            &[
                "fal.media",
                "v3.fal.media",
                "FAL.MEDIA.",
                "evilfal.media",
                "fal.media.evil.com",
                "127.0.0.1",
                "127.0.0.3",
                "0x7f.1",
                "2130706433",
                "[::1]",
                "[::ffff:127.0.0.1]",
                "[fe80::1%25eth0]",
                "10.0.0.1",
                "169.254.169.254",
                "0.0.0.0",
                "localhost",
                "xn--fal-media",
                "ﬀ.fal.media",
                "%66al.media",
                "",
            ][..]
        )
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    let port = prop_oneof![
        Just(String::new()),
        (0u32..70_000).prop_map(|p| format!(":{p}")),
        Just(":".to_owned()),
        Just(":-1".to_owned()),
    ];
    let path = prop_oneof![
        Just(String::new()),
        Just("/files/x.png".to_owned()),
        Just("/../../etc/passwd".to_owned()),
        any::<String>().prop_map(|s| format!("/{s}")),
    ];
    (scheme, userinfo, host, port, path)
        .prop_map(|(s, u, h, p, path)| format!("{s}{u}{h}{p}{path}"))
}

fn policy() -> impl Strategy<Value = MediaPolicy> {
    let entry = prop_oneof![
        prop::sample::select(
            &[
                "fal.media",
                "*.fal.media",
                "127.0.0.1:8080",
                "[::1]:443",
                "[::1",
                "*",
                "*.",
                ":",
                "host:notaport",
                "a:b:c",
                "",
                "é.example",
            ][..]
        )
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    (prop::collection::vec(entry, 0..5), any::<bool>())
        .prop_map(|(hosts, http)| MediaPolicy::new(hosts, http))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn media_policy_check_never_panics(policy in policy(), raw in prop_oneof![url_like(), any::<String>()]) {
        if let Ok(url) = policy.check(&raw) {
            prop_assert!(matches!(url.scheme(), "https" | "http"), "{raw} -> {url}");
            prop_assert!(url.username().is_empty() && url.password().is_none(), "{raw} -> {url}");
        }
    }

    #[test]
    fn default_policy_accepts_only_fal_media_over_https(raw in prop_oneof![url_like(), any::<String>()]) {
        let policy = MediaPolicy::new(vec!["fal.media".into(), "*.fal.media".into()], false);
        if let Ok(url) = policy.check(&raw) {
            prop_assert_eq!(url.scheme(), "https");
            let host = url.host_str().unwrap_or_default().trim_end_matches('.').to_ascii_lowercase();
            prop_assert!(host == "fal.media" || host.ends_with(".fal.media"), "{raw} -> {url}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// (d) fal's webhook signature
// ---------------------------------------------------------------------------------------------------------

/// The key set forged deliveries are checked against (made once: key derivation is slow in a debug build).
fn keys() -> &'static [ed25519_dalek::VerifyingKey] {
    static KEYS: std::sync::OnceLock<Vec<ed25519_dalek::VerifyingKey>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        [1u8, 2, 3]
            .map(|seed| SigningKey::from_bytes(&[seed; 32]).verifying_key())
            .to_vec()
    })
}

fn timestamp(now: i64) -> impl Strategy<Value = String> {
    prop_oneof![
        // Fresh, stale and far-off times.
        (-400i64..400).prop_map(move |d| (now + d).to_string()),
        any::<i64>().prop_map(|t| t.to_string()),
        prop::sample::select(&[i64::MIN, i64::MIN + 1, i64::MAX, 0, -1][..])
            .prop_map(|t| t.to_string()),
        (-400i64..400).prop_map(move |d| format!(" {} ", now + d)),
        text(),
    ]
}

fn signature_hex() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 64).prop_map(hex::encode),
        prop::collection::vec(any::<u8>(), 0..100).prop_map(hex::encode),
        // Valid encodings of degenerate signatures: all zeros, small-order R.
        Just("00".repeat(64)),
        Just(format!("01{}", "00".repeat(63))),
        text(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn forged_signatures_never_verify(
        request_id in text(),
        user_id in text(),
        ts in timestamp(chrono::Utc::now().timestamp()),
        sig in signature_hex(),
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..512), json().prop_map(|v| serde_json::to_vec(&v).unwrap())],
        pinned in opt(text()),
    ) {
        let headers = SignatureHeaders {
            request_id: &request_id,
            user_id: &user_id,
            timestamp: &ts,
            signature_hex: &sig,
        };
        let now = chrono::Utc::now().timestamp();
        prop_assert!(verify(&headers, &body, keys(), now, pinned.as_deref()).is_err());
        prop_assert!(verify(&headers, &body, &[], now, None).is_err());
    }
}

proptest! {
    // Each case signs once and verifies twice: Ed25519 in an unoptimised build costs milliseconds per operation.
    #![proptest_config(ProptestConfig { cases: 32, ..config() })]

    #[test]
    fn a_real_signature_verifies_only_for_exactly_what_it_signed(
        request_id in text(),
        user_id in text(),
        offset in -299i64..299,
        body in prop::collection::vec(any::<u8>(), 0..256),
        flip in any::<prop::sample::Index>(),
    ) {
        use ed25519_dalek::Signer as _;
        let now = chrono::Utc::now().timestamp();
        let ts = (now + offset).to_string();
        let key = SigningKey::from_bytes(&[2; 32]);
        let sig = hex::encode(key.sign(&signed_message(&request_id, &user_id, &ts, &body)).to_bytes());
        let headers = SignatureHeaders { request_id: &request_id, user_id: &user_id, timestamp: &ts, signature_hex: &sig };
        prop_assert!(verify(&headers, &body, keys(), now, None).is_ok());
        if !body.is_empty() {
            let mut tampered = body.clone();
            tampered[flip.index(body.len())] ^= 0x01;
            prop_assert!(verify(&headers, &tampered, keys(), now, None).is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fixed cases: extremes a random search rarely reaches
// ---------------------------------------------------------------------------------------------------------

#[test]
fn deeply_nested_webhook_bodies_are_refused_without_overflowing_the_stack() {
    let nested_payload = |depth: usize| {
        format!(
            "{{\"request_id\":\"r\",\"payload\":{}1{}}}",
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        )
    };
    // The same shape, shallow: taken (what refuses the deep ones is their depth).
    assert!(parse_body(nested_payload(10).as_bytes()).is_ok());
    for depth in [127, 128, 129, 10_000, 100_000] {
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_body(body.as_bytes()).is_err(), "depth {depth}");
        // Around the parser's limit either answer is right, as long as it answers; past it, a refusal.
        let parsed = parse_body(nested_payload(depth).as_bytes());
        if depth > 128 {
            assert!(parsed.is_err(), "payload depth {depth}");
        }
    }
}

#[test]
fn extreme_timestamps_are_refused_not_panicked_on() {
    let now = chrono::Utc::now().timestamp();
    let sig = "00".repeat(64);
    for ts in [
        i64::MIN.to_string(),
        (i64::MIN + 1).to_string(),
        i64::MAX.to_string(),
        now.wrapping_add(i64::MIN).to_string(),
        "99999999999999999999".to_owned(),
    ] {
        let headers = SignatureHeaders {
            request_id: "r",
            user_id: "u",
            timestamp: &ts,
            signature_hex: &sig,
        };
        assert!(verify(&headers, b"{}", keys(), now, None).is_err(), "{ts}");
    }
}
