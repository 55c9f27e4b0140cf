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

/// Inserts asset 0 of the job unless it exists; returns its id either way (a duplicate is impossible).
pub async fn insert_once<C: GenericClient>(
    client: &C,
    a: &NewAsset,
) -> Result<Uuid, tokio_postgres::Error> {
    let inserted = client
        .query_typed_opt(
            "INSERT INTO public.workspace_assets (user_id, job_id, asset_index, asset_type, temp_storage_path,
                 thumbnail_path, file_size_bytes, mime_type, generation_seed, original_prompt, model_used,
                 generation_settings)
             VALUES ($1, $2, 0, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (job_id, asset_index) DO NOTHING
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
    match inserted {
        Some(row) => Ok(row.get(0)),
        None => {
            let row = client
                .query_typed_one(
                    "SELECT id FROM public.workspace_assets WHERE job_id = $1 AND asset_index = 0",
                    &[(&a.job_id, Type::UUID)],
                )
                .await?;
            Ok(row.get(0))
        }
    }
}

/// The job's first asset.
pub async fn for_job<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<Option<AssetRow>, tokio_postgres::Error> {
    Ok(client
        .query_typed_opt(
            "SELECT id, asset_type, temp_storage_path, thumbnail_path, mime_type, file_size_bytes
               FROM public.workspace_assets WHERE job_id = $1 ORDER BY asset_index LIMIT 1",
            &[(&job_id, Type::UUID)],
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
