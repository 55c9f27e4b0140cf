//! Post-processing of a completed job by `metadata.destination` (`original-system.md` §3.6, §2.8): character
//! portraits, roleplay/character scenes, storyboard clips. Runs after the answer (see [`crate::after_response`]).
//! Each step copies objects to deterministic keys (a re-run overwrites the same ones), then writes its rows in
//! ONE transaction together with its record in `job_postprocessing`: a step's effects exist once, and a re-run
//! (or a second runner) finds the record and does nothing.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::Settings;
use crate::db::{self, postprocess as pp};
use crate::jobs::JobStatus;
use crate::state::AppState;

pub const STEP_PORTRAIT: &str = "character_portrait";
pub const STEP_SCENE: &str = "scene_image";
pub const STEP_STORYBOARD: &str = "storyboard_clip";

/// Storyboard video URLs are presigned for the original's 7 days.
const CLIP_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PostProcessError {
    #[error("database: {0}")]
    Db(#[from] db::DbError),
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
}

impl From<tokio_postgres::Error> for PostProcessError {
    fn from(e: tokio_postgres::Error) -> Self {
        PostProcessError::Db(db::DbError::Query(e))
    }
}

/// The steps a job's metadata asks for.
pub fn steps_for(metadata: &Value) -> Vec<&'static str> {
    let mut steps = Vec::new();
    match metadata.get("destination").and_then(Value::as_str) {
        Some("character_portrait") => steps.push(STEP_PORTRAIT),
        Some("character_scene" | "roleplay_scene") => steps.push(STEP_SCENE),
        _ => {}
    }
    if metadata
        .get("storyboard_clip_id")
        .and_then(Value::as_str)
        .is_some()
    {
        steps.push(STEP_STORYBOARD);
    }
    steps
}

/// Runs every step the completed job still lacks. Errors are logged; the reconciler re-runs unrecorded steps.
pub async fn run(state: &AppState, settings: &Settings, job_id: Uuid) {
    if let Err(e) = run_steps(state, settings, job_id).await {
        tracing::error!(%job_id, error = %e, "post-processing failed; it can be re-run");
    }
}

pub async fn run_steps(
    state: &AppState,
    settings: &Settings,
    job_id: Uuid,
) -> Result<Vec<&'static str>, PostProcessError> {
    let client = state.db.client(&settings.secrets.database_url).await?;
    let Some(job) = db::jobs::get(&**client, job_id).await? else {
        return Ok(Vec::new());
    };
    if job.status != JobStatus::Completed {
        return Ok(Vec::new());
    }
    let Some(asset) = db::assets::for_job(&**client, job_id).await? else {
        return Ok(Vec::new());
    };
    drop(client);
    let mut done = Vec::new();
    for step in steps_for(&job.metadata) {
        let ran = match step {
            STEP_PORTRAIT => portrait(state, settings, &job, &asset).await?,
            STEP_SCENE => scene(state, settings, &job, &asset).await?,
            STEP_STORYBOARD => storyboard(state, settings, &job, &asset).await?,
            _ => false,
        };
        if ran {
            done.push(step);
        }
    }
    Ok(done)
}

