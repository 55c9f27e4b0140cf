//! Queries of the lost-webhook reconciler.

use std::time::Duration;

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// Takes up to `limit` queued jobs older than `older_than` that were not checked within `older_than`, and
/// records the check; concurrent runs skip each other's rows.
pub async fn take_stale_queued<C: GenericClient>(
    client: &C,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let secs = older_than.as_secs_f64();
    let rows = client
        .query_typed(
            "WITH candidates AS (
                 SELECT j.id
                   FROM public.jobs j
                   LEFT JOIN public.job_reconcile_checks r ON r.job_id = j.id
                  WHERE j.status = 'queued'
                    AND j.started_at < now() - make_interval(secs => $1)
                    AND (r.checked_at IS NULL OR r.checked_at < now() - make_interval(secs => $1))
                  ORDER BY coalesce(r.checked_at, j.started_at)
                  LIMIT $2
                  FOR UPDATE OF j SKIP LOCKED)
             INSERT INTO public.job_reconcile_checks (job_id)
             SELECT id FROM candidates
             ON CONFLICT (job_id) DO UPDATE
                SET checked_at = now(), checks = public.job_reconcile_checks.checks + 1
             RETURNING job_id",
            &[(&secs, Type::FLOAT8), (&limit, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Completed jobs of the last day that ask for post-processing, for a re-run of steps that did not record
/// completion (the re-run skips recorded steps).
pub async fn completed_needing_post_processing<C: GenericClient>(
    client: &C,
    settle: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let secs = settle.as_secs_f64();
    let rows = client
        .query_typed(
            "SELECT j.id FROM public.jobs j JOIN public.job_runs r ON r.job_id = j.id
              WHERE j.status = 'completed'
                AND j.completed_at > now() - interval '1 day'
                AND j.completed_at < now() - make_interval(secs => $1)
                AND cardinality(r.post_steps) > 0
                AND NOT EXISTS (SELECT 1 FROM public.job_postprocessing p WHERE p.job_id = j.id)
              ORDER BY j.completed_at
              LIMIT $2",
            &[(&secs, Type::FLOAT8), (&limit, Type::INT8)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
