//! `job_completion_claims`: who may complete a job right now. A claim is a lease: its holder renews it while it
//! works, and a holder that died stops renewing, so the next delivery takes the job over after the lease ends.

use std::time::Duration;

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// Takes the job's claim if it is free or its lease has run out: `Some(attempts)` when `holder` now holds it,
/// `attempts` counting the holders the job's claim has had, this one included (more than 1: a holder before us may
/// have stored a result it never committed).
pub async fn try_claim<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    holder: Uuid,
    lease: Duration,
) -> Result<Option<i32>, tokio_postgres::Error> {
    let sql = "INSERT INTO public.job_completion_claims (job_id, holder, lease_expires_at)
               VALUES ($1, $2, now() + make_interval(secs => $3))
               ON CONFLICT (job_id) DO UPDATE
                  SET holder = EXCLUDED.holder,
                      claimed_at = now(),
                      lease_expires_at = EXCLUDED.lease_expires_at,
                      attempts = public.job_completion_claims.attempts + 1
                WHERE public.job_completion_claims.lease_expires_at < now()
               RETURNING attempts";
    let rows = client
        .query_typed(sql, &lease_params(&job_id, &holder, &lease.as_secs_f64()))
        .await?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Extends the lease; false when the claim was lost (expired and taken by another holder), or ended by
/// [`expire`] (a renewal already under way when its holder failed must not give the claim back to it).
pub async fn renew<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    holder: Uuid,
    lease: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let sql = "UPDATE public.job_completion_claims
                  SET lease_expires_at = now() + make_interval(secs => $3)
                WHERE job_id = $1 AND holder = $2 AND lease_expires_at > '-infinity'
               RETURNING job_id";
    let rows = client
        .query_typed(sql, &lease_params(&job_id, &holder, &lease.as_secs_f64()))
        .await?;
    Ok(!rows.is_empty())
}

/// The parameters `($1 job, $2 holder, $3 lease seconds)` of a claim statement.
fn lease_params<'a>(
    job_id: &'a Uuid,
    holder: &'a Uuid,
    secs: &'a f64,
) -> [(&'a (dyn tokio_postgres::types::ToSql + Sync), Type); 3] {
    [
        (job_id, Type::UUID),
        (holder, Type::UUID),
        (secs, Type::FLOAT8),
    ]
}

/// Ends `holder`'s lease at once, after a failure, so that the next delivery takes the job over without waiting
/// for it. The row stays, so that holder counts as one before the next ([`try_claim`]'s attempts).
pub async fn expire<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    holder: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "UPDATE public.job_completion_claims SET lease_expires_at = '-infinity'
              WHERE job_id = $1 AND holder = $2",
            &[(&job_id, Type::UUID), (&holder, Type::UUID)],
        )
        .await?;
    Ok(())
}

/// Deletes the claim, and with it the count of the job's holders: only as the job ends (in the transaction that
/// completes or fails it, or once it has ended). False
/// when `holder` no longer held it (its lease ran out and another holder took the job over).
pub async fn release<C: GenericClient>(
    client: &C,
    job_id: Uuid,
    holder: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let released = client
        .query_typed(
            "DELETE FROM public.job_completion_claims WHERE job_id = $1 AND holder = $2 RETURNING job_id",
            &[(&job_id, Type::UUID), (&holder, Type::UUID)],
        )
        .await?;
    Ok(!released.is_empty())
}

/// A job's claim: who holds it, and whether its lease still runs (with a margin for what the holder is about to do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub holder: Uuid,
    pub live: bool,
}

/// The job's claim, if any (a lease that ran out still names its holder until taken over).
pub async fn current<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<Option<Claim>, tokio_postgres::Error> {
    let row = client
        .query_typed_opt(
            "SELECT holder, lease_expires_at > now() + interval '5 seconds'
               FROM public.job_completion_claims WHERE job_id = $1",
            &[(&job_id, Type::UUID)],
        )
        .await?;
    Ok(row.map(|r| Claim {
        holder: r.get(0),
        live: r.get(1),
    }))
}

/// Drops any claim on a job that just became terminal (cancelled or failed): a holder that lost its database
/// connection could not release it, and nobody will complete the job any more.
pub async fn clear<C: GenericClient>(
    client: &C,
    job_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "DELETE FROM public.job_completion_claims WHERE job_id = $1",
            &[(&job_id, Type::UUID)],
        )
        .await?;
    Ok(())
}
