//! The request's `metadata` as input, never as truth: keys the server writes are refused, and the post-processing
//! targets a client may name are parsed into typed ids (checked against the caller before anything is written).

use serde_json::{Map, Value};
use uuid::Uuid;

use super::InputError;
use crate::db::runs::PostTargets;

/// Metadata keys only the functions write (besides every `fal_*` key). A request carrying one is refused: its
/// value would sit in `jobs.metadata` next to ours and look like ours to the original's clients.
pub const SERVER_OWNED_KEYS: &[&str] = &[
    "provider_name",
    "provider_id",
    "model_key",
    "database_model_key",
    "is_model_overridden",
    "content_mode",
    "input_used",
    "estimated_cost",
    "reference_image_signed_url",
    "reference_image_storage",
    "sync_fallback",
    "storage_path",
    "thumbnail_path",
    "result_type",
    "result_url",
    "mime_type",
    "file_size_bytes",
    "original_fal_url",
    "webhook_processed",
    "video_duration",
    "reconciled",
    "cancelled_by",
];

/// The prefixes of the server's keys: the provider request and its payloads.
pub const SERVER_OWNED_PREFIXES: &[&str] = &["fal_", "replicate_"];

/// The post-processing destinations (`metadata.destination`) that run a step.
pub const DESTINATIONS: &[&str] = &["character_portrait", "character_scene", "roleplay_scene"];

/// Refuses server-owned keys and parses the targets: ids that are present must be UUID strings.
pub fn post_targets(metadata: Option<&Map<String, Value>>) -> Result<PostTargets, InputError> {
    let Some(metadata) = metadata else {
        return Ok(PostTargets::default());
    };
    if let Some(key) = metadata.keys().find(|k| {
        SERVER_OWNED_PREFIXES.iter().any(|p| k.starts_with(p))
            || SERVER_OWNED_KEYS.contains(&k.as_str())
    }) {
        return Err(InputError::ServerOwnedKey(key.clone()));
    }
    let id = |key: &'static str| match metadata.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| InputError::BadTargetId(key)),
        Some(_) => Err(InputError::BadTargetId(key)),
    };
    Ok(PostTargets {
        destination: metadata
            .get("destination")
            .and_then(Value::as_str)
            .filter(|d| DESTINATIONS.contains(d))
            .map(str::to_owned),
        character_id: id("character_id")?,
        scene_id: id("scene_id")?,
        storyboard_clip_id: id("storyboard_clip_id")?,
    })
}

/// The character a portrait request names (`character_name`, or `characterName`), when it gives no id.
pub fn character_name(metadata: Option<&Map<String, Value>>) -> Option<&str> {
    let metadata = metadata?;
    ["character_name", "characterName"]
        .into_iter()
        .find_map(|k| metadata.get(k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn targets(v: Value) -> Result<PostTargets, InputError> {
        post_targets(v.as_object())
    }

    #[test]
    fn a_character_is_named_by_either_key_and_a_blank_name_is_none() {
        let name = |v: Value| character_name(v.as_object()).map(str::to_owned);
        assert_eq!(
            name(json!({"character_name": " Ada "})).as_deref(),
            Some("Ada")
        );
        assert_eq!(name(json!({"characterName": "Bo"})).as_deref(), Some("Bo"));
        assert_eq!(name(json!({"character_name": "  "})), None);
        assert_eq!(name(json!({"character_name": 7})), None);
        assert_eq!(character_name(None), None);
    }

    #[test]
    fn server_owned_keys_are_refused_by_name() {
        for key in [
            "fal_cancel_url",
            "fal_request_id",
            "storage_path",
            "reference_image_storage",
            "input_used",
        ] {
            let err = targets(json!({ key: "x", "destination": "library" })).unwrap_err();
            assert!(
                matches!(&err, InputError::ServerOwnedKey(k) if k == key),
                "{key}"
            );
            assert!(err.to_string().contains(key));
        }
    }

    #[test]
    fn client_keys_parse_into_targets() {
        let c = Uuid::new_v4();
        let s = Uuid::new_v4();
        let t = targets(json!({
            "destination": "character_portrait", "character_id": c.to_string(), "scene_id": s.to_string(),
            "storyboard_clip_id": "", "contentType": "sfw", "generation_mode": "i2i"
        }))
        .unwrap();
        assert_eq!(t.destination.as_deref(), Some("character_portrait"));
        assert_eq!(
            (t.character_id, t.scene_id, t.storyboard_clip_id),
            (Some(c), Some(s), None)
        );
        assert_eq!(
            targets(json!({"destination": "scene_preview"}))
                .unwrap()
                .destination,
            None
        );
        assert_eq!(post_targets(None).unwrap(), PostTargets::default());
    }

    #[test]
    fn target_ids_must_be_uuids() {
        for bad in [
            json!({"character_id": "nope"}),
            json!({"scene_id": 7}),
            json!({"storyboard_clip_id": {}}),
        ] {
            assert!(matches!(targets(bad), Err(InputError::BadTargetId(_))));
        }
    }
}
