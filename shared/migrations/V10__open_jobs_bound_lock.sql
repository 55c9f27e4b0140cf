-- The open-jobs bound (MAX_OPEN_JOBS_PER_USER) under concurrent submissions: V9's insert_job counts the user's
-- open jobs and inserts under READ COMMITTED, so a burst of parallel submissions from a user below the bound all
-- counted the same jobs and all passed. The same function, with a transaction-scoped lock per user taken before
-- the count (each call is one statement, so the lock lasts until that statement's commit, with or without a
-- transaction-mode pooler). The function is restated whole, as V9 wrote it but for the lock: V9 itself cannot
-- change (refinery checks the migrations it applied).

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
  -- One submission of a user at a time from the count to the commit: without it, concurrent submissions each
  -- count the same open jobs under READ COMMITTED and all pass. Other users are not held up (a hash collision
  -- only serialises two users' submissions).
  PERFORM pg_advisory_xact_lock(hashtextextended('public.insert_job:' || p_user_id::text, 0));
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
