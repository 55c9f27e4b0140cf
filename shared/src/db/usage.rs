//! `api_usage_logs`: one row per generation, keyed by `job_id` (unique), inserted at submit and completed later.

use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct NewUsage {
    pub job_id: Uuid,
    pub provider_id: Uuid,
    pub model_id: Uuid,
    pub user_id: Uuid,
    pub request_type: String,
    pub endpoint_path: String,
    pub request_payload: Value,
    pub cost_usd: Option<f64>,
    pub response_status: Option<i32>,
    pub response_time_ms: i32,
    pub response_payload: Option<Value>,
    pub error_message: Option<String>,
    pub provider_metadata: Value,
}

/// The INSERT of [`insert_once`]: `$1`…`$13` are the row's columns (in the order of [`params`], which
/// `public.record_queued_request`'s first parameters follow too).
const INSERT_ONCE: &str = "INSERT INTO public.api_usage_logs (job_id, provider_id, model_id, user_id, request_type,
         endpoint_path, request_payload, cost_usd, response_status, response_time_ms, response_payload, error_message,
         provider_metadata)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8::float8::numeric(10,6), $9, $10, $11, $12, $13)
     ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
     RETURNING id";

/// Inserts the generation's row unless it has one already. True when inserted.
pub async fn insert_once<C: GenericClient>(
    client: &C,
    u: &NewUsage,
) -> Result<bool, tokio_postgres::Error> {
    let rows = client.query_typed(INSERT_ONCE, &params(u)).await?;
    Ok(!rows.is_empty())
}

/// [`insert_once`] and, in the same statement, the provider's request recorded in the job's run (what the
/// functions act on) and copied into its metadata (what the original's clients read): one round trip and one
/// commit for all three (the queue route's last step, on the submit's critical path). `public.record_queued_request`
/// (V9), a function, so that its statements are planned once per server connection rather than at every submission.
/// True when the request went into the job's open run; false when the run was closed meanwhile (the job cancelled
/// through the API) or the job deleted (V12), so that nothing will act on the request.
pub async fn insert_once_and_record_request<C: GenericClient>(
    client: &C,
    u: &NewUsage,
    r: &super::runs::ProviderRequest,
) -> Result<bool, tokio_postgres::Error> {
    let mut params = params(u).to_vec();
    params.extend([
        (
            &r.request_id as &(dyn tokio_postgres::types::ToSql + Sync),
            Type::TEXT,
        ),
        (&r.gateway_request_id, Type::TEXT),
        (&r.status_url, Type::TEXT),
        (&r.response_url, Type::TEXT),
        (&r.cancel_url, Type::TEXT),
    ]);
    let row = client
        .query_typed_one(
            "SELECT public.record_queued_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                                                 $16, $17, $18)",
            &params,
        )
        .await?;
    Ok(row.get(0))
}

fn params(u: &NewUsage) -> [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 13] {
    [
        (&u.job_id, Type::UUID),
        (&u.provider_id, Type::UUID),
        (&u.model_id, Type::UUID),
        (&u.user_id, Type::UUID),
        (&u.request_type, Type::TEXT),
        (&u.endpoint_path, Type::TEXT),
        (&u.request_payload, Type::JSONB),
        (&u.cost_usd, Type::FLOAT8),
        (&u.response_status, Type::INT4),
        (&u.response_time_ms, Type::INT4),
        (&u.response_payload, Type::JSONB),
        (&u.error_message, Type::TEXT),
        (&u.provider_metadata, Type::JSONB),
    ]
}

/// Completes the generation's row (matched by job, or by fal request id for rows written before the port).
/// Returns the number of rows updated (0 when the generation has no row yet).
pub async fn complete<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    request_id: Option<&str>,
    response_status: i32,
    response_time_ms: i32,
    metadata_patch: &Value,
) -> Result<u64, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "UPDATE public.api_usage_logs
                SET response_status = $3, response_time_ms = $4,
                    provider_metadata = coalesce(provider_metadata, '{}'::jsonb) || $5
              WHERE id = (SELECT id FROM public.api_usage_logs
                           WHERE job_id = $1 OR ($2::text IS NOT NULL AND provider_metadata->>'request_id' = $2)
                           ORDER BY (job_id = $1) DESC NULLS LAST, created_at LIMIT 1)
             RETURNING id",
            &[
                (&job_id, Type::UUID),
                (&request_id, Type::TEXT),
                (&response_status, Type::INT4),
                (&response_time_ms, Type::INT4),
                (metadata_patch, Type::JSONB),
            ],
        )
        .await?;
    Ok(rows.len() as u64)
}

/// Inserts the row of a queued generation that has none (submitted before the port, its delivery came before its
/// submission's record, or that record failed): provider by name; model, user, request type and model key from its
/// run (V19). The job's columns, which its owner may rewrite, only for a job without a run (submitted before the
/// port), and the job's format where the run has none (written before V19, or by the previous release while V19
/// was applied: a format decides only how the owner's own result is stored). A run without a model (the same runs,
/// or its model row deleted since, V20) gives a row without one rather than the owner's choice. `cost` is
/// the server's price of the run; `None` (a job without a run, submitted before the port) takes the job's own
/// estimate, which is in metadata its owner can rewrite: one that `numeric(10,6)` cannot hold is left out rather
/// than failing the completing transaction at every retry. No-op when the job has a row.
pub async fn insert_for_job<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    provider_name: &str,
    cost: Option<f64>,
    response_time_ms: i32,
    provider_metadata: &Value,
) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "INSERT INTO public.api_usage_logs (job_id, provider_id, model_id, user_id, request_type, endpoint_path,
                 cost_usd, response_status, response_time_ms, provider_metadata)
             SELECT j.id, p.id, CASE WHEN r.job_id IS NULL THEN j.api_model_id ELSE r.api_model_id END,
                    coalesce(r.user_id, j.user_id),
                    CASE WHEN coalesce(r.format, j.format) = 'video' THEN 'video' ELSE 'image' END,
                    '/' || coalesce(r.model_key, j.metadata->>'model_key', ''),
                    coalesce($5::numeric(10,6),
                      CASE WHEN jsonb_typeof(j.metadata->'estimated_cost') = 'number' THEN
                           CASE WHEN (j.metadata->>'estimated_cost')::numeric BETWEEN 0 AND 9999
                                THEN (j.metadata->>'estimated_cost')::numeric(10,6) END
                      END),
                    200, $3, $4
               FROM public.jobs j
               JOIN public.api_providers p ON p.name = $2
               LEFT JOIN public.job_runs r ON r.job_id = j.id
              WHERE j.id = $1
             ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
             RETURNING id",
            &[
                (&job_id, Type::UUID),
                (&provider_name, Type::TEXT),
                (&response_time_ms, Type::INT4),
                (provider_metadata, Type::JSONB),
                (&cost, Type::FLOAT8),
            ],
        )
        .await?;
    Ok(!rows.is_empty())
}
