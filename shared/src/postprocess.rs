//! Post-processing of a completed job by `metadata.destination` (`original-system.md` §3.6, §2.8): character
//! portraits, roleplay/character scenes, storyboard clips. Runs after the answer (see [`crate::after_response`]).
//! Each step copies objects to deterministic keys (a re-run overwrites the same ones), then writes its rows in
//! ONE transaction together with its record in `job_postprocessing`: a step's effects exist once, and a re-run
//! (or a second runner) finds the record and does nothing.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::Settings;
use crate::db::runs::PostTargets;
use crate::db::{self, postprocess as pp};
use crate::state::AppState;
use crate::{ownership, storage_links};

pub const STEP_PORTRAIT: &str = "character_portrait";
pub const STEP_SCENE: &str = "scene_image";
pub const STEP_STORYBOARD: &str = "storyboard_clip";

/// Storyboard video links live for the original's 7 days.
const CLIP_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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

/// The steps a job's targets ask for: the one rule of post-processing eligibility.
pub fn steps_for(targets: &PostTargets) -> Vec<&'static str> {
    let mut steps = Vec::new();
    match targets.destination.as_deref() {
        Some("character_portrait") if targets.character_id.is_some() => steps.push(STEP_PORTRAIT),
        Some("character_scene" | "roleplay_scene") if targets.scene_id.is_some() => {
            steps.push(STEP_SCENE)
        }
        _ => {}
    }
    if targets.storyboard_clip_id.is_some() {
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
    let client = state.db_client(settings).await?;
    let Some(job) = db::jobs::get(&**client, job_id).await? else {
        return Ok(Vec::new());
    };
    // Completed by the functions: its run records the result, which only the completing transaction writes. Not
    // the status, which the owner may rewrite either way (a job set `completed` has no result; one set `failed`
    // after its completion still has its result, and its steps).
    let Some(run) = job.run.clone() else {
        return Ok(Vec::new());
    };
    let asset_row = db::assets::for_job(&**client, job_id, job.user_id).await?;
    drop(client);
    // The stored result as the completion recorded it, never the asset row's paths (the owner can rewrite them).
    let Some(key) = run
        .result_key
        .as_deref()
        .and_then(|k| ownership::owned_key(job.user_id, k))
    else {
        return Ok(Vec::new());
    };
    let thumbnail = run
        .thumbnail_key
        .as_deref()
        .and_then(|k| ownership::owned_key(job.user_id, k))
        .map(str::to_owned);
    let (asset, result_gone) = match asset_row {
        Some(mut asset) => {
            asset.temp_storage_path = key.to_owned();
            asset.thumbnail_path = thumbnail;
            (asset, false)
        }
        None => asset_of_object(state, settings, key, thumbnail).await?,
    };
    let t = &run.targets;
    let on = Step {
        state,
        settings,
        job: &job,
        asset: &asset,
        result_gone,
    };
    let mut done = Vec::new();
    for step in &run.post_steps {
        let (name, ran) = match (
            step.as_str(),
            t.character_id,
            t.scene_id,
            t.storyboard_clip_id,
        ) {
            (STEP_PORTRAIT, Some(id), _, _) => (STEP_PORTRAIT, portrait(&on, id).await?),
            (STEP_SCENE, _, Some(id), _) => (STEP_SCENE, scene(&on, id, t).await?),
            (STEP_STORYBOARD, _, _, Some(id)) => (STEP_STORYBOARD, storyboard(&on, id).await?),
            _ => continue,
        };
        if ran {
            done.push(name);
        }
    }
    Ok(done)
}

