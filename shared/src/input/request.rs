//! The `fal-image` request body (§2.1), parsed once, and the values read from it: modality, quality, content
//! mode and the normalised `jobs.job_type` (§2.5).

use serde::Deserialize;
use serde_json::{Map, Value};

/// What a model generates (`api_models.modality`, minus `chat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    Image,
    Video,
}

impl Modality {
    /// `api_models.modality` / `jobs.format`; `chat` and anything else is not a generation modality.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "image" => Some(Self::Image),
            "video" => Some(Self::Video),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
        }
    }
}

/// `jobs.quality`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Fast,
    High,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "fast",
            Self::High => "high",
        }
    }
}

/// `metadata.contentType`: decides the safety parameter and is stored as `jobs.metadata.content_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    Sfw,
    Nsfw,
}

impl ContentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sfw => "sfw",
            Self::Nsfw => "nsfw",
        }
    }
}

/// The request body of `POST /fal-image`. Unknown fields are ignored; a known field of the wrong JSON type is a
/// parse error (400). `job_type` and `jobType` are both accepted, the first non-empty one wins.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "RawRequest")]
pub struct GenerationRequest {
    pub prompt: Option<String>,
    pub api_model_id: Option<String>,
    pub model_key_override: Option<String>,
    pub modality: Option<String>,
    pub quality: Option<String>,
    pub job_type: Option<String>,
    pub input: Option<Map<String, Value>>,
    pub metadata: Option<Map<String, Value>>,
}

/// The wire shape: both spellings of the job type, so a body carrying both is not a "duplicate field" error.
#[derive(Deserialize)]
struct RawRequest {
    prompt: Option<String>,
    #[serde(rename = "apiModelId")]
    api_model_id: Option<String>,
    model_key_override: Option<String>,
    modality: Option<String>,
    quality: Option<String>,
    job_type: Option<String>,
    #[serde(rename = "jobType")]
    job_type_camel: Option<String>,
    input: Option<Map<String, Value>>,
    metadata: Option<Map<String, Value>>,
}

impl From<RawRequest> for GenerationRequest {
    fn from(raw: RawRequest) -> Self {
        let non_empty = |s: &Option<String>| s.as_ref().filter(|s| !s.is_empty()).cloned();
        Self {
            job_type: non_empty(&raw.job_type).or_else(|| non_empty(&raw.job_type_camel)),
            prompt: raw.prompt,
            api_model_id: raw.api_model_id,
            model_key_override: raw.model_key_override,
            modality: raw.modality,
            quality: raw.quality,
            input: raw.input,
            metadata: raw.metadata,
        }
    }
}

impl GenerationRequest {
    /// `modality: "video"` or `metadata.modality: "video"` asks for video; anything else for an image.
    pub fn modality(&self) -> Modality {
        let meta = self
            .metadata
            .as_ref()
            .and_then(|m| m.get("modality"))
            .and_then(Value::as_str);
        if self.modality.as_deref() == Some("video") || meta == Some("video") {
            Modality::Video
        } else {
            Modality::Image
        }
    }

    /// `quality: "fast"` is fast; anything else (absent included) is the original's default, high.
    pub fn quality(&self) -> Quality {
        match self.quality.as_deref() {
            Some("fast") => Quality::Fast,
            _ => Quality::High,
        }
    }

    /// `metadata.contentType`: `sfw` is sfw; anything else (absent included) is the original's default, nsfw.
    pub fn content_mode(&self) -> ContentMode {
        let value = self
            .metadata
            .as_ref()
            .and_then(|m| m.get("contentType"))
            .and_then(Value::as_str);
        match value {
            Some("sfw") => ContentMode::Sfw,
            _ => ContentMode::Nsfw,
        }
    }
}

/// The values `jobs.job_type` accepts (its CHECK constraint).
pub const ALLOWED_JOB_TYPES: &[&str] = &[
    "image_fast",
    "image_high",
    "video_fast",
    "video_high",
    "sdxl_image_fast",
    "sdxl_image_high",
    "image7b_fast_enhanced",
    "image7b_high_enhanced",
    "video7b_fast_enhanced",
    "video7b_high_enhanced",
    "wan_video_fast",
    "wan_video_high",
    "rv51_fast",
    "rv51_high",
];

