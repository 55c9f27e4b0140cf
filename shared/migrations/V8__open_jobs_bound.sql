-- Every submission checks the caller's open jobs against MAX_OPEN_JOBS_PER_USER in the INSERT of its job. Written
-- as a subquery of that INSERT, the count was parsed and planned again at every submission (the functions send
-- unnamed statements, for PgBouncer's transaction mode), which cost more than the count itself. In a PL/pgSQL
-- function its plan is made once per server connection and reused. STABLE: it reads with the INSERT's own
-- snapshot, so the bound means what it meant. It reads jobs with its caller's rights, and no client needs it.
CREATE OR REPLACE FUNCTION public.open_jobs_below(p_user_id uuid, p_max bigint)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
  RETURN (
    SELECT count(*) FROM (
      SELECT 1 FROM public.jobs
       WHERE user_id = p_user_id AND status IN ('queued', 'processing')
       LIMIT p_max) o
  ) < p_max;
END
$$;

REVOKE ALL ON FUNCTION public.open_jobs_below(uuid, bigint) FROM PUBLIC;

DO $$
DECLARE
  r text;
BEGIN
  -- Supabase grants every new function in public to its client roles; a plain Postgres has none of them.
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
    CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    EXECUTE format('REVOKE ALL ON FUNCTION public.open_jobs_below(uuid, bigint) FROM %I', r);
  END LOOP;
END
$$;