/// What the steps describe when its owner deleted the job's asset row: the stored object's type and size, and
/// whether the object is gone too (then there is nothing to copy or show, and the steps are skipped).
async fn asset_of_object(
    state: &AppState,
    settings: &Settings,
    key: &str,
    thumbnail_path: Option<String>,
) -> Result<(db::assets::AssetRow, bool), PostProcessError> {
    let bucket = &settings.config.workspace_bucket;
    let meta = state.storage.head(bucket, key).await?;
    let mime_type = meta
        .as_ref()
        .and_then(|m| m.content_type.clone())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let asset_type = if mime_type.starts_with("video/") {
        "video"
    } else {
        "image"
    };
    let asset = db::assets::AssetRow {
        id: Uuid::nil(),
        asset_type: asset_type.to_owned(),
        temp_storage_path: key.to_owned(),
        thumbnail_path,
        mime_type,
        file_size_bytes: meta
            .as_ref()
            .map_or(0, |m| i64::try_from(m.size).unwrap_or(i64::MAX)),
    };
    Ok((asset, meta.is_none()))
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

/// What a library copy is: it decides the row's tags, output type and category.
#[derive(Clone, Copy)]
enum LibraryKind {
    Portrait,
    Scene,
}

/// The `user_library` row of a job's result copied as `kind`, about `character_id`.
fn library_row(
    job: &db::jobs::JobRecord,
    asset: &db::assets::AssetRow,
    kind: LibraryKind,
    character_id: Option<Uuid>,
    roleplay_metadata: Value,
) -> pp::LibraryRow {
    let (tags, output_type, content_category) = match kind {
        LibraryKind::Portrait => (["character", "portrait"], Some("portrait"), "character"),
        LibraryKind::Scene => (["scene", "roleplay"], None, "scene"),
    };
    pp::LibraryRow {
        user_id: job.user_id,
        asset_type: asset.asset_type.clone(),
        // Set by the step that copies the file.
        storage_path: String::new(),
        thumbnail_path: None,
        file_size_bytes: asset.file_size_bytes,
        mime_type: asset.mime_type.clone(),
        original_prompt: job.original_prompt.clone().unwrap_or_default(),
        model_used: job
            .run
            .as_ref()
            .map_or("unknown", |r| r.model_key.as_str())
            .to_owned(),
        generation_seed: seed_of(job),
        tags: tags.map(str::to_owned).to_vec(),
        character_id,
        output_type: output_type.map(str::to_owned),
        content_category: content_category.to_owned(),
        roleplay_metadata,
        generation_metadata: json!({ "job_id": job.id, "provider": "fal" }),
    }
}

/// What every step works on: the completed job and its asset (with the keys the completion recorded).
#[derive(Clone, Copy)]
struct Step<'a> {
    state: &'a AppState,
    settings: &'a Settings,
    job: &'a db::jobs::JobRecord,
    asset: &'a db::assets::AssetRow,
    /// Neither the asset row nor the stored object is there any more: the steps are skipped.
    result_gone: bool,
}

/// Why a step was skipped when the result it would use is gone.
const RESULT_GONE: &str = "its result no longer exists";

/// What a library step points at its copy once it is in the library.
enum Pointer {
    Character { id: Uuid, seed: Option<i64> },
    Scene { id: Uuid },
}

/// A step that copies the result (and its thumbnail) into the library under deterministic keys, then in ONE
/// transaction records the step, points the character or scene at the copy and inserts the library row.
struct LibraryStep {
    step: &'static str,
    key: String,
    thumbnail_key: Option<String>,
    row: pp::LibraryRow,
    pointer: Pointer,
}

