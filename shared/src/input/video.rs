//! Video-only fields (§2.4 step 8): the extend window, the conditioning lists, the frame count, pass-throughs,
//! resolution by quality, the aspect ratio and the i2v image.

use serde_json::{Map, Value, json};

use super::params::AspectRatio;
use super::reference::{MSG_FORMAT, MSG_MULTI, list, resolve, single_image, url_in};
use super::request::Quality;
use super::schema::{Schema, clamp, is_scalar, json_number, number, positive};
use super::{GenerationMode, InputError, Sources};

pub(crate) const MSG_VIDEO: &str = "Invalid video reference URL";
pub(crate) const MSG_VIDEOS: &str = "Invalid videos[] input";

/// Copied from `input` as they are (scalars only).
const PASS_THROUGH: &[&str] = &[
    "resolution",
    "aspect_ratio",
    "num_frames",
    "frame_rate",
    "fps",
    "reverse_video",
    "constant_rate_factor",
    "enable_detail_pass",
    "temporal_adain_factor",
    "tone_map_compression_ratio",
    "first_pass_num_inference_steps",
    "first_pass_skip_final_steps",
    "second_pass_num_inference_steps",
    "second_pass_skip_initial_steps",
];

/// Frames of the source video an extend request conditions on (its tail).
const EXTEND_WINDOW: i64 = 48;
/// Frame counts are capped here before any integer arithmetic, so hostile durations cannot overflow.
const MAX_FRAMES: f64 = 1.0e9;
const FRAME_KEYS: &[&str] = &["start_frame_num", "start_frame_number", "startFrameNum"];

pub(crate) fn apply(
    out: &mut Map<String, Value>,
    src: &Sources<'_>,
    schema: &Schema<'_>,
    model_key: &str,
    quality: Quality,
    mode: GenerationMode,
) -> Result<(), InputError> {
    let input = src.input;
    for key in PASS_THROUGH {
        if let Some(value) = input.get(*key).filter(|v| is_scalar(v)) {
            out.insert((*key).into(), value.clone());
        }
    }
    if let Some(frames) = requested_frames(input, src.metadata) {
        out.insert(
            "num_frames".into(),
            Value::from(frame_count(frames, model_key, schema)),
        );
    }
    match quality {
        Quality::Fast => {
            out.insert("resolution".into(), Value::from("480p"));
        }
        // Ambiguous: "keep or 720p" keeps any resolution already there (client's or the model default's).
        Quality::High => {
            if out.get("resolution").is_none_or(|r| !truthy_text(r)) {
                out.insert("resolution".into(), Value::from("720p"));
            }
        }
    }
    let input_says_auto = input.get("aspect_ratio").and_then(Value::as_str) == Some("auto");
    if let Some(ratio) = AspectRatio::from_metadata(src.metadata).filter(|_| !input_says_auto) {
        out.insert("aspect_ratio".into(), Value::from(ratio.as_str()));
    }
    // Ambiguous: the reference kinds are exclusive, in the order of `generation_mode` — an extend request sends
    // only its video, a conditioning request only its lists, a plain i2v request only its image.
    match mode {
        GenerationMode::V2vExtend => {
            out.insert("video".into(), extend_video(src)?);
        }
        GenerationMode::MultiConditioning => conditioning(out, src)?,
        GenerationMode::I2v => {
            out.insert("image_url".into(), Value::from(i2v_image(src)?));
        }
        _ => {}
    }
    Ok(())
}

fn truthy_text(value: &Value) -> bool {
    value.as_str().is_some_and(|s| !s.is_empty())
}

/// `input.num_frames` if the client gave one, else `metadata.duration × frame rate` (`frame_rate`, else
/// `frames_per_second`, else 16). Ambiguous: the original listed both; the explicit count wins.
fn requested_frames(input: &Map<String, Value>, metadata: &Map<String, Value>) -> Option<f64> {
    if let Some(frames) = input.get("num_frames").and_then(number) {
        return Some(frames);
    }
    let duration = positive(metadata.get("duration"))?;
    let rate = positive(input.get("frame_rate"))
        .or_else(|| positive(input.get("frames_per_second")))
        .unwrap_or(16.0);
    Some(duration * rate)
}

