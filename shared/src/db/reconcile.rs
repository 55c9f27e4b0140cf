//! Queries of the lost-webhook reconciler.
//!
//! Both pick jobs by what the functions wrote (`job_runs`: the run, its age, its stored result), least recently
//! checked first, and record the check in `job_reconcile_checks`: an owner can insert and rewrite their own `jobs`
//! rows (status, `started_at`, `completed_at`), so rows of theirs never come back to the front of a pass, and
//! rows the functions did not write are never in one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// Takes up to `limit` jobs with an open run (none stored, not closed) that the functions wrote more than
/// `older_than` ago and that were not checked within `older_than`, and records the check; concurrent runs skip
/// each other's rows. Jobs their owners ended are among them: their runs get closed.
pub async fn take_stale_open<C: GenericClient>(
    client: &C,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    // A closed run means the functions ended the job: an owner who sets it open again reopens nothing. A run with
    // a stored result but not closed (completed by the release before V11's functions) is taken to be closed.
    let filter = "run.closed_at IS NULL AND run.created_at < now() - make_interval(secs => $1)";
    take(client, filter, "run.created_at", older_than, limit).await
}

/// Gives jobs a pass took but did not examine their check back: their `checked_at` is set `older_than` (and a
/// second) back, so the next pass takes them again, and the check is not counted.
pub async fn give_back<C: GenericClient>(
    client: &C,
    ids: &[Uuid],
    older_than: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let secs = older_than.as_secs_f64() + 1.0;
    client
        .execute_typed(
            "UPDATE public.job_reconcile_checks
                SET checked_at = now() - make_interval(secs => $2), checks = greatest(checks - 1, 0)
              WHERE job_id = ANY($1)",
            &[(&ids, Type::UUID_ARRAY), (&secs, Type::FLOAT8)],
        )
        .await
}

/// Takes up to `limit` completed jobs whose run closed within the last day (and more than `settle` ago) with a
/// post-processing step of their run not recorded, not checked within `settle`, and records the check: the re-run
/// skips recorded steps, and a job whose step cannot be recorded waits its turn behind the others.
pub async fn take_post_processing_backlog<C: GenericClient>(
    client: &C,
    settle: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    // `run.result_key` is written only by the completing transaction, so it alone says the job was completed: not
    // the status, which its owner can rewrite. The window goes by the run's close (the owner can rewrite
    // `completed_at`). `post_steps <> '{}'` with the result key is V18's index's predicate, which the planner uses
    // only when the query names it.
    let filter = "run.result_key IS NOT NULL AND run.post_steps <> '{}'
                AND run.closed_at > now() - interval '1 day'
                AND run.closed_at < now() - make_interval(secs => $1)
                AND EXISTS (SELECT 1 FROM unnest(run.post_steps) AS s(step)
                             WHERE NOT EXISTS (SELECT 1 FROM public.job_postprocessing p
                                                WHERE p.job_id = j.id AND p.step = s.step))";
    take(client, filter, "run.closed_at", settle, limit).await
}

/// A run whose job was deleted while it was open (V11's `job_run_orphans`), with its provider's hosts.
pub struct Orphan {
    pub job_id: Uuid,
    pub provider_name: String,
    pub cancel_url: Option<String>,
    /// The run's request id (V17; none for orphans kept before it): its cancel URL must name it.
    pub request_id: Option<String>,
    pub provider_hosts: Vec<String>,
    /// When the run was written (the reconcile deadline counts from it).
    pub created_at: DateTime<Utc>,
}

impl Orphan {
    /// Its cancel URL, only on the provider's own hosts and, when its request id is recorded, naming that request
    /// ([`crate::db::runs::JobRun::provider_url`]'s rule).
    pub fn checked_cancel_url(&self) -> Option<crate::fal::ProviderUrl> {
        let url = self.cancel_url.as_deref()?;
        crate::fal::ProviderUrl::of_request(url, &self.provider_hosts, self.request_id.as_deref())
    }
}

