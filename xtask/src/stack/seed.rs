//! Seed data of the local stack: the fal provider pointing at the emulator, one sync image model and one async
//! video model. Upserts with fixed ids, so running it again changes nothing but the emulator's address.

use anyhow::Context;
use gen_pipeline::db::Type;
use serde_json::json;
use uuid::Uuid;

use super::envfile::StackEnv;

pub const PROVIDER_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_0000000000fa);
pub const SYNC_MODEL_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_000000000001);
pub const ASYNC_MODEL_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_000000000002);
pub const SYNC_MODEL_KEY: &str = "fal-ai/bytedance/seedream/v4/text-to-image";
pub const ASYNC_MODEL_KEY: &str = "fal-ai/wan/v2.2-a14b/text-to-video";

/// The seeded models' ids and keys in `stack.env`, for the tests to name them.
pub fn add_to(env: &mut StackEnv) {
    env.set("SYNC_MODEL_ID", SYNC_MODEL_ID.to_string());
    env.set("ASYNC_MODEL_ID", ASYNC_MODEL_ID.to_string());
    env.set("SYNC_MODEL_KEY", SYNC_MODEL_KEY);
    env.set("ASYNC_MODEL_KEY", ASYNC_MODEL_KEY);
}

struct Model {
    id: Uuid,
    key: &'static str,
    display_name: &'static str,
    modality: &'static str,
    tasks: &'static [&'static str],
    default_for_tasks: &'static [&'static str],
    endpoint_path: Option<&'static str>,
    input_defaults: serde_json::Value,
    capabilities: serde_json::Value,
}

fn models() -> [Model; 2] {
    [
        Model {
            id: SYNC_MODEL_ID,
            key: SYNC_MODEL_KEY,
            display_name: "Seedream v4",
            modality: "image",
            tasks: &["t2i"],
            default_for_tasks: &["t2i"],
            endpoint_path: None,
            input_defaults: json!({"image_size": "square_hd", "num_images": 1, "enable_safety_checker": false}),
            capabilities: json!({"input_schema": {
                "prompt": {"required": true},
                "image_size": {"type": "enum"},
                "num_images": {},
                "seed": {},
                "enable_safety_checker": {}
            }}),
        },
        Model {
            id: ASYNC_MODEL_ID,
            key: ASYNC_MODEL_KEY,
            display_name: "Wan 2.2 T2V",
            modality: "video",
            tasks: &["t2v", "i2v"],
            default_for_tasks: &["t2v"],
            endpoint_path: Some(gen_pipeline::submission::QUEUE_ROUTE),
            input_defaults: json!({"resolution": "720p", "aspect_ratio": "16:9"}),
            capabilities: json!({"input_schema": {
                "prompt": {"required": true},
                "resolution": {},
                "aspect_ratio": {},
                "num_frames": {"min": 17, "max": 161},
                "frames_per_second": {},
                "seed": {},
                "image_url": {},
                "enable_safety_checker": {}
            }}),
        },
    ]
}

/// Upserts the provider (queue host `<emulator>/queue`, sync host `<emulator>/run`) and both models.
pub async fn apply(database_url: &str, emulator_url: &str) -> anyhow::Result<()> {
    let mut client = gen_pipeline::db::connect(database_url)
        .await
        .context("cannot connect to seed the database")?;
    let tx = client.transaction().await?;
    let queue_url = format!("{emulator_url}/queue");
    let sync_url = format!("{emulator_url}/run");
    let row = tx
        .query_typed_one(
            "INSERT INTO public.api_providers
               (id, name, display_name, base_url, sync_base_url, auth_scheme, secret_name, is_active)
             VALUES ($1, 'fal', 'fal.ai', $2, $3, 'api_key_header', 'FAL_KEY', true)
             ON CONFLICT (name) DO UPDATE
               SET base_url = EXCLUDED.base_url, sync_base_url = EXCLUDED.sync_base_url, is_active = true,
                   updated_at = now()
             RETURNING id",
            &[(&PROVIDER_ID, Type::UUID), (&queue_url, Type::TEXT), (&sync_url, Type::TEXT)],
        )
        .await
        .context("cannot upsert the fal provider")?;
    let provider_id: Uuid = row.get(0);

    for m in models() {
        tx.query_typed(
            "INSERT INTO public.api_models
               (id, provider_id, model_key, display_name, modality, tasks, default_for_tasks, endpoint_path,
                input_defaults, capabilities, priority, is_active)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, true)
             ON CONFLICT (id) DO UPDATE
               SET provider_id = EXCLUDED.provider_id, model_key = EXCLUDED.model_key,
                   display_name = EXCLUDED.display_name, modality = EXCLUDED.modality, tasks = EXCLUDED.tasks,
                   default_for_tasks = EXCLUDED.default_for_tasks, endpoint_path = EXCLUDED.endpoint_path,
                   input_defaults = EXCLUDED.input_defaults, capabilities = EXCLUDED.capabilities,
                   priority = EXCLUDED.priority, is_active = true, updated_at = now()",
            &[
                (&m.id, Type::UUID),
                (&provider_id, Type::UUID),
                (&m.key, Type::TEXT),
                (&m.display_name, Type::TEXT),
                (&m.modality, Type::TEXT),
                (&m.tasks, Type::TEXT_ARRAY),
                (&m.default_for_tasks, Type::TEXT_ARRAY),
                (&m.endpoint_path, Type::TEXT),
                (&m.input_defaults, Type::JSONB),
                (&m.capabilities, Type::JSONB),
            ],
        )
        .await
        .with_context(|| format!("cannot upsert model {}", m.key))?;
    }
    tx.commit().await?;
    Ok(())
}