/// A frame count fal accepts: at least 1, `8n + 1` for LTX models, within the schema's `num_frames` bounds.
/// Ambiguous: "forced to 8n+1, clamped to schema" — rounded to the nearest 8n+1 first, and if the clamp breaks
/// that, moved to the largest 8n+1 inside the bounds (when there is one).
fn frame_count(requested: f64, model_key: &str, schema: &Schema<'_>) -> i64 {
    let ltx = model_key.to_ascii_lowercase().contains("ltx");
    let lo = schema.number("num_frames", "min").unwrap_or(1.0).max(1.0);
    let hi = schema
        .number("num_frames", "max")
        .unwrap_or(MAX_FRAMES)
        .min(MAX_FRAMES);
    let mut frames = clamp(requested.round(), 1.0, MAX_FRAMES);
    if ltx {
        frames = ((frames - 1.0) / 8.0).round().max(0.0) * 8.0 + 1.0;
    }
    frames = clamp(frames, lo, hi);
    if ltx && (frames - 1.0) % 8.0 != 0.0 {
        let below = ((frames - 1.0) / 8.0).floor() * 8.0 + 1.0;
        if below >= lo {
            frames = below;
        }
    }
    frames.round() as i64
}

/// `input.video` as fal's extend object, conditioning on the last 48 frames of the source (start aligned down
/// to a multiple of 8; 0 for clips of 48 frames or fewer, or of unknown length).
fn extend_video(src: &Sources<'_>) -> Result<Value, InputError> {
    let bad = || InputError::InvalidReference(MSG_VIDEO.to_owned());
    let reference = src
        .input
        .get("video")
        .and_then(|v| url_in(v, &["video_url", "url"]))
        .ok_or_else(bad)?;
    let url = resolve(reference, src.resolved).map_err(|_| bad())?;
    let rate = positive(src.input.get("frame_rate")).unwrap_or(30.0);
    let total = positive(src.input.get("source_video_duration"))
        .map(|d| clamp((d * rate).floor(), 0.0, MAX_FRAMES) as i64)
        .unwrap_or(0);
    let start = if total <= EXTEND_WINDOW {
        0
    } else {
        (total - EXTEND_WINDOW) / 8 * 8
    };
    Ok(json!({
        "video_url": url,
        "start_frame_number": start,
        "max_num_frames": EXTEND_WINDOW,
        "limit_num_frames": true,
        "conditioning_type": "rgb",
        "strength": 1,
    }))
}

/// `capabilities.conditioning_timeline`: where conditioning frames may sit and under which field name.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Timeline {
    min: f64,
    max: f64,
    multiple_of: f64,
    field: String,
}

impl Timeline {
    /// Defaults 0–160 and `start_frame_num`; ambiguous: the default step is 8 (LTX conditions on multiples of 8).
    pub(crate) fn of(capabilities: &Value) -> Self {
        let t = capabilities.get("conditioning_timeline");
        let get = |k: &str| {
            t.and_then(|t| t.get(k))
                .and_then(number)
                .map(|n| clamp(n, -MAX_FRAMES, MAX_FRAMES))
        };
        Self {
            min: get("min").unwrap_or(0.0),
            max: get("max").unwrap_or(160.0),
            multiple_of: get("multipleOf").filter(|m| *m >= 1.0).unwrap_or(8.0),
            field: t
                .and_then(|t| t.get("frame_field"))
                .and_then(Value::as_str)
                .filter(|f| !f.is_empty())
                .unwrap_or("start_frame_num")
                .to_owned(),
        }
    }

    /// The nearest multiple inside `[min, max]`; the clamped frame itself when no multiple fits.
    fn snap(&self, frame: f64) -> i64 {
        let x = clamp(frame, self.min, self.max);
        let m = self.multiple_of;
        let mut snapped = (x / m).round() * m;
        if snapped > self.max {
            snapped -= m;
        }
        if snapped < self.min {
            snapped += m;
        }
        if snapped < self.min || snapped > self.max {
            snapped = x;
        }
        snapped.round() as i64
    }
}

