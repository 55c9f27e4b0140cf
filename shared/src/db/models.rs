//! `api_models` joined to `api_providers`: the model a generation runs on and where its provider lives.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// What a generation may run on: an active model that makes images or videos (not a `chat` model), of an active
/// provider. A model is no more usable than its provider: deactivating the provider takes all of its models out.
const RUNNABLE: &str = "m.is_active AND p.is_active AND m.modality IN ('image', 'video')";

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

/// The runnable model with this id ([`RUNNABLE`]).
pub async fn active_by_id<C: GenericClient>(
    client: &C,
    id: Uuid,
) -> Result<Option<ModelRow>, tokio_postgres::Error> {
    let sql = format!("{SELECT} WHERE m.id = $1 AND {RUNNABLE}");
    Ok(client
        .query_typed_opt(&sql, &[(&id, Type::UUID)])
        .await?
        .as_ref()
        .map(from_row))
}

/// What `model_key_override` may name: an active model of the asked row's provider, read for what runs with it.
#[derive(Debug, Clone, PartialEq)]
pub struct OverrideModel {
    pub modality: String,
    /// Its route (`fal-webhook`: the queue), as `api_models.endpoint_path`.
    pub endpoint_path: Option<String>,
    /// Its `capabilities` (its `input_schema` decides the reference list form).
    pub capabilities: Value,
}

/// The provider's runnable model `model_key` ([`RUNNABLE`]: what `model_key_override` may name); `None` when the
/// provider has no such model.
pub async fn active_override<C: GenericClient>(
    client: &C,
    provider_id: Uuid,
    model_key: &str,
) -> Result<Option<OverrideModel>, tokio_postgres::Error> {
    let sql = format!(
        "{SELECT} WHERE m.model_key = $1 AND m.provider_id = $2 AND {RUNNABLE}
          ORDER BY m.priority ASC, m.created_at ASC
          LIMIT 1"
    );
    let row = client
        .query_typed_opt(
            &sql,
            &[(&model_key, Type::TEXT), (&provider_id, Type::UUID)],
        )
        .await?
        .as_ref()
        .map(from_row);
    Ok(row.map(|m| OverrideModel {
        modality: m.modality,
        endpoint_path: m.endpoint_path,
        capabilities: m.capabilities,
    }))
}

/// The default fal model for a modality: the one whose `default_for_tasks` holds the task (`t2i`/`t2v`), else
/// the active fal model of that modality with the lowest priority.
pub async fn default_for<C: GenericClient>(
    client: &C,
    modality: &str,
    task: &str,
) -> Result<Option<ModelRow>, tokio_postgres::Error> {
    let sql = format!(
        "{SELECT} WHERE {RUNNABLE} AND p.name = 'fal' AND m.modality = $1
          ORDER BY ($2 = ANY (m.default_for_tasks)) DESC, m.priority ASC, m.created_at ASC
          LIMIT 1"
    );
    Ok(client
        .query_typed_opt(&sql, &[(&modality, Type::TEXT), (&task, Type::TEXT)])
        .await?
        .as_ref()
        .map(from_row))
}

/// Active models by id, kept by each instance for a short time: the model lookup is the one query of a submission
/// that does not change between requests, and it sat on every request's critical path. A model deactivated or
/// edited in the table is seen by running instances within the TTL (`MODEL_CACHE_TTL_SECS`, 0 turns the cache
/// off). Misses (unknown or inactive ids) are never kept.
pub struct ModelCache {
    ttl: Duration,
    entries: Mutex<HashMap<Uuid, (Instant, ModelRow)>>,
}

/// Entries kept at most; beyond it expired ones are dropped, and if none has expired all are.
const MODEL_CACHE_MAX: usize = 256;

impl ModelCache {
    pub fn new(ttl: Duration) -> Self {
        ModelCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The active model with this id, from the cache while fresh, else from the table.
    pub async fn active_by_id<C: GenericClient>(
        &self,
        client: &C,
        id: Uuid,
    ) -> Result<Option<ModelRow>, tokio_postgres::Error> {
        if let Some(row) = self.get(id) {
            return Ok(Some(row));
        }
        let row = active_by_id(client, id).await?;
        if let Some(row) = &row {
            self.put(row.clone());
        }
        Ok(row)
    }

    fn get(&self, id: Uuid) -> Option<ModelRow> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&id)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, row)| row.clone())
    }

    fn put(&self, row: ModelRow) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MODEL_CACHE_MAX {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= MODEL_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(row.id, (Instant::now(), row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Uuid) -> ModelRow {
        ModelRow {
            id,
            provider_id: Uuid::new_v4(),
            provider_name: "fal".into(),
            model_key: "fal-ai/flux/dev".into(),
            modality: "image".into(),
            endpoint_path: None,
            input_defaults: Value::Null,
            capabilities: Value::Null,
            pricing: None,
            base_url: Some("https://queue.fal.run".into()),
            sync_base_url: Some("https://fal.run".into()),
        }
    }

    #[test]
    fn a_kept_model_is_served_until_its_ttl_ends() {
        let cache = ModelCache::new(Duration::from_millis(50));
        let id = Uuid::new_v4();
        assert!(cache.get(id).is_none());
        cache.put(row(id));
        assert_eq!(cache.get(id).map(|r| r.id), Some(id));
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(id).is_none(), "served after its TTL");
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = ModelCache::new(Duration::ZERO);
        let id = Uuid::new_v4();
        cache.put(row(id));
        assert!(cache.get(id).is_none());
        assert!(cache.entries.lock().unwrap().is_empty());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = ModelCache::new(Duration::from_secs(60));
        let ids: Vec<Uuid> = (0..MODEL_CACHE_MAX * 2 + 1)
            .map(|_| Uuid::new_v4())
            .collect();
        for id in &ids {
            cache.put(row(*id));
            assert!(cache.entries.lock().unwrap().len() <= MODEL_CACHE_MAX);
        }
        let last = *ids.last().unwrap();
        assert_eq!(cache.get(last).map(|r| r.id), Some(last));
    }
}
