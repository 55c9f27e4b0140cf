//! Building the fal model input from a generation request (`original-system.md` §2.4), pure: the caller presigns
//! the stored references first ([`stored_references`]) and hands the URLs in.
//!
//! The steps of [`build_input`] follow §2.4 in order; each lives in a small function with its own tests.

mod params;
mod reference;
mod request;
mod sanitize;
mod schema;
pub mod targets;
mod video;

use std::collections::HashMap;

use serde_json::{Map, Value};

pub use reference::{
    KNOWN_BUCKETS, MAX_LIST_REFERENCES, MediaKind, Reference, StoredBucket, StoredReference,
    classify_reference, reference_strings, stored_references,
};
pub use request::{
    ALLOWED_JOB_TYPES, ContentMode, GenerationRequest, Modality, Quality, normalize_job_type,
};
pub use sanitize::{SUBSTITUTIONS, sanitize_prompt};

use params::AspectRatio;
use schema::{Schema, non_empty_array, truthy};

/// The parts of an `api_models` row the builder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The key fal is called with (after `model_key_override`); only "contains `ltx`" matters here.
    pub model_key: String,
    pub modality: Modality,
    pub input_defaults: Value,
    pub capabilities: Value,
    /// The capabilities of the active model `model_key_override` named, when it names one: a schema of its that
    /// takes `image_urls` asks for the list form too (the original's step 6). Every other step reads the asked
    /// row's, as the original did.
    pub override_capabilities: Option<Value>,
}

/// The fal input and what the job row records about it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltInput {
    /// The flat fal input (never wrapped in `{input: …}`).
    pub input: Value,
    /// `txt2img | i2i | txt2vid | i2v | v2v_extend | multi_conditioning`.
    pub generation_mode: String,
    /// `sfw | nsfw`.
    pub content_mode: String,
    /// The `image_url` given to fal (already presigned), reused for video thumbnails. It may be a client URL:
    /// whoever fetches it must apply the media host allow-list.
    pub reference_image_url: Option<String>,
}

/// Why a request cannot become a fal input: all are the caller's fault (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("Prompt is required")]
    MissingPrompt,
    /// One of the original's messages: "I2I request requires a valid reference image URL", "Invalid reference
    /// image URL format", "Multi-reference request requires valid image URLs", "Invalid video reference URL",
    /// "Invalid videos[] input".
    #[error("{0}")]
    InvalidReference(String),
    #[error("This model requires: {}", fields.join(", "))]
    MissingFields { fields: Vec<String> },
    /// The request's metadata carries a key only the server writes.
    #[error("metadata.{0} is set by the server and cannot be sent")]
    ServerOwnedKey(String),
    #[error("metadata.{0} must be a UUID")]
    BadTargetId(&'static str),
}

/// `jobs.metadata.generation_mode` (step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GenerationMode {
    Txt2Img,
    I2i,
    Txt2Vid,
    I2v,
    V2vExtend,
    MultiConditioning,
}

impl GenerationMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Txt2Img => "txt2img",
            Self::I2i => "i2i",
            Self::Txt2Vid => "txt2vid",
            Self::I2v => "i2v",
            Self::V2vExtend => "v2v_extend",
            Self::MultiConditioning => "multi_conditioning",
        }
    }
}

/// What the request and the caller supply, borrowed once.
pub(crate) struct Sources<'a> {
    pub(crate) input: &'a Map<String, Value>,
    pub(crate) metadata: &'a Map<String, Value>,
    pub(crate) capabilities: &'a Value,
    pub(crate) resolved: &'a HashMap<String, String>,
}

/// Keys kept by the schema filter whatever the schema says (the references and the prompt).
const ALWAYS_KEPT: &[&str] = &[
    "prompt",
    "image_url",
    "image_urls",
    "video",
    "images",
    "videos",
];