/// `input.images[]` / `input.videos[]` as conditioning items; entries that do not resolve are dropped, a list
/// none of whose entries resolve is an error. Any image makes the aspect ratio `auto`.
fn conditioning(out: &mut Map<String, Value>, src: &Sources<'_>) -> Result<(), InputError> {
    let timeline = Timeline::of(src.capabilities);
    let images = conditioning_items(src, &timeline, "images", &["image_url", "url"]);
    // Ambiguous: the original named no error for an images[] list that fails entirely; the multi-reference
    // message is used rather than silently generating from text.
    match images {
        Some(items) if items.is_empty() => {
            return Err(InputError::InvalidReference(MSG_MULTI.to_owned()));
        }
        Some(items) => {
            out.insert("images".into(), Value::Array(items));
            out.insert("aspect_ratio".into(), Value::from("auto"));
        }
        None => {}
    }
    match conditioning_items(src, &timeline, "videos", &["video_url", "url"]) {
        Some(items) if items.is_empty() => Err(InputError::InvalidReference(MSG_VIDEOS.to_owned())),
        Some(items) => {
            out.insert("videos".into(), Value::Array(items));
            Ok(())
        }
        None => Ok(()),
    }
}

/// `None` when the list is absent or empty; otherwise the entries that resolved.
fn conditioning_items(
    src: &Sources<'_>,
    timeline: &Timeline,
    field: &str,
    url_keys: &[&str],
) -> Option<Vec<Value>> {
    let entries = list(src.input, field);
    if entries.is_empty() {
        return None;
    }
    let items = entries
        .iter()
        .filter_map(|entry| {
            let url = resolve(url_in(entry, url_keys)?, src.resolved).ok()?;
            let frame = FRAME_KEYS
                .iter()
                .find_map(|k| entry.get(*k).and_then(number))
                .unwrap_or(0.0);
            // Ambiguous: strength is 0–1 for fal's conditioning items, so a client value is clamped to that.
            let strength = entry
                .get("strength")
                .and_then(number)
                .map_or(1.0, |s| clamp(s, 0.0, 1.0));
            let key = url_keys.first().copied().unwrap_or("url");
            let mut item = Map::new();
            item.insert(key.into(), Value::from(url));
            item.insert("strength".into(), json_number(strength));
            item.insert(timeline.field.clone(), Value::from(timeline.snap(frame)));
            if field == "videos" {
                if let Some(kind) = entry.get("conditioning_type").filter(|v| v.is_string()) {
                    item.insert("conditioning_type".into(), kind.clone());
                }
                if let Some(preprocess) = entry.get("preprocess").filter(|v| v.is_boolean()) {
                    item.insert("preprocess".into(), preprocess.clone());
                }
            }
            Some(Value::Object(item))
        })
        .collect();
    Some(items)
}

