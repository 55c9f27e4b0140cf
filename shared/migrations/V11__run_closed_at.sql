-- When the functions ended a job's run, written by the functions only. The open-jobs bound counted
-- `jobs.status`, which owners may rewrite through RLS: setting their open jobs `cancelled` let them submit past
-- MAX_OPEN_JOBS_PER_USER while the provider kept running every request, and setting them back to `queued` had
-- the reconciler complete them. A run is closed by the transition that ends its job, or once the functions see
-- its job ended by its owner and the provider done with it (a delivery, or a reconciler pass that cancels it at
-- the provider). A closed run's job is never completed, whatever its status says.

ALTER TABLE public.job_runs ADD COLUMN IF NOT EXISTS closed_at timestamptz;

-- Runs whose job has ended (or whose result is stored) as this runs: closed when the job says it ended, so the
-- post-processing backlog keeps its one-day window.
UPDATE public.job_runs r
   SET closed_at = least(coalesce(j.completed_at, now()), now())
  FROM public.jobs j
 WHERE j.id = r.job_id
   AND r.closed_at IS NULL
   AND (r.result_key IS NOT NULL OR j.status NOT IN ('queued', 'processing'));

-- Runs V5 brought over from an existing deployment that the port has nothing to act on, closed so that no
-- reconciler pass fails their jobs: jobs of the original's other pipelines (replicate-webhook, job-callback:
-- no fal model and no fal request), and jobs the original left open although their result is stored (its stuck
-- `processing` portraits, which have their asset). The port's own runs are never among them: a queued or
-- fallback run authenticates with a per-job token, and a sync run has a fal model and no asset before its result
-- key (both are written in one transaction).
UPDATE public.job_runs r
   SET closed_at = now()
  FROM public.jobs j
 WHERE j.id = r.job_id
   AND r.closed_at IS NULL
   AND r.result_key IS NULL
   AND r.webhook_auth <> 'token'
   AND ((r.request_id IS NULL
         AND NOT EXISTS (SELECT 1
                           FROM public.api_models m
                           JOIN public.api_providers p ON p.id = m.provider_id
                          WHERE m.id = j.api_model_id AND p.name = 'fal'))
        OR EXISTS (SELECT 1 FROM public.workspace_assets a WHERE a.job_id = j.id));

-- The bound's count reads only this index: as many entries as the user has open runs.
CREATE INDEX IF NOT EXISTS job_runs_open_by_user ON public.job_runs (user_id) WHERE closed_at IS NULL;

-- A job deleted while its run is open: owners may delete their jobs through RLS, and the run goes with the job
-- (ON DELETE CASCADE), but the provider may still be running its request. Its run is kept here, counting against
-- the owner's open jobs, until a reconciler pass asks the provider to cancel it. Only the functions read it.
CREATE TABLE IF NOT EXISTS public.job_run_orphans (
  job_id uuid PRIMARY KEY,
  user_id uuid NOT NULL,
  provider_id uuid,
  provider_name text NOT NULL,
  cancel_url text,
  created_at timestamptz NOT NULL,
  orphaned_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS job_run_orphans_by_user ON public.job_run_orphans (user_id);
ALTER TABLE public.job_run_orphans ENABLE ROW LEVEL SECURITY;

-- Runs as its owner, whoever deletes the job: the client roles may not write the table.
CREATE OR REPLACE FUNCTION public.keep_orphaned_run() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
  INSERT INTO public.job_run_orphans (job_id, user_id, provider_id, provider_name, cancel_url, created_at)
  VALUES (OLD.job_id, OLD.user_id, OLD.provider_id, OLD.provider_name, OLD.cancel_url, OLD.created_at)
  ON CONFLICT (job_id) DO NOTHING;
  RETURN OLD;
END
$$;
DROP TRIGGER IF EXISTS keep_orphaned_run ON public.job_runs;
CREATE TRIGGER keep_orphaned_run AFTER DELETE ON public.job_runs
  FOR EACH ROW WHEN (OLD.closed_at IS NULL AND OLD.result_key IS NULL)
  EXECUTE FUNCTION public.keep_orphaned_run();

DO $$
DECLARE
  r text;
BEGIN
  REVOKE ALL ON FUNCTION public.keep_orphaned_run() FROM PUBLIC;
  -- Only Supabase (or the local stack playing it) has the client roles (V6).
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
    CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    EXECUTE format('REVOKE ALL ON TABLE public.job_run_orphans FROM %I', r);
    EXECUTE format('REVOKE ALL ON FUNCTION public.keep_orphaned_run() FROM %I', r);
  END LOOP;
END
$$;

-- V10's insert_job, counting open runs (and those of deleted jobs) instead of open statuses (restated whole: V10
-- cannot change).
CREATE OR REPLACE FUNCTION public.insert_job(
  p_user_id uuid, p_job_type text, p_original_prompt text, p_status text, p_quality text, p_api_model_id uuid,
  p_format text, p_metadata jsonb, p_max_open bigint,
  p_provider_id uuid, p_provider_name text, p_model_key text, p_webhook_auth text,
  p_reference_bucket text, p_reference_key text, p_destination text,
  p_character_id uuid, p_scene_id uuid, p_storyboard_clip_id uuid, p_post_steps text[])