fn uuid_in(meta: &Value, key: &str) -> Option<Uuid> {
    meta.get(key)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

fn ext_of(path: &str) -> &str {
    path.rsplit_once('.')
        .map(|(_, e)| e)
        .filter(|e| !e.contains('/'))
        .unwrap_or("png")
}

fn seed_of(job: &db::jobs::JobRecord) -> Option<i64> {
    let s = job
        .metadata
        .get("fal_response")
        .or_else(|| job.metadata.get("fal_webhook_payload"))?
        .get("seed")?;
    s.as_i64()
}

fn library_row(job: &db::jobs::JobRecord, asset: &db::assets::AssetRow) -> pp::LibraryRow {
    pp::LibraryRow {
        user_id: job.user_id,
        asset_type: asset.asset_type.clone(),
        // Set by the step that copies the file.
        storage_path: String::new(),
        thumbnail_path: None,
        file_size_bytes: asset.file_size_bytes,
        mime_type: asset.mime_type.clone(),
        original_prompt: job.original_prompt.clone().unwrap_or_default(),
        model_used: job.meta_str("model_key").unwrap_or("unknown").to_owned(),
        generation_seed: seed_of(job),
        tags: Vec::new(),
        character_id: None,
        output_type: None,
        content_category: "general".into(),
        roleplay_metadata: json!({}),
        generation_metadata: json!({ "job_id": job.id, "provider": "fal" }),
    }
}

/// What a library step points at its copy once it is in the library.
enum Pointer {
    Character { id: Uuid, seed: Option<i64> },
    Scene { id: Uuid },
}

/// A step that copies the result (and its thumbnail) into the library under deterministic keys, then in ONE
/// transaction records the step, inserts the library row and points the character or scene at the copy.
struct LibraryStep {
    step: &'static str,
    key: String,
    thumbnail_key: Option<String>,
    row: pp::LibraryRow,
    pointer: Pointer,
}

async fn run_library_step(
    state: &AppState,
    settings: &Settings,
    job: &db::jobs::JobRecord,
    asset: &db::assets::AssetRow,
    mut s: LibraryStep,
) -> Result<bool, PostProcessError> {
    let c = &settings.config;
    {
        let client = state.db.client(&settings.secrets.database_url).await?;
        if pp::step_done(&**client, job.id, s.step).await? {
            return Ok(false);
        }
    }
    state
        .storage
        .copy(
            &c.workspace_bucket,
            &asset.temp_storage_path,
            &c.library_bucket,
            &s.key,
        )
        .await?;
    s.row.storage_path = s.key.clone();
    s.row.thumbnail_path = match (&asset.thumbnail_path, s.thumbnail_key) {
        (Some(thumb), Some(tkey)) => state
            .storage
            .copy(&c.workspace_bucket, thumb, &c.library_bucket, &tkey)
            .await
            .ok()
            .map(|_| tkey),
        _ => None,
    };
    let url = format!("{}/{}", c.library_bucket, s.key);
    let mut client = state.db.client(&settings.secrets.database_url).await?;
    let tx = client.transaction().await?;
    if !pp::record_step(&*tx, job.id, s.step, &json!({ "storage_path": s.key })).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    pp::insert_library(&*tx, &s.row).await?;
    match s.pointer {
        Pointer::Character { id, seed } => {
            pp::set_character_image(&*tx, id, job.user_id, &url, seed).await?
        }
        Pointer::Scene { id } => pp::set_scene_image(&*tx, id, job.user_id, &url).await?,
    };
    tx.commit().await?;
    Ok(true)
}

fn character_name(job: &db::jobs::JobRecord) -> Option<&Value> {
    job.metadata
        .get("character_name")
        .or_else(|| job.metadata.get("characterName"))
}

/// `character_portrait`: the character points at the portrait, copied into the library.
async fn portrait(
    state: &AppState,
    settings: &Settings,
    job: &db::jobs::JobRecord,
    asset: &db::assets::AssetRow,
) -> Result<bool, PostProcessError> {
    let Some(character_id) = uuid_in(&job.metadata, "character_id") else {
        return Ok(false);
    };
    let base = format!("{}/{}_{}", job.user_id, job.id, character_id);
    let mut row = library_row(job, asset);
    row.tags = vec!["character".into(), "portrait".into()];
    row.character_id = Some(character_id);
    row.output_type = Some("portrait".into());
    row.content_category = "character".into();
    row.roleplay_metadata = json!({
        "type": "character_portrait",
        "character_id": character_id,
        "character_name": character_name(job),
        "job_id": job.id,
    });
    let step = LibraryStep {
        step: STEP_PORTRAIT,
        key: format!("{base}.{}", ext_of(&asset.temp_storage_path)),
        thumbnail_key: Some(format!("{base}.thumb.webp")),
        row,
        pointer: Pointer::Character {
            id: character_id,
            seed: seed_of(job),
        },
    };
    run_library_step(state, settings, job, asset, step).await
}

/// `character_scene` / `roleplay_scene`: the scene image, copied into the library.
async fn scene(
    state: &AppState,
    settings: &Settings,
    job: &db::jobs::JobRecord,
    asset: &db::assets::AssetRow,
) -> Result<bool, PostProcessError> {
    let Some(scene_id) = uuid_in(&job.metadata, "scene_id") else {
        return Ok(false);
    };
    let mut row = library_row(job, asset);
    row.tags = vec!["scene".into(), "roleplay".into()];
    row.character_id = uuid_in(&job.metadata, "character_id");
    row.content_category = "scene".into();
    row.roleplay_metadata = json!({
        "type": "roleplay_scene",
        "scene_id": scene_id,
        "character_id": job.metadata.get("character_id"),
        "character_name": character_name(job),
        "conversation_id": job.metadata.get("conversation_id"),
    });
    let step = LibraryStep {
        step: STEP_SCENE,
        // Deterministic instead of the original's timestamp, so a re-run writes the same object.
        key: format!(
            "{}/scenes/{}_{}.{}",
            job.user_id,
            scene_id,
            job.id,
            ext_of(&asset.temp_storage_path)
        ),
        thumbnail_key: None,
        row,
        pointer: Pointer::Scene { id: scene_id },
    };
    run_library_step(state, settings, job, asset, step).await
}

/// A storyboard clip's video: completed with a 7-day URL of the stored result.
async fn storyboard(
    state: &AppState,
    settings: &Settings,
    job: &db::jobs::JobRecord,
    asset: &db::assets::AssetRow,
) -> Result<bool, PostProcessError> {
    let Some(clip_id) = uuid_in(&job.metadata, "storyboard_clip_id") else {
        return Ok(false);
    };
    if asset.asset_type != "video" {
        return Ok(false);
    }
    let c = &settings.config;
    let url = state
        .storage
        .presign_get(&c.workspace_bucket, &asset.temp_storage_path, CLIP_URL_TTL)
        .await?;
    let duration = job
        .metadata
        .get("fal_webhook_payload")
        .or_else(|| job.metadata.get("fal_response"))
        .and_then(|p| {
            p.get("video")
                .and_then(|v| v.get("duration"))
                .or_else(|| p.get("duration"))
        })
        .and_then(Value::as_f64)
        .unwrap_or(5.0);
    let thumb = asset
        .thumbnail_path
        .as_ref()
        .map(|t| format!("{}/{t}", c.workspace_bucket));
    let mut client = state.db.client(&settings.secrets.database_url).await?;
    let tx = client.transaction().await?;
    if !pp::record_step(&*tx, job.id, STEP_STORYBOARD, &json!({})).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    pp::complete_storyboard_clip(&*tx, clip_id, &url, duration, thumb.as_deref()).await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_map_to_steps() {
        assert_eq!(
            steps_for(&json!({"destination":"character_portrait"})),
            vec![STEP_PORTRAIT]
        );
        assert_eq!(
            steps_for(&json!({"destination":"roleplay_scene"})),
            vec![STEP_SCENE]
        );
        assert_eq!(
            steps_for(&json!({"destination":"character_scene","storyboard_clip_id":"x"})),
            vec![STEP_SCENE, STEP_STORYBOARD]
        );
        assert!(steps_for(&json!({"destination":"scene_preview"})).is_empty());
        assert!(steps_for(&json!({})).is_empty());
    }

    #[test]
    fn library_extensions_follow_the_stored_file() {
        assert_eq!(ext_of("u/j_0.mp4"), "mp4");
        assert_eq!(ext_of("u/j_0.jpg"), "jpg");
        assert_eq!(ext_of("u.dir/noext"), "png");
    }
}