/// The i2v image: `input.image_url`, else (ambiguous: the original read only `image_url`) the first string of
/// `input.image_urls`, so an i2v request never silently loses its image.
fn i2v_image(src: &Sources<'_>) -> Result<String, InputError> {
    let candidate = match src.input.get("image_url") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        _ => list(src.input, "image_urls").iter().find_map(Value::as_str),
    };
    match candidate {
        Some(s) => single_image(s, src.resolved),
        None => Err(InputError::InvalidReference(MSG_FORMAT.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn schema_with(fields: Value) -> Value {
        json!({"input_schema": fields})
    }

    #[test]
    fn ltx_frame_counts_are_forced_to_8n_plus_1() {
        let empty = json!({});
        let schema = Schema::of(&empty);
        assert_eq!(frame_count(80.0, "fal-ai/ltx-video-13b", &schema), 81);
        assert_eq!(frame_count(84.0, "fal-ai/LTXV", &schema), 81);
        assert_eq!(frame_count(86.0, "fal-ai/ltxv", &schema), 89);
        assert_eq!(frame_count(1.0, "ltx", &schema), 1);
        assert_eq!(frame_count(80.0, "fal-ai/wan/v2.2", &schema), 80);
    }

    #[test]
    fn frame_counts_are_clamped_to_the_schema() {
        let caps = schema_with(json!({"num_frames": {"min": 9, "max": 120}}));
        let schema = Schema::of(&caps);
        assert_eq!(frame_count(500.0, "fal-ai/wan", &schema), 120);
        assert_eq!(frame_count(2.0, "fal-ai/wan", &schema), 9);
        // 120 is not 8n+1: an LTX model gets the largest 8n+1 inside the bounds.
        assert_eq!(frame_count(500.0, "fal-ai/ltx", &schema), 113);
        assert_eq!(frame_count(-5.0, "fal-ai/wan", &Schema::of(&json!({}))), 1);
        assert_eq!(
            frame_count(f64::MAX, "fal-ai/wan", &Schema::of(&json!({}))),
            1_000_000_000
        );
    }

    #[test]
    fn duration_times_frame_rate_gives_the_frame_count() {
        let meta = json!({"duration": 5})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let input = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(requested_frames(&input(json!({})), &meta), Some(80.0));
        assert_eq!(
            requested_frames(&input(json!({"frame_rate": 24})), &meta),
            Some(120.0)
        );
        assert_eq!(
            requested_frames(&input(json!({"frames_per_second": 30})), &meta),
            Some(150.0)
        );
        assert_eq!(
            requested_frames(&input(json!({"num_frames": 33})), &meta),
            Some(33.0)
        );
        assert_eq!(requested_frames(&input(json!({})), &Map::new()), None);
    }

    #[test]
    fn the_timeline_snaps_and_clamps_with_defaults_0_to_160_step_8() {
        let t = Timeline::of(&json!({}));
        assert_eq!(t.field, "start_frame_num");
        assert_eq!(t.snap(13.0), 16);
        assert_eq!(t.snap(11.0), 8);
        assert_eq!(t.snap(500.0), 160);
        assert_eq!(t.snap(-4.0), 0);
        let custom = Timeline::of(
            &json!({"conditioning_timeline": {"min": 1, "max": 97, "multipleOf": 24, "frame_field": "frame"}}),
        );
        assert_eq!(custom.field, "frame");
        assert_eq!(custom.snap(100.0), 96);
        assert_eq!(custom.snap(0.0), 24);
        // A range narrower than the step: the clamped frame itself.
        let narrow =
            Timeline::of(&json!({"conditioning_timeline": {"min": 3, "max": 5, "multipleOf": 8}}));
        assert_eq!(narrow.snap(4.0), 4);
        // Nonsense bounds never panic.
        let inverted = Timeline::of(
            &json!({"conditioning_timeline": {"min": 50, "max": 10, "multipleOf": 0}}),
        );
        let _ = inverted.snap(30.0);
    }

    fn sources<'a>(
        input: &'a Map<String, Value>,
        caps: &'a Value,
        resolved: &'a HashMap<String, String>,
    ) -> Sources<'a> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        Sources {
            input,
            metadata: EMPTY.get_or_init(Map::new),
            capabilities: caps,
            resolved,
        }
    }

    #[test]
    fn extend_starts_at_the_tail_window_aligned_down_to_8() {
        let resolved = HashMap::new();
        let caps = json!({});
        let input =
            json!({"video": "https://x.test/v.mp4", "source_video_duration": 5, "frame_rate": 25});
        let input = input.as_object().cloned().unwrap_or_default();
        let video = extend_video(&sources(&input, &caps, &resolved)).ok();
        // 125 frames: the last 48 start at 77, aligned down to 72.
        assert_eq!(
            video,
            Some(
                json!({"video_url": "https://x.test/v.mp4", "start_frame_number": 72, "max_num_frames": 48,
                "limit_num_frames": true, "conditioning_type": "rgb", "strength": 1})
            )
        );
    }

    #[test]
    fn extend_of_a_short_or_unknown_clip_starts_at_zero_and_defaults_to_30_fps() {
        let resolved = HashMap::new();
        let caps = json!({});
        for (input, start) in [
            (
                json!({"video": {"url": "https://x.test/v.mp4"}, "source_video_duration": 1.6}),
                0,
            ),
            (json!({"video": {"video_url": "https://x.test/v.mp4"}}), 0),
            (
                json!({"video": "https://x.test/v.mp4", "source_video_duration": 4}),
                72,
            ),
        ] {
            let input = input.as_object().cloned().unwrap_or_default();
            let video = extend_video(&sources(&input, &caps, &resolved)).ok();
            assert_eq!(
                video.and_then(|v| v.get("start_frame_number").cloned()),
                Some(json!(start))
            );
        }
    }

    #[test]
    fn an_unusable_extend_video_is_the_originals_error() {
        let resolved = HashMap::new();
        let caps = json!({});
        for input in [
            json!({"video": "u1/v.mp4"}),
            json!({"video": 7}),
            json!({"video": {"x": "y"}}),
        ] {
            let input = input.as_object().cloned().unwrap_or_default();
            let err = extend_video(&sources(&input, &caps, &resolved))
                .err()
                .map(|e| e.to_string());
            assert_eq!(err.as_deref(), Some(MSG_VIDEO));
        }
    }

    #[test]
    fn conditioning_images_carry_url_strength_and_snapped_frame() {
        let resolved: HashMap<String, String> =
            [("u1/a.png".to_owned(), "https://s3.test/a".to_owned())].into();
        let caps = json!({"conditioning_timeline": {"frame_field": "frame_num"}});
        let input = json!({"images": [
            {"image_url": "u1/a.png", "start_frame_number": 37},
            {"url": "https://x.test/b.png", "strength": 0.4, "startFrameNum": 999},
            {"image_url": "u1/unsigned.png"}
        ]});
        let input = input.as_object().cloned().unwrap_or_default();
        let mut out = Map::new();
        assert!(conditioning(&mut out, &sources(&input, &caps, &resolved)).is_ok());
        assert_eq!(
            out.get("images"),
            Some(&json!([
                {"image_url": "https://s3.test/a", "strength": 1, "frame_num": 40},
                {"image_url": "https://x.test/b.png", "strength": 0.4, "frame_num": 160}
            ]))
        );
        assert_eq!(out.get("aspect_ratio"), Some(&json!("auto")));
    }

    #[test]
    fn conditioning_videos_keep_type_and_preprocess_and_fail_when_none_resolve() {
        let resolved = HashMap::new();
        let caps = json!({});
        let input = json!({"videos": [{"video_url": "https://x.test/v.mp4", "conditioning_type": "pose", "preprocess": true, "start_frame_num": 8}]});
        let input = input.as_object().cloned().unwrap_or_default();
        let mut out = Map::new();
        assert!(conditioning(&mut out, &sources(&input, &caps, &resolved)).is_ok());
        assert_eq!(
            out.get("videos"),
            Some(
                &json!([{"video_url": "https://x.test/v.mp4", "strength": 1, "start_frame_num": 8,
                "conditioning_type": "pose", "preprocess": true}])
            )
        );
        assert!(!out.contains_key("aspect_ratio"));
        let error_of = |input: Value| {
            let input = input.as_object().cloned().unwrap_or_default();
            conditioning(&mut Map::new(), &sources(&input, &caps, &resolved))
                .err()
                .map(|e| e.to_string())
        };
        let bad_videos = json!({"videos": [{"video_url": "u1/v.mp4"}, 3]});
        assert_eq!(error_of(bad_videos).as_deref(), Some(MSG_VIDEOS));
        let bad_images = json!({"images": [{"image_url": "ftp://x"}]});
        assert_eq!(error_of(bad_images).as_deref(), Some(MSG_MULTI));
    }

    #[test]
    fn i2v_uses_image_url_then_the_first_image_urls_entry() {
        let resolved = HashMap::new();
        let caps = json!({});
        let one =
            json!({"image_url": "https://x.test/a.png", "image_urls": ["https://x.test/b.png"]});
        let one = one.as_object().cloned().unwrap_or_default();
        assert_eq!(
            i2v_image(&sources(&one, &caps, &resolved)).ok().as_deref(),
            Some("https://x.test/a.png")
        );
        let list = json!({"image_urls": [1, "https://x.test/b.png"]})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            i2v_image(&sources(&list, &caps, &resolved)).ok().as_deref(),
            Some("https://x.test/b.png")
        );
        let wrong = json!({"image_url": {"x": 1}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            i2v_image(&sources(&wrong, &caps, &resolved))
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some(MSG_FORMAT)
        );
    }
}