/// Up to `limit` orphaned runs written more than `older_than` ago and not tried within `older_than`: those never
/// tried first (oldest orphan first), then the least recently tried (V13). The caller asks the provider to cancel
/// each, then [`drop_orphan`]s it, or [`orphan_cancel_failed`] when the provider could not be reached: a pass
/// stopped half way leaves the rest for the next one (two concurrent passes may both ask; a cancel is idempotent).
pub async fn stale_orphans<C: GenericClient>(
    client: &C,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Orphan>, tokio_postgres::Error> {
    let secs = older_than.as_secs_f64();
    let rows = client
        .query_typed(
            "SELECT o.job_id, o.provider_name, o.cancel_url, p.base_url, p.sync_base_url, o.created_at,
                    o.request_id
               FROM public.job_run_orphans o LEFT JOIN public.api_providers p ON p.id = o.provider_id
              WHERE o.created_at < now() - make_interval(secs => $1)
                AND (o.cancel_tried_at IS NULL OR o.cancel_tried_at < now() - make_interval(secs => $1))
              ORDER BY o.cancel_tried_at NULLS FIRST, o.orphaned_at
              LIMIT $2",
            &[(&secs, Type::FLOAT8), (&limit, Type::INT8)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Orphan {
            job_id: r.get(0),
            provider_name: r.get(1),
            cancel_url: r.get(2),
            provider_hosts: [r.get::<_, Option<String>>(3), r.get(4)]
                .into_iter()
                .flatten()
                .collect(),
            created_at: r.get(5),
            request_id: r.get(6),
        })
        .collect())
}

/// Keeps a closed run whose request the provider could not be asked to cancel (the API's cancel, a pass closing a
/// job its owner ended) with the orphans: it counts against its owner while the provider may still run it, and a
/// later pass asks again (after `older_than`, since it was tried now) until the reconcile deadline. A hold
/// ([`hold_in_flight`]) gets the cancel URL.
pub async fn keep_for_cancel<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "INSERT INTO public.job_run_orphans (job_id, user_id, provider_id, provider_name, cancel_url, request_id,
                                                 created_at, cancel_tried_at)
             SELECT job_id, user_id, provider_id, provider_name, cancel_url, request_id, created_at, now()
               FROM public.job_runs
              WHERE job_id = $1 AND cancel_url IS NOT NULL AND result_key IS NULL
             ON CONFLICT (job_id) DO UPDATE SET cancel_url = EXCLUDED.cancel_url, request_id = EXCLUDED.request_id,
                                                cancel_tried_at = EXCLUDED.cancel_tried_at
              WHERE public.job_run_orphans.cancel_url IS NULL",
            &[(&job_id, Type::UUID)],
        )
        .await?;
    Ok(())
}

/// Holds the open run of a job about to be cancelled whose submission may still be in flight (no provider request
/// recorded, written within `in_flight`): kept with the orphans, without a cancel URL, it counts against its owner
/// until the submission ends and [`release_hold`]s it, or [`keep_for_cancel`] gives it the provider's cancel URL,
/// or (the submitting function stopped) a reconciler pass drops it. True when held.
pub async fn hold_in_flight<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    in_flight: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "INSERT INTO public.job_run_orphans (job_id, user_id, provider_id, provider_name, cancel_url, created_at)
             SELECT job_id, user_id, provider_id, provider_name, NULL, created_at
               FROM public.job_runs
              WHERE job_id = $1 AND closed_at IS NULL AND request_id IS NULL AND result_key IS NULL
                AND created_at > now() - make_interval(secs => $2)
             ON CONFLICT (job_id) DO NOTHING
             RETURNING job_id",
            &[(&job_id, Type::UUID), (&in_flight.as_secs_f64(), Type::FLOAT8)],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Drops the job's hold ([`hold_in_flight`]): its submission ended, or its request's cancel is settled.
pub async fn release_hold<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "DELETE FROM public.job_run_orphans WHERE job_id = $1 AND cancel_url IS NULL",
            &[(&job_id, Type::UUID)],
        )
        .await?;
    Ok(())
}

/// The provider could not be asked to cancel the orphaned run: it stays, and goes behind the others.
pub async fn orphan_cancel_failed<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "UPDATE public.job_run_orphans SET cancel_tried_at = now() WHERE job_id = $1",
            &[(&job_id, Type::UUID)],
        )
        .await?;
    Ok(())
}

/// The orphaned run no longer counts against its owner, unless its cancel URL changed since it was read (`cancel_url`,
/// as read): a submission that recorded the provider's answer meanwhile leaves it for the next pass to cancel.
pub async fn drop_orphan<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    cancel_url: Option<&str>,
) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "DELETE FROM public.job_run_orphans WHERE job_id = $1 AND cancel_url IS NOT DISTINCT FROM $2
             RETURNING job_id",
            &[(&job_id, Type::UUID), (&cancel_url, Type::TEXT)],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Up to `$2` jobs with a run matching `filter`, not checked within `$1` seconds (`age`), least recently checked
/// (else by `since`) first, locked past concurrent passes; their check recorded, their ids returned.
async fn take<C: GenericClient>(
    client: &C,
    filter: &str,
    since: &str,
    age: Duration,
    limit: i64,
) -> Result<Vec<Uuid>, tokio_postgres::Error> {
    let sql = format!(
        "WITH candidates AS (
             SELECT j.id
               FROM public.jobs j
               JOIN public.job_runs run ON run.job_id = j.id
               LEFT JOIN public.job_reconcile_checks r ON r.job_id = j.id
              WHERE {filter}
                AND (r.checked_at IS NULL OR r.checked_at < now() - make_interval(secs => $1))
              ORDER BY coalesce(r.checked_at, {since})
              LIMIT $2
              FOR UPDATE OF j SKIP LOCKED)
         INSERT INTO public.job_reconcile_checks (job_id)
         SELECT id FROM candidates
         ON CONFLICT (job_id) DO UPDATE
            SET checked_at = now(), checks = public.job_reconcile_checks.checks + 1
         RETURNING job_id"
    );
    let secs = age.as_secs_f64();
    let rows = client
        .query_typed(&sql, &[(&secs, Type::FLOAT8), (&limit, Type::INT8)])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
