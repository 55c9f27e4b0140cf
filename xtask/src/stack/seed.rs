//! Seed data of the local stack: the fal provider pointing at the emulator with one sync image model and one async
//! video model, and the Replicate provider at the emulator's Replicate API with the same pair. Upserts with fixed
//! ids, so running it again changes nothing but the emulator's address.

use anyhow::Context;
use gen_pipeline::db::Type;
use serde_json::json;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::envfile::StackEnv;
use super::fal_emulator;

pub const PROVIDER_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_0000000000fa);
pub const SYNC_MODEL_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_000000000001);
pub const ASYNC_MODEL_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_000000000002);
pub const SYNC_MODEL_KEY: &str = "fal-ai/bytedance/seedream/v4/text-to-image";
pub const ASYNC_MODEL_KEY: &str = "fal-ai/wan/v2.2-a14b/text-to-video";

pub const REPLICATE_PROVIDER_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_0000000000e9);
pub const REPLICATE_SYNC_MODEL_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_000000000003);
pub const REPLICATE_ASYNC_MODEL_ID: Uuid = Uuid::from_u128(0x00000000_0000_4000_a000_000000000004);

/// The seeded models' ids and keys in `stack.env`, for the tests to name them.
pub fn add_to(env: &mut StackEnv) {
    env.set("SYNC_MODEL_ID", SYNC_MODEL_ID.to_string());
    env.set("ASYNC_MODEL_ID", ASYNC_MODEL_ID.to_string());
    env.set("SYNC_MODEL_KEY", SYNC_MODEL_KEY);
    env.set("ASYNC_MODEL_KEY", ASYNC_MODEL_KEY);
    env.set(
        "REPLICATE_SYNC_MODEL_ID",
        REPLICATE_SYNC_MODEL_ID.to_string(),
    );
    env.set("REPLICATE_MODEL_ID", REPLICATE_ASYNC_MODEL_ID.to_string());
}

struct Provider {
    id: Uuid,
    name: &'static str,
    display_name: &'static str,
    base_url: String,
    sync_base_url: Option<String>,
    auth_scheme: &'static str,
    secret_name: &'static str,
    models: Vec<Model>,
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

/// fal at the emulator: queue host `<emulator>/queue`, sync host `<emulator>/run`.
fn fal(emulator_url: &str) -> Provider {
    Provider {
        id: PROVIDER_ID,
        name: "fal",
        display_name: "fal.ai",
        base_url: format!("{emulator_url}/queue"),
        sync_base_url: Some(format!("{emulator_url}/run")),
        auth_scheme: "api_key_header",
        secret_name: "FAL_KEY",
        models: fal_models(),
    }
}

fn fal_models() -> Vec<Model> {
    vec![
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
            endpoint_path: Some(gen_pipeline::provider::ProviderKind::Fal.queue_route()),
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

/// Replicate at the emulator's `<emulator>/replicate/v1`, with no sync host (a sync call is a create held by
/// `Prefer: wait`). Neither model is a default: those are fal's.
fn replicate(emulator_url: &str) -> Provider {
    Provider {
        id: REPLICATE_PROVIDER_ID,
        name: "replicate",
        display_name: "Replicate",
        base_url: fal_emulator::replicate_url(emulator_url),
        sync_base_url: None,
        auth_scheme: "bearer",
        secret_name: "REPLICATE_API_TOKEN",
        models: vec![
            Model {
                id: REPLICATE_SYNC_MODEL_ID,
                key: "emulator/replicate-image",
                display_name: "Replicate image (emulator)",
                modality: "image",
                tasks: &["t2i"],
                default_for_tasks: &[],
                endpoint_path: None,
                input_defaults: json!({}),
                capabilities: json!({}),
            },
            Model {
                id: REPLICATE_ASYNC_MODEL_ID,
                key: "emulator/replicate-video",
                display_name: "Replicate video (emulator)",
                modality: "video",
                tasks: &["t2v"],
                default_for_tasks: &[],
                endpoint_path: Some(gen_pipeline::provider::ProviderKind::Replicate.queue_route()),
                input_defaults: json!({}),
                capabilities: json!({}),
            },
        ],
    }
}

/// Upserts both providers and their models, in one transaction.
pub async fn apply(database_url: &str, emulator_url: &str) -> anyhow::Result<()> {
    let mut client = gen_pipeline::db::connect(database_url)
        .await
        .context("cannot connect to seed the database")?;
    let tx = client.transaction().await?;
    for provider in [fal(emulator_url), replicate(emulator_url)] {
        let provider_id = upsert_provider(&tx, &provider).await?;
        for m in &provider.models {
            upsert_model(&tx, provider_id, m).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The provider's row by name (a database brought by `DATABASE_URL` may already have one under another id); its id.
async fn upsert_provider(tx: &Transaction<'_>, p: &Provider) -> anyhow::Result<Uuid> {
    let row = tx
        .query_typed_one(
            "INSERT INTO public.api_providers
               (id, name, display_name, base_url, sync_base_url, auth_scheme, secret_name, is_active)
             VALUES ($1, $2, $3, $4, $5, $6, $7, true)
             ON CONFLICT (name) DO UPDATE
               SET display_name = EXCLUDED.display_name, base_url = EXCLUDED.base_url,
                   sync_base_url = EXCLUDED.sync_base_url, auth_scheme = EXCLUDED.auth_scheme,
                   secret_name = EXCLUDED.secret_name, is_active = true, updated_at = now()
             RETURNING id",
            &[
                (&p.id, Type::UUID),
                (&p.name, Type::TEXT),
                (&p.display_name, Type::TEXT),
                (&p.base_url, Type::TEXT),
                (&p.sync_base_url, Type::TEXT),
                (&p.auth_scheme, Type::TEXT),
                (&p.secret_name, Type::TEXT),
            ],
        )
        .await
        .with_context(|| format!("cannot upsert the {} provider", p.name))?;
    Ok(row.get(0))
}

async fn upsert_model(tx: &Transaction<'_>, provider_id: Uuid, m: &Model) -> anyhow::Result<()> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMULATOR: &str = "http://127.0.0.1:9";

    #[test]
    fn replicate_models_are_nobodys_default() {
        let replicate = replicate(EMULATOR);
        assert!(
            replicate
                .models
                .iter()
                .all(|m| m.default_for_tasks.is_empty())
        );
        assert_eq!(replicate.base_url, "http://127.0.0.1:9/replicate/v1");
        let fal = fal(EMULATOR);
        let defaults: Vec<_> = fal
            .models
            .iter()
            .flat_map(|m| m.default_for_tasks)
            .collect();
        assert_eq!(defaults, [&"t2i", &"t2v"]);
    }

    #[test]
    fn every_seeded_row_has_its_own_id_and_key() {
        let providers = [fal(EMULATOR), replicate(EMULATOR)];
        let models: Vec<&Model> = providers.iter().flat_map(|p| &p.models).collect();
        let mut ids: Vec<Uuid> = providers
            .iter()
            .map(|p| p.id)
            .chain(models.iter().map(|m| m.id))
            .collect();
        let mut keys: Vec<&str> = models.iter().map(|m| m.key).collect();
        ids.sort();
        ids.dedup();
        keys.sort();
        keys.dedup();
        assert_eq!((ids.len(), keys.len()), (2 + models.len(), models.len()));
    }
}
