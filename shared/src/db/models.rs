//! `api_models` joined to `api_providers`: the model a generation runs on and where its provider lives.

use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// One active model with its provider's hosts.
#[derive(Debug, Clone)]
pub struct ModelRow {
    pub id: Uuid,
    pub provider_id: Uuid,
    pub provider_name: String,
    pub model_key: String,
    pub modality: String,
    pub endpoint_path: Option<String>,
    pub input_defaults: Value,
    pub capabilities: Value,
    pub pricing: Option<Value>,
    /// The queue host (`https://queue.fal.run` for fal).
    pub base_url: Option<String>,
    /// The sync host (`https://fal.run` for fal).
    pub sync_base_url: Option<String>,
}

const SELECT: &str = "SELECT m.id, m.provider_id, p.name, m.model_key, m.modality, m.endpoint_path,
        m.input_defaults, m.capabilities, m.pricing, p.base_url, p.sync_base_url
   FROM public.api_models m JOIN public.api_providers p ON p.id = m.provider_id";

fn from_row(r: &tokio_postgres::Row) -> ModelRow {
    ModelRow {
        id: r.get(0),
        provider_id: r.get(1),
        provider_name: r.get(2),
        model_key: r.get(3),
        modality: r.get(4),
        endpoint_path: r.get(5),
        input_defaults: r.get(6),
        capabilities: r.get(7),
        pricing: r.get(8),
        base_url: r.get(9),
        sync_base_url: r.get(10),
    }
}

/// The active model with this id.
pub async fn active_by_id<C: GenericClient>(
    client: &C,
    id: Uuid,
) -> Result<Option<ModelRow>, tokio_postgres::Error> {
    let sql = format!("{SELECT} WHERE m.id = $1 AND m.is_active");
    Ok(client
        .query_typed_opt(&sql, &[(&id, Type::UUID)])
        .await?
        .as_ref()
        .map(from_row))
}

/// The default fal model for a modality: the one whose `default_for_tasks` holds the task (`t2i`/`t2v`), else
/// the active fal model of that modality with the lowest priority.
pub async fn default_for<C: GenericClient>(
    client: &C,
    modality: &str,
    task: &str,
) -> Result<Option<ModelRow>, tokio_postgres::Error> {
    let sql = format!(
        "{SELECT} WHERE m.is_active AND p.name = 'fal' AND m.modality = $1
          ORDER BY ($2 = ANY (m.default_for_tasks)) DESC, m.priority ASC, m.created_at ASC
          LIMIT 1"
    );
    Ok(client
        .query_typed_opt(&sql, &[(&modality, Type::TEXT), (&task, Type::TEXT)])
        .await?
        .as_ref()
        .map(from_row))
}
