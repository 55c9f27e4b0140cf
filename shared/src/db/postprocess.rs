//! Rows post-processing touches: storyboard clips, characters, scenes, the user library, and the record of
//! finished steps (`job_postprocessing`).

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// A storyboard clip the functions may write for user `$2`: one in the states the client sets before a generation,
/// and the user's where the deployment's table records an owner (`user_id`; the known schema has none).
pub const CLIP_OPEN_FOR: &str = "c.status IN ('pending', 'generating')
    AND coalesce(to_jsonb(c)->>'user_id', $2::text) = $2::text";

/// A clip is decided by the latest job asked for it: not by job `$<job>` when its owner asked again since (a
/// later run for the same clip), whether that job's result came or it failed.
fn clip_not_asked_again(job: u8) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM public.job_runs mine
                       JOIN public.job_runs later
                         ON later.storyboard_clip_id = mine.storyboard_clip_id AND later.job_id <> mine.job_id
                      WHERE mine.job_id = ${job} AND later.created_at > mine.created_at)"
    )
}

/// Fails job `job_id`'s open clip, unless a later job was asked for it ([`clip_not_asked_again`]).
pub async fn fail_storyboard_clip<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    clip_id: Uuid,
    user_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            &format!(
                "UPDATE public.storyboard_clips c SET status = 'failed', updated_at = now()
                  WHERE c.id = $1 AND {CLIP_OPEN_FOR} AND {}",
                clip_not_asked_again(3)
            ),
            &[
                (&clip_id, Type::UUID),
                (&user_id, Type::UUID),
                (&job_id, Type::UUID),
            ],
        )
        .await?;
    Ok(())
}

/// Records a finished step inside the caller's transaction. False when it was already recorded (the caller
/// rolls back: the step's effects exist once).
pub async fn record_step<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    step: &str,
    detail: &serde_json::Value,
) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "INSERT INTO public.job_postprocessing (job_id, step, detail) VALUES ($1, $2, $3)
             ON CONFLICT (job_id, step) DO NOTHING RETURNING job_id",
            &[
                (&job_id, Type::UUID),
                (&step, Type::TEXT),
                (detail, Type::JSONB),
            ],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// The detail of the step as recorded (`skipped` says why a step was skipped, and names no copy), `None` when it