async fn run_library_step(step: &Step<'_>, mut s: LibraryStep) -> Result<bool, PostProcessError> {
    let (state, settings, job, asset) = (step.state, step.settings, step.job, step.asset);
    let c = &settings.config;
    {
        let client = state.db_client(settings).await?;
        if pp::recorded_step(&**client, job.id, s.step)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let (character, scene) = match s.pointer {
            Pointer::Character { id, .. } => (Some(id), None),
            Pointer::Scene { id } => (s.row.character_id, Some(id)),
        };
        let [character_ok, scene_ok, _] =
            pp::targets_allowed(&**client, job.user_id, character, scene, None).await?;
        if !(character_ok && scene_ok) {
            skip_step(step, &s, &client, TARGET_GONE).await?;
            return Ok(false);
        }
        if step.result_gone {
            skip_step(step, &s, &client, RESULT_GONE).await?;
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
    // A thumbnail gone from the workspace leaves the library row without one; a failed copy is retried with the step.
    s.row.thumbnail_path = match (&asset.thumbnail_path, &s.thumbnail_key) {
        (Some(thumb), Some(tkey)) => state
            .storage
            .copy_if_exists(&c.workspace_bucket, thumb, &c.library_bucket, tkey)
            .await?
            .then(|| tkey.clone()),
        _ => None,
    };
    record_library_step(step, &s).await
}

/// The library step's one transaction: the step, the character or scene pointed at the copy, the library row.
/// A target its owner deleted since the check is skipped as [`skip_step`] does; a step another pass recorded as
/// skipped meanwhile (its target went) gets this pass's copies removed, which no row can point at.
async fn record_library_step(step: &Step<'_>, s: &LibraryStep) -> Result<bool, PostProcessError> {
    let job = step.job;
    // The original's `<bucket>/<key>` pointer names the storage bucket clients sign in, not the S3 bucket behind it.
    let url = format!("{}/{}", storage_links::Bucket::UserLibrary.name(), s.key);
    let mut client = step.state.db_client(step.settings).await?;
    let tx = client.transaction().await?;
    if !pp::record_step(&*tx, job.id, s.step, &json!({ "storage_path": s.key })).await? {
        tx.rollback().await?;
        let recorded = pp::recorded_step(&**client, job.id, s.step).await?;
        if recorded.is_some_and(|detail| detail.get("skipped").is_some()) {
            remove_copies(step, s).await;
        }
        return Ok(false);
    }
    let pointed = match s.pointer {
        Pointer::Character { id, seed } => {
            pp::set_character_image(&*tx, job.id, id, job.user_id, &url, seed).await?
        }
        Pointer::Scene { id } => pp::set_scene_image(&*tx, job.id, id, job.user_id, &url).await?,
    };
    if !pointed {
        tx.rollback().await?;
        skip_step(step, s, &client, TARGET_GONE).await?;
        return Ok(false);
    }
    pp::insert_library(&*tx, &s.row).await?;
    tx.commit().await?;
    Ok(true)
}

/// Why a library step was skipped when its owner deleted its character or scene.
const TARGET_GONE: &str = "its character or scene no longer exists";

/// A step that can never write its rows (its character or scene, or the result, is gone) is recorded as skipped,
/// so that no pass copies the result again. The pass that records it also removes the copies (an earlier pass may
/// have made them before its transaction failed): once the step is recorded no transaction can record it again,
/// so no row points at them. A pass that finds the step recorded leaves them.
async fn skip_step(
    step: &Step<'_>,
    s: &LibraryStep,
    client: &tokio_postgres::Client,
    reason: &str,
) -> Result<(), PostProcessError> {
    if pp::record_step(client, step.job.id, s.step, &json!({ "skipped": reason })).await? {
        remove_copies(step, s).await;
    }
    Ok(())
}

/// Deletes a library step's copies by their exact keys, best effort.
async fn remove_copies(step: &Step<'_>, s: &LibraryStep) {
    let keys: Vec<String> = std::iter::once(s.key.clone())
        .chain(s.thumbnail_key.clone())
        .collect();
    let bucket = &step.settings.config.library_bucket;
    if let Err(e) = step.state.storage.delete_keys(bucket, &keys).await {
        tracing::warn!(job_id = %step.job.id, error = %e, "could not delete the library copies of a skipped step");
    }
}

fn character_name(job: &db::jobs::JobRecord) -> Option<&Value> {
    job.metadata
        .get("character_name")
        .or_else(|| job.metadata.get("characterName"))
}

/// `character_portrait`: the character points at the portrait, copied into the library.
async fn portrait(step: &Step<'_>, character_id: Uuid) -> Result<bool, PostProcessError> {
    let (job, asset) = (step.job, step.asset);
    let base = format!("{}/{}_{}", job.user_id, job.id, character_id);
    let meta = json!({
        "type": "character_portrait",
        "character_id": character_id,
        "character_name": character_name(job),
        "job_id": job.id,
    });
    let row = library_row(job, asset, LibraryKind::Portrait, Some(character_id), meta);
    let library = LibraryStep {
        step: STEP_PORTRAIT,
        key: format!("{base}.{}", ext_of(&asset.temp_storage_path)),
        thumbnail_key: Some(format!("{base}.thumb.webp")),
        row,
        pointer: Pointer::Character {
            id: character_id,
            seed: seed_of(job),
        },
    };
    run_library_step(step, library).await
}

/// `character_scene` / `roleplay_scene`: the scene image, copied into the library.
async fn scene(
    step: &Step<'_>,
    scene_id: Uuid,
    targets: &PostTargets,
) -> Result<bool, PostProcessError> {
    let (job, asset) = (step.job, step.asset);
    let meta = json!({
        "type": "roleplay_scene",
        "scene_id": scene_id,
        "character_id": targets.character_id,
        "character_name": character_name(job),
        "conversation_id": job.metadata.get("conversation_id"),
    });
    let row = library_row(job, asset, LibraryKind::Scene, targets.character_id, meta);
    let library = LibraryStep {
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
    run_library_step(step, library).await
}

/// The clip's `video_url`: a storage link for the original's 7 days. Without links configured (no signing key or
/// no public API URL) it falls back to what the port did before, an S3 presigned URL that dies with the role's
/// credentials, and says so.
async fn clip_link(
    state: &AppState,
    settings: &Settings,
    key: &str,
) -> Result<String, PostProcessError> {
    let bucket = storage_links::Bucket::WorkspaceTemp;
    if let Some(base) = &settings.config.public_api_url
        && let Ok(link) = storage_links::link(settings, base, bucket, key, CLIP_LINK_TTL)
    {
        return Ok(link);
    }
    tracing::warn!(
        "storage links are not configured: the clip gets a presigned URL that expires early"
    );
    let s3_bucket = bucket.s3_bucket(settings);
    Ok(state
        .storage
        .presign_get(s3_bucket, key, CLIP_LINK_TTL)
        .await?)
}

/// A storyboard clip's video: completed with a 7-day link of the stored result.
async fn storyboard(step: &Step<'_>, clip_id: Uuid) -> Result<bool, PostProcessError> {
    let (state, settings, job, asset) = (step.state, step.settings, step.job, step.asset);
    if step.result_gone {
        // Nothing to show: the clip fails, as it does when its job fails.
        let mut client = state.db_client(settings).await?;
        let tx = client.transaction().await?;
        let skipped = json!({ "skipped": RESULT_GONE });
        if pp::record_step(&*tx, job.id, STEP_STORYBOARD, &skipped).await? {
            pp::fail_storyboard_clip(&*tx, job.id, clip_id, job.user_id).await?;
        }
        tx.commit().await?;
        return Ok(false);
    }
    if asset.asset_type != "video" {
        // Nothing for a clip to show, decided once: recorded, so that the reconciler does not come back for it.
        let client = state.db_client(settings).await?;
        let skipped = json!({ "skipped": "the result is not a video" });
        pp::record_step(&**client, job.id, STEP_STORYBOARD, &skipped).await?;
        return Ok(false);
    }
    let url = clip_link(state, settings, &asset.temp_storage_path).await?;
    // The queued routes record the length (`Completion::queued`); a sync run keeps the whole response.
    let duration = job
        .metadata
        .get("video_duration")
        .filter(|d| d.is_number())
        .or_else(|| {
            job.metadata
                .get("fal_response")
                .and_then(crate::completion::video_duration)
        })
        .and_then(Value::as_f64)
        .unwrap_or(5.0);
    let thumb = asset
        .thumbnail_path
        .as_ref()
        .map(|t| format!("{}/{t}", storage_links::Bucket::WorkspaceTemp.name()));
    let mut client = state.db_client(settings).await?;
    let tx = client.transaction().await?;
    if !pp::record_step(&*tx, job.id, STEP_STORYBOARD, &json!({})).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    pp::complete_storyboard_clip(
        &*tx,
        job.id,
        clip_id,
        job.user_id,
        &url,
        duration,
        thumb.as_deref(),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_map_to_steps() {
        let id = Some(Uuid::new_v4());
        let t =
            |destination: Option<&str>, character_id, scene_id, storyboard_clip_id| PostTargets {
                destination: destination.map(str::to_owned),
                character_id,
                scene_id,
                storyboard_clip_id,
            };
        assert_eq!(
            steps_for(&t(Some("character_portrait"), id, None, None)),
            vec![STEP_PORTRAIT]
        );
        assert_eq!(
            steps_for(&t(Some("roleplay_scene"), None, id, None)),
            vec![STEP_SCENE]
        );
        assert_eq!(
            steps_for(&t(Some("character_scene"), None, id, id)),
            vec![STEP_SCENE, STEP_STORYBOARD]
        );
        // A storyboard clip alone is post-processed, whatever the route that completed the job.
        assert_eq!(steps_for(&t(None, None, None, id)), vec![STEP_STORYBOARD]);
        assert!(steps_for(&t(Some("character_portrait"), None, None, None)).is_empty());
        assert!(steps_for(&t(Some("scene_preview"), id, id, None)).is_empty());
        assert!(steps_for(&PostTargets::default()).is_empty());
    }

    #[test]
    fn library_extensions_follow_the_stored_file() {
        assert_eq!(ext_of("u/j_0.mp4"), "mp4");
        assert_eq!(ext_of("u/j_0.jpg"), "jpg");
        assert_eq!(ext_of("u.dir/noext"), "png");
    }
}
