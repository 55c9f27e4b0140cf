-- A queued submission writes twice on its critical path: the job with its run (after checking the caller's open
-- jobs against MAX_OPEN_JOBS_PER_USER), then, once the provider has queued it, the provider's request in the run
-- and the job's metadata together with the usage row. Sent as SQL, each of those statements (CTEs, a dozen to
-- twenty parameters) was parsed and planned again at every submission: the functions send unnamed statements, for
-- PgBouncer's transaction mode. As PL/pgSQL functions, their statements are planned once per server connection and
-- reused. Each call is one statement, so what it writes is still written together or not at all. Both run with
-- their caller's rights, and no client needs them.
--
-- V8's open_jobs_below stays: the previous release's functions call it until they are replaced.

-- The job and its run; the new job's id, or NULL (nothing written) when the user already has p_max_open open
-- jobs. The open statuses must stay those of V7's partial index, so that the count reads only that index
-- (shared/src/jobs.rs, OPEN_STATUSES_SQL; a migration test compares them).
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
  IF (SELECT count(*) FROM (
        SELECT 1 FROM public.jobs
         WHERE user_id = p_user_id AND status IN ('queued', 'processing')
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

-- The provider's request recorded in the job's run (what the functions act on) and copied into its metadata
-- (what the original's clients read), and the generation's usage row unless it has one; true when the usage row
-- was inserted.
CREATE OR REPLACE FUNCTION public.record_queued_request(
  p_job_id uuid, p_provider_id uuid, p_model_id uuid, p_user_id uuid, p_request_type text, p_endpoint_path text,
  p_request_payload jsonb, p_cost_usd float8, p_response_status integer, p_response_time_ms integer,
  p_response_payload jsonb, p_error_message text, p_provider_metadata jsonb,
  p_request_id text, p_gateway_request_id text, p_status_url text, p_response_url text, p_cancel_url text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
  UPDATE public.job_runs
     SET request_id = p_request_id, gateway_request_id = p_gateway_request_id, status_url = p_status_url,
         response_url = p_response_url, cancel_url = p_cancel_url
   WHERE job_id = p_job_id;
  UPDATE public.jobs
     SET metadata = coalesce(metadata, '{}'::jsonb) || jsonb_build_object(
         'fal_request_id', p_request_id, 'fal_gateway_request_id', p_gateway_request_id,
         'fal_status_url', p_status_url, 'fal_response_url', p_response_url, 'fal_cancel_url', p_cancel_url)
   WHERE id = p_job_id;
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

DO $$
DECLARE
  f text;
  r text;
BEGIN
  FOR f IN SELECT oid::regprocedure::text FROM pg_proc
            WHERE pronamespace = 'public'::regnamespace AND proname IN ('insert_job', 'record_queued_request')
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    -- Supabase grants every new function in public to its client roles; a plain Postgres has none of them.
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
      CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
      EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %I', f, r);
    END LOOP;
  END LOOP;
END
$$;
