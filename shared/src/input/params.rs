//! Model parameters (§2.4 steps 2, 3, 6 strength, 7, 9): defaults, the safety parameter, the client's overrides
//! and the aspect ratio.

use serde_json::{Map, Value, json};

use super::request::{ContentMode, Modality};
use super::schema::{Schema, clamp, json_number, number};

/// Step 2: `{prompt, ...input_defaults}`.
pub(crate) fn base_input(prompt: &str, defaults: &Value) -> Map<String, Value> {
    let mut out = defaults.as_object().cloned().unwrap_or_default();
    // Ambiguous: the original's spread let a default named `prompt` replace the user's; the user's prompt wins.
    out.insert("prompt".into(), Value::from(prompt));
    out
}

/// Step 3: `safety_tolerance` (a string, "6" for nsfw) or `enable_safety_checker` (the default's, else false).
pub(crate) fn apply_safety(
    out: &mut Map<String, Value>,
    capabilities: &Value,
    defaults: &Value,
    mode: ContentMode,
) {
    if capabilities
        .get("safety_checker_param")
        .and_then(Value::as_str)
        == Some("safety_tolerance")
    {
        let tolerance = match mode {
            ContentMode::Nsfw => None,
            ContentMode::Sfw => defaults.get("safety_tolerance").and_then(scalar_text),
        };
        out.insert(
            "safety_tolerance".into(),
            Value::from(tolerance.unwrap_or_else(|| "6".to_owned())),
        );
    } else {
        // Ambiguous: `?? false` kept any non-null default; a non-boolean one is treated as absent here.
        let enabled = defaults
            .get("enable_safety_checker")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        out.insert("enable_safety_checker".into(), Value::from(enabled));
    }
}

/// `String(x)` of a string or number default.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Step 6, i2i only: `strength` exists only when the schema has it; the client's value is clamped to
/// `[min, max]` (0.1–1.0 by default), else the schema default, else 0.5.
pub(crate) fn apply_strength(
    out: &mut Map<String, Value>,
    input: &Map<String, Value>,
    schema: &Schema<'_>,
) {
    if !schema.has("strength") {
        out.remove("strength");
        return;
    }
    // Ambiguous: JS `min || 0.1` turned a schema min of 0 into 0.1; a numeric min is used as given here.
    let lo = schema.number("strength", "min").unwrap_or(0.1);
    let hi = schema.number("strength", "max").unwrap_or(1.0);
    let strength = match input.get("strength").and_then(number) {
        Some(s) => clamp(s, lo, hi),
        None => schema.number("strength", "default").unwrap_or(0.5),
    };
    out.insert("strength".into(), json_number(strength));
}

/// Largest width/height accepted from a client (larger values are ignored, leaving the model's default).
const MAX_DIMENSION: f64 = 16_384.0;

/// Step 7. Returns whether the client chose an explicit image size (which then beats the aspect mapping).
pub(crate) fn apply_overrides(
    out: &mut Map<String, Value>,
    input: &Map<String, Value>,
    schema: &Schema<'_>,
    modality: Modality,
) -> bool {
    let mut explicit_size = false;
    if modality == Modality::Image {
        let size = input.get("image_size").and_then(image_size).or_else(|| {
            let (w, h) = (
                dimension(input.get("width"))?,
                dimension(input.get("height"))?,
            );
            Some(json!({"width": w, "height": h}))
        });
        if let Some(size) = size {
            out.insert("image_size".into(), size);
            explicit_size = true;
        }
    }
    // Ambiguous: steps are an integer count, so a fractional value is rounded before the 1–50 clamp.
    if let Some(steps) = input.get("num_inference_steps").and_then(number) {
        out.insert(
            "num_inference_steps".into(),
            json_number(clamp(steps.round(), 1.0, 50.0)),
        );
    }
    if let Some(scale) = input.get("guidance_scale").and_then(number) {
        out.insert(
            "guidance_scale".into(),
            json_number(clamp(scale, 1.0, 20.0)),
        );
    }
    if let Some(Value::String(negative)) = input.get("negative_prompt") {
        out.insert("negative_prompt".into(), Value::from(negative.as_str()));
    }
    if let Some(seed) = input.get("seed").and_then(seed) {
        out.insert("seed".into(), seed);
    }
    if let Some(scale) = input.get("guide_scale").and_then(number) {
        let lo = schema.number("guide_scale", "min").unwrap_or(1.0);
        let hi = schema.number("guide_scale", "max").unwrap_or(20.0);
        out.insert("guide_scale".into(), json_number(clamp(scale, lo, hi)));
    }
    explicit_size
}

