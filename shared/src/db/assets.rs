//! `workspace_assets`: one row per result, unique on `(job_id, asset_index)`.

use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewAsset {
    pub user_id: Uuid,
    pub job_id: Uuid,
    pub asset_type: String,
    pub temp_storage_path: String,
    pub thumbnail_path: Option<String>,
    pub file_size_bytes: i64,
    pub mime_type: String,
    pub generation_seed: i64,
    pub original_prompt: String,
    pub model_used: String,
    pub generation_settings: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetRow {
    pub id: Uuid,
    pub asset_type: String,
    pub temp_storage_path: String,
    pub thumbnail_path: Option<String>,
    pub mime_type: String,
    pub file_size_bytes: i64,
}

/// Writes asset 0 of the job and returns its id. It is called only in the transaction that completes the job, so
/// a row already there is not ours: clients may insert `workspace_assets` rows of their own under any `job_id`
/// (RLS checks only `user_id`), so such a row is overwritten with the job's owner and result, never trusted: every
/// column the completion does not write (the dimensions and duration) is reset too.
pub async fn insert_once<C: GenericClient>(
    client: &C,
    a: &NewAsset,
) -> Result<Uuid, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            "INSERT INTO public.workspace_assets (user_id, job_id, asset_index, asset_type, temp_storage_path,
                 thumbnail_path, file_size_bytes, mime_type, generation_seed, original_prompt, model_used,
                 generation_settings)
             VALUES ($1, $2, 0, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (job_id, asset_index) DO UPDATE
                SET user_id = EXCLUDED.user_id, asset_type = EXCLUDED.asset_type,
                    temp_storage_path = EXCLUDED.temp_storage_path, thumbnail_path = EXCLUDED.thumbnail_path,
                    file_size_bytes = EXCLUDED.file_size_bytes, mime_type = EXCLUDED.mime_type,
                    generation_seed = EXCLUDED.generation_seed, original_prompt = EXCLUDED.original_prompt,
                    model_used = EXCLUDED.model_used, generation_settings = EXCLUDED.generation_settings,
                    duration_seconds = NULL, width = NULL, height = NULL,
                    created_at = now(), expires_at = now() + interval '7 days'
             RETURNING id",
            &[
                (&a.user_id, Type::UUID),
                (&a.job_id, Type::UUID),
                (&a.asset_type, Type::TEXT),
                (&a.temp_storage_path, Type::TEXT),
                (&a.thumbnail_path, Type::TEXT),
                (&a.file_size_bytes, Type::INT8),
                (&a.mime_type, Type::TEXT),
                (&a.generation_seed, Type::INT8),
                (&a.original_prompt, Type::TEXT),
                (&a.model_used, Type::TEXT),
                (&a.generation_settings, Type::JSONB),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// The job's asset (index 0, the one the completion writes) among its owner's rows: anyone may insert
/// `workspace_assets` rows of their own under another user's `job_id` (RLS checks only `user_id`), and those are
/// never the job's; nor is a row its owner planted at another index. The owner may still update the row at 0
/// (its type, size and paths are theirs to write): callers take the keys from the job's run, not from it.
pub async fn for_job<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    owner: Uuid,
) -> Result<Option<AssetRow>, tokio_postgres::Error> {
    Ok(client
        .query_typed_opt(
            "SELECT id, asset_type, temp_storage_path, thumbnail_path, mime_type, file_size_bytes
               FROM public.workspace_assets WHERE job_id = $1 AND user_id = $2 AND asset_index = 0",
            &[(&job_id, Type::UUID), (&owner, Type::UUID)],
        )
        .await?
        .map(|r| AssetRow {
            id: r.get(0),
            asset_type: r.get(1),
            temp_storage_path: r.get(2),
            thumbnail_path: r.get(3),
            mime_type: r.get(4),
            file_size_bytes: r.get(5),
        }))
}