RETURNS uuid
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  v_id uuid;
BEGIN
  -- One submission of a user at a time from the count to the commit (V10).
  PERFORM pg_advisory_xact_lock(hashtextextended('public.insert_job:' || p_user_id::text, 0));
  IF (SELECT count(*) FROM (
        (SELECT 1 FROM public.job_runs WHERE user_id = p_user_id AND closed_at IS NULL
         UNION ALL
         SELECT 1 FROM public.job_run_orphans WHERE user_id = p_user_id)
        LIMIT p_max_open) o) >= p_max_open THEN
    RETURN NULL;
  END IF;
  INSERT INTO public.jobs (user_id, job_type, original_prompt, status, started_at, quality, api_model_id,
                           model_type, format, metadata)
  VALUES (p_user_id, p_job_type, p_original_prompt, p_status, now(), p_quality, p_api_model_id,
          'sdxl', p_format, p_metadata)
  RETURNING id INTO v_id;
  INSERT INTO public.job_runs (job_id, user_id, provider_id, provider_name, model_key, webhook_auth,
                               reference_bucket, reference_key, destination, character_id, scene_id,
                               storyboard_clip_id, post_steps)
  VALUES (v_id, p_user_id, p_provider_id, p_provider_name, p_model_key, p_webhook_auth,
          p_reference_bucket, p_reference_key, p_destination, p_character_id, p_scene_id,
          p_storyboard_clip_id, p_post_steps);
  RETURN v_id;
END
$$;

-- V9's record_queued_request, writing the job before its run: the completing transaction locks them in that
-- order (the job's transition, then the run's result), and the opposite order could deadlock with an early
-- webhook. Restated whole: V9 cannot change.
CREATE OR REPLACE FUNCTION public.record_queued_request(
  p_job_id uuid, p_provider_id uuid, p_model_id uuid, p_user_id uuid, p_request_type text, p_endpoint_path text,
  p_request_payload jsonb, p_cost_usd float8, p_response_status integer, p_response_time_ms integer,
  p_response_payload jsonb, p_error_message text, p_provider_metadata jsonb,
  p_request_id text, p_gateway_request_id text, p_status_url text, p_response_url text, p_cancel_url text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
  UPDATE public.jobs
     SET metadata = coalesce(metadata, '{}'::jsonb) || jsonb_build_object(
         'fal_request_id', p_request_id, 'fal_gateway_request_id', p_gateway_request_id,
         'fal_status_url', p_status_url, 'fal_response_url', p_response_url, 'fal_cancel_url', p_cancel_url)
   WHERE id = p_job_id;
  UPDATE public.job_runs
     SET request_id = p_request_id, gateway_request_id = p_gateway_request_id, status_url = p_status_url,
         response_url = p_response_url, cancel_url = p_cancel_url
   WHERE job_id = p_job_id;
  IF NOT FOUND THEN
    -- Its owner deleted the job before the provider's answer was recorded: the orphaned run gets the cancel URL,
    -- so that the reconciler can stop the request.
    UPDATE public.job_run_orphans SET cancel_url = p_cancel_url WHERE job_id = p_job_id;
  END IF;
  INSERT INTO public.api_usage_logs (job_id, provider_id, model_id, user_id, request_type, endpoint_path,
                                     request_payload, cost_usd, response_status, response_time_ms,
                                     response_payload, error_message, provider_metadata)
  VALUES (p_job_id, p_provider_id, p_model_id, p_user_id, p_request_type, p_endpoint_path,
          p_request_payload, p_cost_usd::numeric(10,6), p_response_status, p_response_time_ms,
          p_response_payload, p_error_message, p_provider_metadata)
  ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING;
  RETURN FOUND;
END
$$;