/// `jobs.job_type` for a request (§2.5): an allowed value passes; `fal_image`/`fal_video` become
/// `image_<quality>`/`video_<quality>`; anything else becomes `<modality>_<quality>`.
/// Deviation: the original let `wan_standard`/`wan_enhanced` through, which the CHECK then rejected (a 500 on
/// insert); here they fall back to modality + quality like every other unknown value.
pub fn normalize_job_type(job_type: Option<&str>, modality: Modality, quality: Quality) -> String {
    match job_type {
        Some(allowed) if ALLOWED_JOB_TYPES.contains(&allowed) => allowed.to_owned(),
        Some("fal_image") => format!("image_{}", quality.as_str()),
        Some("fal_video") => format!("video_{}", quality.as_str()),
        _ => format!("{}_{}", modality.as_str(), quality.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> GenerationRequest {
        serde_json::from_value(body).expect("request parses")
    }

    #[test]
    fn body_parses_with_unknown_fields_ignored() {
        let req = parse(json!({
            "prompt": "a cat", "apiModelId": "6f1c", "model_key_override": "fal-ai/x", "quality": "fast",
            "input": {"seed": 1}, "metadata": {"contentType": "sfw"}, "somethingElse": [1, 2]
        }));
        assert_eq!(req.prompt.as_deref(), Some("a cat"));
        assert_eq!(req.api_model_id.as_deref(), Some("6f1c"));
        assert_eq!(req.model_key_override.as_deref(), Some("fal-ai/x"));
        assert_eq!(
            req.input.and_then(|i| i.get("seed").cloned()),
            Some(json!(1))
        );
    }

    #[test]
    fn job_type_is_read_from_either_spelling_snake_case_first() {
        assert_eq!(
            parse(json!({"jobType": "video_high"})).job_type.as_deref(),
            Some("video_high")
        );
        assert_eq!(
            parse(json!({"job_type": "image_fast"})).job_type.as_deref(),
            Some("image_fast")
        );
        let both = parse(json!({"job_type": "image_fast", "jobType": "video_high"}));
        assert_eq!(both.job_type.as_deref(), Some("image_fast"));
        let empty_snake = parse(json!({"job_type": "", "jobType": "video_high"}));
        assert_eq!(empty_snake.job_type.as_deref(), Some("video_high"));
    }

    #[test]
    fn wrong_types_in_known_fields_are_parse_errors_and_nulls_are_absent() {
        assert!(serde_json::from_value::<GenerationRequest>(json!({"prompt": 5})).is_err());
        assert!(serde_json::from_value::<GenerationRequest>(json!({"input": [1]})).is_err());
        assert!(serde_json::from_value::<GenerationRequest>(json!([])).is_err());
        let nulls =
            parse(json!({"prompt": null, "input": null, "metadata": null, "jobType": null}));
        assert_eq!(nulls, GenerationRequest::default());
    }

    #[test]
    fn modality_is_video_from_the_body_or_the_metadata() {
        assert_eq!(
            parse(json!({"modality": "video"})).modality(),
            Modality::Video
        );
        assert_eq!(
            parse(json!({"metadata": {"modality": "video"}})).modality(),
            Modality::Video
        );
        assert_eq!(
            parse(json!({"modality": "image"})).modality(),
            Modality::Image
        );
        assert_eq!(parse(json!({})).modality(), Modality::Image);
    }

    #[test]
    fn quality_defaults_to_high() {
        assert_eq!(parse(json!({"quality": "fast"})).quality(), Quality::Fast);
        assert_eq!(parse(json!({"quality": "high"})).quality(), Quality::High);
        assert_eq!(parse(json!({"quality": "ultra"})).quality(), Quality::High);
        assert_eq!(parse(json!({})).quality(), Quality::High);
    }

    #[test]
    fn content_mode_defaults_to_nsfw() {
        assert_eq!(
            parse(json!({"metadata": {"contentType": "sfw"}})).content_mode(),
            ContentMode::Sfw
        );
        assert_eq!(
            parse(json!({"metadata": {"contentType": "nsfw"}})).content_mode(),
            ContentMode::Nsfw
        );
        assert_eq!(
            parse(json!({"metadata": {"contentType": 1}})).content_mode(),
            ContentMode::Nsfw
        );
        assert_eq!(parse(json!({})).content_mode(), ContentMode::Nsfw);
    }

    #[test]
    fn allowed_job_types_pass_unchanged() {
        for allowed in ALLOWED_JOB_TYPES {
            assert_eq!(
                normalize_job_type(Some(allowed), Modality::Image, Quality::Fast),
                *allowed
            );
        }
    }

    #[test]
    fn fal_job_types_map_by_quality() {
        assert_eq!(
            normalize_job_type(Some("fal_image"), Modality::Video, Quality::Fast),
            "image_fast"
        );
        assert_eq!(
            normalize_job_type(Some("fal_image"), Modality::Image, Quality::High),
            "image_high"
        );
        assert_eq!(
            normalize_job_type(Some("fal_video"), Modality::Image, Quality::Fast),
            "video_fast"
        );
        assert_eq!(
            normalize_job_type(Some("fal_video"), Modality::Video, Quality::High),
            "video_high"
        );
    }

    #[test]
    fn unknown_job_types_including_wan_ones_map_by_modality_and_quality() {
        assert_eq!(
            normalize_job_type(None, Modality::Video, Quality::Fast),
            "video_fast"
        );
        assert_eq!(
            normalize_job_type(Some("wan_standard"), Modality::Video, Quality::High),
            "video_high"
        );
        assert_eq!(
            normalize_job_type(Some("wan_enhanced"), Modality::Image, Quality::Fast),
            "image_fast"
        );
        assert_eq!(
            normalize_job_type(Some("IMAGE_FAST"), Modality::Image, Quality::High),
            "image_high"
        );
    }
}