/// The fal input for `req` on `model`. `resolved` maps each original reference string to the URL fal may fetch
/// (presigned by the caller for [`Reference::Stored`] ones; passing ones need not be there); a stored reference
/// missing from it counts as failed to sign.
pub fn build_input(
    req: &GenerationRequest,
    model: &ModelSpec,
    resolved: &HashMap<String, String>,
) -> Result<BuiltInput, InputError> {
    let empty = Map::new();
    let src = Sources {
        input: req.input.as_ref().unwrap_or(&empty),
        metadata: req.metadata.as_ref().unwrap_or(&empty),
        capabilities: &model.capabilities,
        resolved,
    };
    let schema = Schema::of(&model.capabilities);
    let content_mode = req.content_mode();

    // 1. The prompt, sanitised (only here: `jobs.original_prompt` keeps the raw one).
    let prompt = req
        .prompt
        .as_deref()
        .map(sanitize_prompt)
        .filter(|p| !p.is_empty());
    let prompt = prompt.ok_or(InputError::MissingPrompt)?;
    // 2. Defaults.
    let mut out = params::base_input(&prompt, &model.input_defaults);
    // 3. Safety.
    params::apply_safety(
        &mut out,
        &model.capabilities,
        &model.input_defaults,
        content_mode,
    );
    // 4. Generation mode.
    let mode = generation_mode(src.input, model.modality);
    // 5–6. Image references and strength (image models; video models take theirs in step 8).
    if model.modality == Modality::Image {
        let takes_list = |caps: &Value| Schema::of(caps).has("image_urls");
        let list = takes_list(&model.capabilities)
            || model.override_capabilities.as_ref().is_some_and(takes_list);
        reference::apply_image_references(&mut out, src.input, list, resolved)?;
        if mode == GenerationMode::I2i {
            params::apply_strength(&mut out, src.input, &schema);
        }
    }
    // 7. The client's overrides.
    let explicit_size = params::apply_overrides(&mut out, src.input, &schema, model.modality);
    // 8. Video-only fields.
    if model.modality == Modality::Video {
        video::apply(
            &mut out,
            &src,
            &schema,
            &model.model_key,
            req.quality(),
            mode,
        )?;
    }
    // 9. Aspect ratio (not for extend, which keeps its source's).
    if let Some(ratio) =
        AspectRatio::from_metadata(src.metadata).filter(|_| mode != GenerationMode::V2vExtend)
    {
        params::apply_aspect(&mut out, ratio, &schema, model.modality, explicit_size);
    }
    // 10. Only what the model takes.
    filter_to_schema(&mut out, &schema);
    // 11. Required fields.
    check_required(&out, &schema)?;

    let reference_image_url = out
        .get("image_url")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(BuiltInput {
        input: Value::Object(out),
        generation_mode: mode.as_str().to_owned(),
        content_mode: content_mode.as_str().to_owned(),
        reference_image_url,
    })
}

/// Step 4: any reference (`image_url`, non-empty `image_urls`, `video`, non-empty `images`) makes an image request
/// i2i and a video request extend (video), conditioning (images) or i2v; none makes it text-to-x.
/// Deviation: for video a non-empty `videos[]` also means conditioning (the original labelled it txt2vid while
/// still sending the videos).
pub(crate) fn generation_mode(input: &Map<String, Value>, modality: Modality) -> GenerationMode {
    let image =
        truthy(input.get("image_url")) || non_empty_array(input.get("image_urls")).is_some();
    let video = truthy(input.get("video"));
    let images = non_empty_array(input.get("images")).is_some();
    let videos = non_empty_array(input.get("videos")).is_some();
    match modality {
        Modality::Image if image || video || images => GenerationMode::I2i,
        Modality::Image => GenerationMode::Txt2Img,
        Modality::Video if video => GenerationMode::V2vExtend,
        Modality::Video if images || videos => GenerationMode::MultiConditioning,
        Modality::Video if image => GenerationMode::I2v,
        Modality::Video => GenerationMode::Txt2Vid,
    }
}

/// Step 10: with a non-empty schema, only its fields (and [`ALWAYS_KEPT`]) remain; nulls never do.
fn filter_to_schema(out: &mut Map<String, Value>, schema: &Schema<'_>) {
    out.retain(|key, value| {
        !value.is_null()
            && (schema.is_empty() || schema.has(key) || ALWAYS_KEPT.contains(&key.as_str()))
    });
}

/// Step 11: every `required: true` field must be present.
fn check_required(out: &Map<String, Value>, schema: &Schema<'_>) -> Result<(), InputError> {
    let fields: Vec<String> = schema
        .required()
        .into_iter()
        .filter(|f| out.get(*f).is_none_or(Value::is_null))
        .map(str::to_owned)
        .collect();
    if fields.is_empty() {
        Ok(())
    } else {
        Err(InputError::MissingFields { fields })
    }
}

#[cfg(test)]
mod tests;
