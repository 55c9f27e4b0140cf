-- What the port adds. Only new indexes, tables and nullable columns: nothing clients read is dropped or renamed.

-- The webhook finds a job by fal's request id: an index instead of the original's scan, and unique so two jobs
-- can never claim the same fal request.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_fal_request_id_key
  ON public.jobs ((metadata->>'fal_request_id'))
  WHERE metadata->>'fal_request_id' IS NOT NULL;

-- The reconciler looks for queued async jobs by age.
CREATE INDEX IF NOT EXISTS jobs_queued_started_idx
  ON public.jobs (started_at)
  WHERE status = 'queued';

-- fal's sync host (https://fal.run) beside the queue host in base_url (https://queue.fal.run): both come from
-- the table, so no code rewrites hosts.
ALTER TABLE public.api_providers ADD COLUMN IF NOT EXISTS sync_base_url text;

-- One usage-log row per generation: the job it belongs to, unique for the rows the port writes.
ALTER TABLE public.api_usage_logs ADD COLUMN IF NOT EXISTS job_id uuid;
CREATE UNIQUE INDEX IF NOT EXISTS api_usage_logs_job_id_key
  ON public.api_usage_logs (job_id)
  WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS api_usage_logs_request_id_idx
  ON public.api_usage_logs ((provider_metadata->>'request_id'));

-- Exactly-once completion: whoever holds a job's claim (webhook delivery, sync run or reconciler) is the only
-- one completing it; the lease makes a claim of a crashed holder expire instead of blocking forever.
CREATE TABLE IF NOT EXISTS public.job_completion_claims (
  job_id uuid PRIMARY KEY REFERENCES public.jobs(id) ON DELETE CASCADE,
  holder uuid NOT NULL,
  claimed_at timestamptz NOT NULL DEFAULT now(),
  lease_expires_at timestamptz NOT NULL,
  attempts integer NOT NULL DEFAULT 1
);

-- Post-processing steps that finished, so a re-run skips them (idempotent effects, recorded completion).
CREATE TABLE IF NOT EXISTS public.job_postprocessing (
  job_id uuid NOT NULL REFERENCES public.jobs(id) ON DELETE CASCADE,
  step text NOT NULL,
  completed_at timestamptz NOT NULL DEFAULT now(),
  detail jsonb NOT NULL DEFAULT '{}',
  PRIMARY KEY (job_id, step)
);
