-- When the lost-webhook reconciler last asked fal about a queued job, so concurrent runs share the work and
-- each job is asked about at most once per interval.
CREATE TABLE IF NOT EXISTS public.job_reconcile_checks (
  job_id uuid PRIMARY KEY REFERENCES public.jobs(id) ON DELETE CASCADE,
  checked_at timestamptz NOT NULL DEFAULT now(),
  checks integer NOT NULL DEFAULT 1
);