/// `image_size` as a preset name (`"square_hd"`) or `{width, height}`.
fn image_size(value: &Value) -> Option<Value> {
    match value {
        Value::String(name) if !name.is_empty() => Some(Value::from(name.as_str())),
        Value::Object(o) => {
            let (w, h) = (dimension(o.get("width"))?, dimension(o.get("height"))?);
            Some(json!({"width": w, "height": h}))
        }
        _ => None,
    }
}

fn dimension(value: Option<&Value>) -> Option<i64> {
    let n = value.and_then(number)?.round();
    (1.0..=MAX_DIMENSION).contains(&n).then_some(n as i64)
}

/// An integer seed, kept exactly (fal seeds exceed 2^53); a numeric string is accepted, fractions are not.
fn seed(value: &Value) -> Option<Value> {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(value.clone()),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(json_number),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>()
                .map(Value::from)
                .or_else(|_| s.parse::<i64>().map(Value::from))
                .ok()
        }
        _ => None,
    }
}

/// `metadata.aspectRatio`, one of the five the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AspectRatio {
    Square,
    Landscape16x9,
    Portrait9x16,
    Landscape4x3,
    Portrait3x4,
}

impl AspectRatio {
    /// Ambiguous: the original copied any string; only the five documented values are used here (others ignored).
    pub(crate) fn from_metadata(metadata: &Map<String, Value>) -> Option<Self> {
        match metadata.get("aspectRatio").and_then(Value::as_str)? {
            "1:1" => Some(Self::Square),
            "16:9" => Some(Self::Landscape16x9),
            "9:16" => Some(Self::Portrait9x16),
            "4:3" => Some(Self::Landscape4x3),
            "3:4" => Some(Self::Portrait3x4),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Square => "1:1",
            Self::Landscape16x9 => "16:9",
            Self::Portrait9x16 => "9:16",
            Self::Landscape4x3 => "4:3",
            Self::Portrait3x4 => "3:4",
        }
    }

    /// fal's `image_size` presets. (The original's fallback `landscape_4_3` covered unknown ratios, which are not
    /// parsed here.)
    fn preset(self) -> &'static str {
        match self {
            Self::Square => "square_hd",
            Self::Landscape16x9 => "landscape_16_9",
            Self::Portrait9x16 => "portrait_16_9",
            Self::Landscape4x3 => "landscape_4_3",
            Self::Portrait3x4 => "portrait_4_3",
        }
    }

    /// Pixel sizes for models that take `{width, height}`. Ambiguous: the original listed 1024², 1344×768 and
    /// 768×1344 only; 4:3 and 3:4 get the matching SDXL sizes instead of a square.
    fn pixels(self) -> (u32, u32) {
        match self {
            Self::Square => (1024, 1024),
            Self::Landscape16x9 => (1344, 768),
            Self::Portrait9x16 => (768, 1344),
            Self::Landscape4x3 => (1152, 896),
            Self::Portrait3x4 => (896, 1152),
        }
    }
}