/// is not recorded.
pub async fn recorded_step<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    step: &str,
) -> Result<Option<serde_json::Value>, tokio_postgres::Error> {
    let row = client
        .query_typed_opt(
            "SELECT detail FROM public.job_postprocessing WHERE job_id = $1 AND step = $2",
            &[(&job_id, Type::UUID), (&step, Type::TEXT)],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// A `user_library` row as post-processing writes it.
#[derive(Debug, Clone)]
pub struct LibraryRow {
    pub user_id: Uuid,
    pub asset_type: String,
    pub storage_path: String,
    pub thumbnail_path: Option<String>,
    pub file_size_bytes: i64,
    pub mime_type: String,
    pub original_prompt: String,
    pub model_used: String,
    pub generation_seed: Option<i64>,
    pub tags: Vec<String>,
    pub character_id: Option<Uuid>,
    pub output_type: Option<String>,
    pub content_category: String,
    pub roleplay_metadata: serde_json::Value,
    pub generation_metadata: serde_json::Value,
}

pub async fn insert_library<C: GenericClient>(
    client: &C,
    r: &LibraryRow,
) -> Result<Uuid, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            "INSERT INTO public.user_library (user_id, asset_type, storage_path, thumbnail_path, file_size_bytes,
                 mime_type, original_prompt, model_used, generation_seed, tags, character_id, output_type,
                 content_category, roleplay_metadata, generation_metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
             RETURNING id",
            &[
                (&r.user_id, Type::UUID),
                (&r.asset_type, Type::TEXT),
                (&r.storage_path, Type::TEXT),
                (&r.thumbnail_path, Type::TEXT),
                (&r.file_size_bytes, Type::INT8),
                (&r.mime_type, Type::TEXT),
                (&r.original_prompt, Type::TEXT),
                (&r.model_used, Type::TEXT),
                (&r.generation_seed, Type::INT8),
                (&r.tags, Type::TEXT_ARRAY),
                (&r.character_id, Type::UUID),
                (&r.output_type, Type::TEXT),
                (&r.content_category, Type::TEXT),
                (&r.roleplay_metadata, Type::JSONB),
                (&r.generation_metadata, Type::JSONB),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Whether the run of job `$<job>` closed before another run for the same `target` column (`character_id` or
/// `scene_id`) whose step `$<step>` pointed the row at its copy: a late re-run of the older job's step (the
/// reconciler's, after the first pass failed) must not point the row back at the older result.
fn superseded_by_later(target: &str, job: u8, step: u8) -> String {
    format!(
        "EXISTS (SELECT 1 FROM public.job_runs mine
                   JOIN public.job_runs later ON later.{target} = mine.{target} AND later.job_id <> mine.job_id
                   JOIN public.job_postprocessing p ON p.job_id = later.job_id AND p.step = ${step}
                  WHERE mine.job_id = ${job} AND later.closed_at > mine.closed_at
                    AND p.detail ? 'storage_path')"
    )
}

/// Points a character of the user at job `job_id`'s portrait (`<bucket>/<key>`), locking the seed when it fits
/// int4; left as it is when a later job's portrait already points it (see [`superseded_by_later`]). False when
/// the user has no such character.
///
/// The row is locked by a statement of its own first: the update's check then reads with a snapshot taken after
/// any concurrent step that pointed it committed (a check in the update itself would keep the snapshot from
/// before it waited for that step's lock).
pub async fn set_character_image<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    character_id: Uuid,
    user_id: Uuid,
    image_url: &str,
    seed: Option<i64>,
) -> Result<bool, tokio_postgres::Error> {
    let locked = client
        .query_typed(
            "SELECT 1 FROM public.characters WHERE id = $1 AND user_id = $2 FOR NO KEY UPDATE",
            &[(&character_id, Type::UUID), (&user_id, Type::UUID)],
        )
        .await?;
    if locked.is_empty() {
        return Ok(false);
    }
    let seed = seed.and_then(|s| i32::try_from(s).ok());
    let sql = format!(
        "UPDATE public.characters
            SET image_url = $3, reference_image_url = $3, seed_locked = coalesce($4, seed_locked),
                updated_at = now()
          WHERE id = $1 AND user_id = $2 AND NOT {}",
        superseded_by_later("character_id", 5, 6)
    );
    client
        .query_typed(
            &sql,
            &[
                (&character_id, Type::UUID),
                (&user_id, Type::UUID),
                (&image_url, Type::TEXT),
                (&seed, Type::INT4),
                (&job_id, Type::UUID),
                (&crate::postprocess::STEP_PORTRAIT, Type::TEXT),
            ],
        )
        .await?;
    Ok(true)
}

/// Points a scene at job `job_id`'s image (`<bucket>/<key>`), only for scenes of the user's characters; left as it
/// is when a later job's image already points it (the row locked first, as [`set_character_image`] does). False
/// when the user has no such scene.
pub async fn set_scene_image<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    scene_id: Uuid,
    user_id: Uuid,
    image_url: &str,
) -> Result<bool, tokio_postgres::Error> {
    let locked = client
        .query_typed(
            "SELECT 1 FROM public.character_scenes cs JOIN public.characters c ON c.id = cs.character_id
              WHERE cs.id = $1 AND c.user_id = $2 FOR NO KEY UPDATE OF cs",
            &[(&scene_id, Type::UUID), (&user_id, Type::UUID)],
        )
        .await?;
    if locked.is_empty() {
        return Ok(false);
    }
    let sql = format!(
        "UPDATE public.character_scenes SET image_url = $2, updated_at = now()
          WHERE id = $1 AND NOT {}",
        superseded_by_later("scene_id", 3, 4)
    );
    client
        .query_typed(
            &sql,
            &[
                (&scene_id, Type::UUID),
                (&image_url, Type::TEXT),
                (&job_id, Type::UUID),
                (&crate::postprocess::STEP_SCENE, Type::TEXT),
            ],
        )
        .await?;
    Ok(true)
}

/// Completes job `job_id`'s open clip with its video, unless a later job was asked for it.
pub async fn complete_storyboard_clip<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    clip_id: Uuid,
    user_id: Uuid,
    video_url: &str,
    duration_seconds: f64,
    thumbnail_url: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            &format!(
                "UPDATE public.storyboard_clips c
                    SET status = 'completed', video_url = $3, duration_seconds = $4::float8::numeric,
                        thumbnail_url = $5, updated_at = now()
                  WHERE c.id = $1 AND {CLIP_OPEN_FOR} AND {}",
                clip_not_asked_again(6)
            ),
            &[
                (&clip_id, Type::UUID),
                (&user_id, Type::UUID),
                (&video_url, Type::TEXT),
                (&duration_seconds, Type::FLOAT8),
                (&thumbnail_url, Type::TEXT),
                (&job_id, Type::UUID),
            ],
        )
        .await?;
    Ok(())
}

/// The caller's character of that name, the most recently updated one: the original's portrait lookup when a
/// request names its character but gives no id.
pub async fn character_by_name<C: GenericClient>(
    client: &C,
    user_id: Uuid,
    name: &str,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    Ok(client
        .query_typed_opt(
            "SELECT id FROM public.characters WHERE user_id = $1 AND name = $2
              ORDER BY updated_at DESC NULLS LAST LIMIT 1",
            &[(&user_id, Type::UUID), (&name, Type::TEXT)],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Whether the user may target these rows: a character of theirs, a scene of one of their characters, a clip
/// open for them ([`CLIP_OPEN_FOR`]). An absent id passes. One round trip for all three.
pub async fn targets_allowed<C: GenericClient>(
    client: &C,
    user_id: Uuid,
    character_id: Option<Uuid>,
    scene_id: Option<Uuid>,
    clip_id: Option<Uuid>,
) -> Result<[bool; 3], tokio_postgres::Error> {
    let sql = format!(
        "SELECT $3::uuid IS NULL OR EXISTS (SELECT 1 FROM public.characters WHERE id = $3 AND user_id = $2),
                $4::uuid IS NULL OR EXISTS (SELECT 1 FROM public.character_scenes s
                                              JOIN public.characters ch ON ch.id = s.character_id
                                             WHERE s.id = $4 AND ch.user_id = $2),
                $1::uuid IS NULL OR EXISTS (SELECT 1 FROM public.storyboard_clips c
                                             WHERE c.id = $1 AND {CLIP_OPEN_FOR})"
    );
    let row = client
        .query_typed_one(
            &sql,
            &[
                (&clip_id, Type::UUID),
                (&user_id, Type::UUID),
                (&character_id, Type::UUID),
                (&scene_id, Type::UUID),
            ],
        )
        .await?;
    Ok([row.get(0), row.get(1), row.get(2)])
}
