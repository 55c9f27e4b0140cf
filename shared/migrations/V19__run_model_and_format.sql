-- The model and the format a job was submitted with, kept in its run. The completion read them from `jobs`
-- (`api_model_id`, `format`), which the job's owner may update: a usage row written at completion (an early
-- delivery, or a failed record of the submission) took its model and request type from there, and a result named
-- only as `output.url` took its media type from there. The run now keeps the submission's own, and the functions
-- read them from it; `jobs` keeps its columns for the original's clients.
ALTER TABLE public.job_runs ADD COLUMN IF NOT EXISTS api_model_id uuid;
ALTER TABLE public.job_runs ADD COLUMN IF NOT EXISTS format text;

-- The open runs of this deployment, filled once from their jobs as they stand when this runs (README: what the
-- migrations trust). Closed runs are never completed again, so they are left as they are.
UPDATE public.job_runs r
   SET api_model_id = j.api_model_id, format = j.format
  FROM public.jobs j
 WHERE j.id = r.job_id AND r.closed_at IS NULL;

-- V11's insert_job, writing the model and the format into the run as well (restated whole, same signature, so
-- that instances of the previous release calling it during a deploy write them too).
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
                               storyboard_clip_id, post_steps, api_model_id, format)
  VALUES (v_id, p_user_id, p_provider_id, p_provider_name, p_model_key, p_webhook_auth,
          p_reference_bucket, p_reference_key, p_destination, p_character_id, p_scene_id,
          p_storyboard_clip_id, p_post_steps, p_api_model_id, p_format);
  RETURN v_id;
END
$$;
