//! The `jobs` table: one INSERT per generation, guarded transitions, metadata merges.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::runs::{self, JobRun, NewRun};
use crate::jobs::{JobStatus, OPEN_STATUSES_SQL};

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: JobStatus,
    pub job_type: String,
    pub format: Option<String>,
    pub original_prompt: Option<String>,
    pub error_message: Option<String>,
    pub metadata: Value,
    pub api_model_id: Option<Uuid>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The server-owned state: what the functions act on (never `metadata`, which the owner can rewrite).
    pub run: Option<JobRun>,
}

impl JobRecord {
    /// Ended: its status is terminal, or the functions closed its run (an owner may have set the status open
    /// again since; the run decides).
    pub fn is_closed(&self) -> bool {
        self.status.is_terminal() || self.run.as_ref().is_some_and(|r| r.closed_at.is_some())
    }

    /// The format the job was submitted with: its run's (V19); `jobs.format`, which its owner may rewrite, only
    /// where the run has none (a job without a run, submitted before the port; a run written before V19, or by the
    /// previous release while V19 was applied).
    pub fn submitted_format(&self) -> Option<&str> {
        self.run
            .as_ref()
            .and_then(|r| r.format.as_deref())
            .or(self.format.as_deref())
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// The most bytes of a column its owner may write at will (`original_prompt`, `error_message`, `metadata` as JSON
/// text) that a read takes: four times the default request body (`MAX_BODY_BYTES`), which bounds what the functions
/// write there. Past it the column reads as unset: an owner could otherwise write hundreds of megabytes there, and
/// every webhook delivery and reconciler pass that reads the job would take it into memory (the reconciler's pass,
/// everyone's, would end out of memory at that job, and again at every pass).
pub const MAX_OWNER_VALUE_BYTES: i32 = 4 << 20;

/// The job's columns (`j`), whether an owner's column was over [`MAX_OWNER_VALUE_BYTES`], then its run's
/// ([`runs::COLUMNS`]).
fn select(filter: &str) -> String {
    const MAX: i32 = MAX_OWNER_VALUE_BYTES;
    format!(
        "SELECT j.id, j.user_id, j.status, j.job_type, j.format,
                CASE WHEN o.prompt <= {MAX} THEN j.original_prompt END,
                CASE WHEN o.error <= {MAX} THEN j.error_message END,
                CASE WHEN o.metadata <= {MAX} THEN coalesce(j.metadata, '{{}}'::jsonb) END AS metadata,
                j.api_model_id, j.created_at, j.started_at, j.completed_at,
                greatest(o.prompt, o.error, o.metadata) > {MAX} AS oversized,
                {}
           FROM public.jobs j {}
          CROSS JOIN LATERAL (SELECT coalesce(octet_length(j.original_prompt), 0) AS prompt,
                                     coalesce(octet_length(j.error_message), 0) AS error,
                                     coalesce(octet_length(j.metadata::text), 0) AS metadata) o
          WHERE {filter}",
        runs::COLUMNS,
        runs::JOINS
    )
}

fn from_row(r: &tokio_postgres::Row) -> JobRecord {
    let status: Option<String> = r.get(2);
    let id: Uuid = r.get(0);
    if r.get::<_, bool>(12) {
        tracing::warn!(job_id = %id, limit = MAX_OWNER_VALUE_BYTES, "a job column its owner wrote is over the limit; read as unset");
    }
    JobRecord {
        id,
        user_id: r.get(1),
        // The column's CHECK admits only the five values; a NULL status is treated as the column default.
        status: status
            .as_deref()
            .and_then(JobStatus::parse)
            .unwrap_or(JobStatus::Queued),
        job_type: r.get(3),
        format: r.get(4),
        original_prompt: r.get(5),
        error_message: r.get(6),
        metadata: owners_value::<Option<Value>>(r, 7, id)
            .flatten()
            .unwrap_or_else(|| Value::Object(Default::default())),
        api_model_id: r.get(8),
        created_at: owners_value(r, 9, id).flatten(),
        started_at: owners_value(r, 10, id).flatten(),
        completed_at: owners_value(r, 11, id).flatten(),
        run: runs::from_row(r, 13),
    }
}

/// A column the job's owner may write, read without trusting it to decode: Postgres takes values that do not
/// (a timestamp of `infinity`, a JSON number beyond `f64` or arrays nested deeper than serde_json's limit), and
/// `Row::get` would panic on them, in every webhook delivery and reconciler pass that reads the job. `None`
/// (logged) when it does not decode; nothing acts on these columns, so the job reads as if it were unset.
fn owners_value<'a, T: tokio_postgres::types::FromSql<'a>>(
    r: &'a tokio_postgres::Row,
    at: usize,
    job_id: Uuid,
) -> Option<T> {
    r.try_get(at)
        .inspect_err(|e| {
            let column = r.columns()[at].name();
            tracing::warn!(%job_id, column, error = %e, "a job column its owner wrote does not decode; read as unset");
        })
        .ok()
}

/// Everything the single INSERT writes.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub user_id: Uuid,
    pub job_type: String,
    pub original_prompt: String,
    /// `queued` for the queue route, `processing` for sync: the final status, in the INSERT itself.
    pub status: JobStatus,
    pub quality: String,
    pub api_model_id: Uuid,
    pub format: String,
    pub metadata: Value,
    pub run: NewRun,
    /// The most open runs the user may have (see `Config::max_open_jobs_per_user`), this one excluded.
    pub max_open: i64,
}

/// Inserts the job and its run in ONE statement, unless the user already has `max_open` open runs (`None`):
/// `public.insert_job` (V9, as V11 restates it), a function, so that its statements are planned once per server
/// connection rather than at every submission (the parameters are in the function's order).
pub async fn insert<C: GenericClient>(
    client: &C,
    job: &NewJob,
) -> Result<Option<Uuid>, tokio_postgres::Error> {
    let status = job.status.as_str();
    let run = &job.run;
    let webhook_auth = run.webhook_auth.as_str();
    let (ref_bucket, ref_key) = match &run.reference {
        Some(r) => (Some(r.bucket.as_str()), Some(r.key.as_str())),
        None => (None, None),
    };
    let row = client
        .query_typed_one(
            "SELECT public.insert_job($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                                      $18, $19, $20)",
            &[
                (&job.user_id, Type::UUID),
                (&job.job_type, Type::TEXT),
                (&job.original_prompt, Type::TEXT),
                (&status, Type::TEXT),
                (&job.quality, Type::TEXT),
                (&job.api_model_id, Type::UUID),
                (&job.format, Type::TEXT),
                (&job.metadata, Type::JSONB),
                (&job.max_open, Type::INT8),
                (&run.provider_id, Type::UUID),
                (&run.provider_name, Type::TEXT),
                (&run.model_key, Type::TEXT),
                (&webhook_auth, Type::TEXT),
                (&ref_bucket, Type::TEXT),
                (&ref_key, Type::TEXT),
                (&run.targets.destination, Type::TEXT),
                (&run.targets.character_id, Type::UUID),
                (&run.targets.scene_id, Type::UUID),
                (&run.targets.storyboard_clip_id, Type::UUID),
                (&run.post_steps, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn get<C: GenericClient>(
    client: &C,
    id: Uuid,
) -> Result<Option<JobRecord>, tokio_postgres::Error> {
    let sql = select("j.id = $1");
    Ok(client
        .query_typed_opt(&sql, &[(&id, Type::UUID)])
        .await?
        .as_ref()
        .map(from_row))
}

/// The job only if it belongs to the user (others' jobs look absent).
pub async fn get_for_user<C: GenericClient>(
    client: &C,
    id: Uuid,
    user_id: Uuid,
) -> Result<Option<JobRecord>, tokio_postgres::Error> {
    let sql = select("j.id = $1 AND j.user_id = $2");
    Ok(client
        .query_typed_opt(&sql, &[(&id, Type::UUID), (&user_id, Type::UUID)])
        .await?
        .as_ref()
        .map(from_row))
}

/// The job submitted to the provider under this request id (server-owned `job_runs`, unique per provider).
pub async fn by_request_id<C: GenericClient>(
    client: &C,
    provider_name: &str,
    request_id: &str,
) -> Result<Option<JobRecord>, tokio_postgres::Error> {
    let sql = select("r.provider_name = $1 AND r.request_id = $2");
    Ok(client
        .query_typed_opt(
            &sql,
            &[(&provider_name, Type::TEXT), (&request_id, Type::TEXT)],
        )
        .await?
        .as_ref()
        .map(from_row))
}

/// Whether a job that ended before the port (no run) recorded this fal request id in its metadata (the original's
/// `fal_request_id`, indexed since V5). Only good for skipping a redelivery: metadata is the owner's to rewrite.
pub async fn ended_without_run<C: GenericClient>(
    client: &C,
    request_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM public.jobs j
                         WHERE j.metadata->>'fal_request_id' = $1 AND j.status NOT IN {OPEN_STATUSES_SQL}
                           AND NOT EXISTS (SELECT 1 FROM public.job_runs r WHERE r.job_id = j.id))"
    );
    let row = client
        .query_typed_one(&sql, &[(&request_id, Type::TEXT)])
        .await?;
    Ok(row.get(0))
}

/// Merges `patch` into an open job's metadata without changing its status; false when the job is closed: by its
/// status, or by its run (a cancel closes the run, and the owner can set the status back).
pub async fn annotate_open<C: GenericClient>(
    client: &C,
    id: Uuid,
    patch: &Value,
) -> Result<bool, tokio_postgres::Error> {
    let sql = format!(
        "UPDATE public.jobs SET metadata = coalesce(metadata, '{{}}'::jsonb) || $2
          WHERE id = $1 AND coalesce(status, 'queued') IN {OPEN_STATUSES_SQL}
            AND NOT EXISTS (SELECT 1 FROM public.job_runs r WHERE r.job_id = $1 AND r.closed_at IS NOT NULL)
          RETURNING id"
    );
    let rows = client
        .query_typed(&sql, &[(&id, Type::UUID), (patch, Type::JSONB)])
        .await?;
    Ok(!rows.is_empty())
}

/// Locks the job's row until the transaction ends: writers of a job and its run take the job first.
pub async fn lock<C: GenericClient>(client: &C, id: Uuid) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "SELECT 1 FROM public.jobs WHERE id = $1 FOR UPDATE",
            &[(&id, Type::UUID)],
        )
        .await?;
    Ok(())
}

/// Moves an open job to `to` (only along [`JobStatus::can_become`]), merging `patch` into its metadata and setting
/// `completed_at` for terminal states, which also close its run. Returns false when the job was no longer in a
/// state that allows it, or its run is closed.
pub async fn transition<C: GenericClient>(
    client: &C,
    id: Uuid,
    to: JobStatus,
    error_message: Option<&str>,
    patch: &Value,
) -> Result<bool, tokio_postgres::Error> {
    // The statuses `to` may be reached from: the state machine's rule, applied in the UPDATE's guard.
    let from: Vec<&str> = JobStatus::ALL
        .into_iter()
        .filter(|s| s.can_become(to))
        .map(JobStatus::as_str)
        .collect();
    if from.is_empty() {
        return Ok(false);
    }
    let to_str = to.as_str();
    let terminal = to.is_terminal();
    // Postgres refuses U+0000 in text and jsonb; a provider's error text can carry one, and would fail every retry.
    let error_message = error_message.map(|m| m.replace('\0', ""));
    let patch = crate::json::without_nul(patch);
    // A closed run's job stays closed whatever its owner wrote into its status since; a terminal move closes the
    // run in the same statement (the job's row locked first, as everywhere). A NULL status (the column allows it)
    // is the column's default, as `from_row` reads it.
    let rows = client
        .query_typed(
            "WITH moved AS (
                 UPDATE public.jobs
                    SET status = $2,
                        error_message = coalesce($3, error_message),
                        completed_at = CASE WHEN $4 THEN now() ELSE completed_at END,
                        metadata = coalesce(metadata, '{}'::jsonb) || $5
                  WHERE id = $1 AND coalesce(status, 'queued') = ANY ($6)
                    AND NOT EXISTS (SELECT 1 FROM public.job_runs r WHERE r.job_id = $1 AND r.closed_at IS NOT NULL)
                  RETURNING id
             ), closed AS (
                 UPDATE public.job_runs SET closed_at = now()
                  WHERE $4 AND job_id IN (SELECT id FROM moved)
             )
             SELECT id FROM moved",
            &[
                (&id, Type::UUID),
                (&to_str, Type::TEXT),
                (&error_message, Type::TEXT),
                (&terminal, Type::BOOL),
                (&patch, Type::JSONB),
                (&from, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(!rows.is_empty())
}