/// Step 9 (not for extend): the aspect ratio as the schema wants it — `aspect_ratio` when the schema has it and no
/// `image_size`, an `image_size` preset when that field is an enum, else pixel sizes. An explicit client size wins.
/// For video, `aspect_ratio` was already decided by step 8, and pixel sizes are used only when the schema asks
/// for `image_size` (a video model without a schema gets no `image_size`).
pub(crate) fn apply_aspect(
    out: &mut Map<String, Value>,
    ratio: AspectRatio,
    schema: &Schema<'_>,
    modality: Modality,
    explicit_size: bool,
) {
    let (has_ratio, has_size) = (schema.has("aspect_ratio"), schema.has("image_size"));
    if has_ratio && !has_size {
        if modality == Modality::Image {
            out.insert("aspect_ratio".into(), Value::from(ratio.as_str()));
        }
        return;
    }
    if explicit_size {
        return;
    }
    if has_size && schema.is_enum("image_size") {
        out.insert("image_size".into(), Value::from(ratio.preset()));
    } else if has_size || modality == Modality::Image {
        let (width, height) = ratio.pixels();
        out.insert(
            "image_size".into(),
            json!({"width": width, "height": height}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn defaults_are_merged_and_the_users_prompt_wins() {
        let out = base_input(
            "a cat",
            &json!({"num_images": 1, "prompt": "default prompt"}),
        );
        assert_eq!(
            Value::Object(out),
            json!({"prompt": "a cat", "num_images": 1})
        );
        assert_eq!(
            Value::Object(base_input("a", &json!(["not", "an", "object"]))),
            json!({"prompt": "a"})
        );
    }

    /// The safety parameters `apply_safety` writes for a model's capabilities, defaults and content mode.
    fn safety(caps: Value, defaults: Value, mode: ContentMode) -> Map<String, Value> {
        let mut out = Map::new();
        apply_safety(&mut out, &caps, &defaults, mode);
        out
    }

    #[test]
    fn safety_tolerance_is_six_for_nsfw_as_a_string() {
        let caps = json!({"safety_checker_param": "safety_tolerance"});
        let out = safety(caps, json!({"safety_tolerance": 2}), ContentMode::Nsfw);
        assert_eq!(out.get("safety_tolerance"), Some(&json!("6")));
        assert!(!out.contains_key("enable_safety_checker"));
    }

    #[test]
    fn safety_tolerance_for_sfw_is_the_default_as_a_string_else_six() {
        let caps = json!({"safety_checker_param": "safety_tolerance"});
        let out = safety(
            caps.clone(),
            json!({"safety_tolerance": 2}),
            ContentMode::Sfw,
        );
        assert_eq!(out.get("safety_tolerance"), Some(&json!("2")));
        let out = safety(caps, json!({}), ContentMode::Sfw);
        assert_eq!(out.get("safety_tolerance"), Some(&json!("6")));
    }

    #[test]
    fn safety_checker_flag_comes_from_defaults_else_false() {
        let out = safety(
            json!({}),
            json!({"enable_safety_checker": true}),
            ContentMode::Nsfw,
        );
        assert_eq!(out.get("enable_safety_checker"), Some(&json!(true)));
        let out = safety(
            json!({}),
            json!({"enable_safety_checker": "yes"}),
            ContentMode::Sfw,
        );
        assert_eq!(out.get("enable_safety_checker"), Some(&json!(false)));
    }

    #[test]
    fn strength_is_clamped_to_the_schema_range() {
        let caps = json!({"input_schema": {"strength": {"min": 0.2, "max": 0.8}}});
        let schema = Schema::of(&caps);
        let mut out = Map::new();
        apply_strength(&mut out, &obj(json!({"strength": 5})), &schema);
        assert_eq!(out.get("strength"), Some(&json!(0.8)));
        apply_strength(&mut out, &obj(json!({"strength": "0.1"})), &schema);
        assert_eq!(out.get("strength"), Some(&json!(0.2)));
        let default_range = json!({"input_schema": {"strength": {}}});
        apply_strength(
            &mut out,
            &obj(json!({"strength": 0})),
            &Schema::of(&default_range),
        );
        assert_eq!(out.get("strength"), Some(&json!(0.1)));
    }

    #[test]
    fn strength_falls_back_to_schema_default_then_half() {
        let mut out = Map::new();
        let with_default = json!({"input_schema": {"strength": {"default": 0.7}}});
        apply_strength(&mut out, &Map::new(), &Schema::of(&with_default));
        assert_eq!(out.get("strength"), Some(&json!(0.7)));
        let without = json!({"input_schema": {"strength": {}}});
        apply_strength(&mut out, &Map::new(), &Schema::of(&without));
        assert_eq!(out.get("strength"), Some(&json!(0.5)));
    }

    #[test]
    fn strength_is_removed_when_the_schema_lacks_it() {
        let mut out = obj(json!({"strength": 0.9}));
        apply_strength(
            &mut out,
            &obj(json!({"strength": 0.4})),
            &Schema::of(&json!({})),
        );
        assert!(!out.contains_key("strength"));
    }

    #[test]
    fn steps_and_guidance_are_clamped() {
        let mut out = Map::new();
        let input =
            obj(json!({"num_inference_steps": 500, "guidance_scale": -3, "guide_scale": 99}));
        apply_overrides(&mut out, &input, &Schema::of(&json!({})), Modality::Image);
        assert_eq!(out.get("num_inference_steps"), Some(&json!(50)));
        assert_eq!(out.get("guidance_scale"), Some(&json!(1)));
        assert_eq!(out.get("guide_scale"), Some(&json!(20)));
        let input = obj(json!({"num_inference_steps": 0.4, "guidance_scale": 7.5}));
        apply_overrides(&mut out, &input, &Schema::of(&json!({})), Modality::Image);
        assert_eq!(out.get("num_inference_steps"), Some(&json!(1)));
        assert_eq!(out.get("guidance_scale"), Some(&json!(7.5)));
    }

    #[test]
    fn guide_scale_uses_the_schema_bounds() {
        let caps = json!({"input_schema": {"guide_scale": {"min": 2, "max": 6}}});
        let mut out = Map::new();
        apply_overrides(
            &mut out,
            &obj(json!({"guide_scale": 9})),
            &Schema::of(&caps),
            Modality::Video,
        );
        assert_eq!(out.get("guide_scale"), Some(&json!(6)));
    }

    #[test]
    fn negative_prompt_and_seed_pass_with_big_seeds_exact() {
        let mut out = Map::new();
        let input = obj(json!({"negative_prompt": "blurry", "seed": 196_619_188_014_358_660_u64}));
        apply_overrides(&mut out, &input, &Schema::of(&json!({})), Modality::Image);
        assert_eq!(out.get("negative_prompt"), Some(&json!("blurry")));
        assert_eq!(
            out.get("seed").map(Value::to_string).as_deref(),
            Some("196619188014358660")
        );
        let mut out = Map::new();
        apply_overrides(
            &mut out,
            &obj(json!({"seed": "42", "negative_prompt": 3})),
            &Schema::of(&json!({})),
            Modality::Image,
        );
        assert_eq!(out.get("seed"), Some(&json!(42)));
        assert!(!out.contains_key("negative_prompt"));
        let mut out = Map::new();
        apply_overrides(
            &mut out,
            &obj(json!({"seed": 1.5})),
            &Schema::of(&json!({})),
            Modality::Image,
        );
        assert!(!out.contains_key("seed"));
    }

    #[test]
    fn image_size_comes_from_a_preset_or_width_and_height_for_images_only() {
        let empty = json!({});
        let schema = Schema::of(&empty);
        let mut out = Map::new();
        assert!(apply_overrides(
            &mut out,
            &obj(json!({"image_size": "square_hd"})),
            &schema,
            Modality::Image
        ));
        assert_eq!(out.get("image_size"), Some(&json!("square_hd")));
        assert!(apply_overrides(
            &mut out,
            &obj(json!({"width": 800, "height": "600"})),
            &schema,
            Modality::Image
        ));
        assert_eq!(
            out.get("image_size"),
            Some(&json!({"width": 800, "height": 600}))
        );
        let mut out = Map::new();
        assert!(!apply_overrides(
            &mut out,
            &obj(json!({"width": 800, "height": 0})),
            &schema,
            Modality::Image
        ));
        assert!(!apply_overrides(
            &mut out,
            &obj(json!({"image_size": "square_hd"})),
            &schema,
            Modality::Video
        ));
        assert!(!out.contains_key("image_size"));
    }

    #[test]
    fn aspect_ratio_is_set_when_the_schema_has_it_without_image_size() {
        let caps = json!({"input_schema": {"aspect_ratio": {}}});
        let mut out = Map::new();
        apply_aspect(
            &mut out,
            AspectRatio::Portrait9x16,
            &Schema::of(&caps),
            Modality::Image,
            false,
        );
        assert_eq!(Value::Object(out), json!({"aspect_ratio": "9:16"}));
    }

    #[test]
    fn enum_image_size_gets_the_fal_preset() {
        let caps = json!({"input_schema": {"image_size": {"type": "enum"}, "aspect_ratio": {}}});
        let expected = [
            (AspectRatio::Square, "square_hd"),
            (AspectRatio::Landscape16x9, "landscape_16_9"),
            (AspectRatio::Portrait9x16, "portrait_16_9"),
            (AspectRatio::Landscape4x3, "landscape_4_3"),
            (AspectRatio::Portrait3x4, "portrait_4_3"),
        ];
        for (ratio, preset) in expected {
            let mut out = Map::new();
            apply_aspect(&mut out, ratio, &Schema::of(&caps), Modality::Image, false);
            assert_eq!(out.get("image_size"), Some(&json!(preset)));
        }
    }

    #[test]
    fn other_image_models_get_pixel_sizes_unless_the_client_chose_one() {
        let mut out = Map::new();
        apply_aspect(
            &mut out,
            AspectRatio::Landscape16x9,
            &Schema::of(&json!({})),
            Modality::Image,
            false,
        );
        assert_eq!(
            out.get("image_size"),
            Some(&json!({"width": 1344, "height": 768}))
        );
        let mut out = obj(json!({"image_size": "square"}));
        apply_aspect(
            &mut out,
            AspectRatio::Landscape16x9,
            &Schema::of(&json!({})),
            Modality::Image,
            true,
        );
        assert_eq!(out.get("image_size"), Some(&json!("square")));
    }

    #[test]
    fn video_models_without_image_size_get_no_pixel_size() {
        let mut out = Map::new();
        apply_aspect(
            &mut out,
            AspectRatio::Square,
            &Schema::of(&json!({})),
            Modality::Video,
            false,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn aspect_ratio_metadata_accepts_the_five_documented_values() {
        for ratio in ["1:1", "16:9", "9:16", "4:3", "3:4"] {
            let parsed = AspectRatio::from_metadata(&obj(json!({"aspectRatio": ratio})));
            assert_eq!(parsed.map(AspectRatio::as_str), Some(ratio));
        }
        assert_eq!(
            AspectRatio::from_metadata(&obj(json!({"aspectRatio": "21:9"}))),
            None
        );
        assert_eq!(
            AspectRatio::from_metadata(&obj(json!({"aspectRatio": 1}))),
            None
        );
    }
}
