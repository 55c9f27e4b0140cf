-- Server-owned job state. What the functions act on (the provider request and its URLs, how the webhook of the
-- job authenticates, the stored result's keys, the post-processing targets) lives here, where only the functions
-- write (V6 closes the table to the client roles). `jobs.metadata` keeps copies for the original's clients, but
-- clients may update their own jobs rows, so nothing is read back from it to act on.

CREATE TABLE IF NOT EXISTS public.job_runs (
  job_id uuid PRIMARY KEY REFERENCES public.jobs(id) ON DELETE CASCADE,
  user_id uuid NOT NULL,
  provider_id uuid REFERENCES public.api_providers(id) ON DELETE SET NULL,
  provider_name text NOT NULL,
  -- The model actually run (the override when one was given).
  model_key text NOT NULL,
  -- How the job's webhook deliveries authenticate: 'token' (per-job HMAC in the URL), 'secret' (the global
  -- secret of URLs handed to fal before per-job tokens), 'none' (sync run: no webhook).
  webhook_auth text NOT NULL CHECK (webhook_auth IN ('token', 'secret', 'none')),
  request_id text,
  gateway_request_id text,
  status_url text,
  response_url text,
  cancel_url text,
  -- The reference image in our storage (the video thumbnail's source).
  reference_bucket text,
  reference_key text,
  -- Post-processing targets, checked against the caller at submission.
  destination text,
  character_id uuid,
  scene_id uuid,
  storyboard_clip_id uuid,
  -- The post-processing steps the job asks for, decided once at submission (`postprocess::steps_for`).
  post_steps text[] NOT NULL DEFAULT '{}',
  -- The stored result, written in the completing transaction.
  result_key text,
  thumbnail_key text,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT job_runs_reference_complete CHECK ((reference_bucket IS NULL) = (reference_key IS NULL))
);

-- The webhook finds a job by the provider's request id here, not in client-writable metadata.
CREATE UNIQUE INDEX IF NOT EXISTS job_runs_request_id_key
  ON public.job_runs (provider_name, request_id)
  WHERE request_id IS NOT NULL;

-- The unique index on the metadata copy would let a client block another job's request id: plain index only.
DROP INDEX IF EXISTS public.jobs_fal_request_id_key;
CREATE INDEX IF NOT EXISTS jobs_fal_request_id_idx
  ON public.jobs ((metadata->>'fal_request_id'))
  WHERE metadata->>'fal_request_id' IS NOT NULL;

-- The open jobs of an existing deployment, brought over once from their metadata as it stands when this runs
-- (README: what this trusts). Their webhook URLs carry the global secret, so they keep authenticating with it.
INSERT INTO public.job_runs (job_id, user_id, provider_id, provider_name, model_key, webhook_auth, request_id,
                             gateway_request_id, status_url, response_url, cancel_url, reference_bucket,
                             reference_key, destination, character_id, scene_id, storyboard_clip_id,
                             post_steps)
SELECT j.id,
       j.user_id,
       m.provider_id,
       coalesce(p.name, 'fal'),
       coalesce(nullif(j.metadata->>'model_key', ''), m.model_key, 'unknown'),
       CASE WHEN j.metadata->>'fal_request_id' IS NOT NULL OR j.status = 'queued' THEN 'secret' ELSE 'none' END,
       nullif(j.metadata->>'fal_request_id', ''),
       nullif(j.metadata->>'fal_gateway_request_id', ''),
       nullif(j.metadata->>'fal_status_url', ''),
       nullif(j.metadata->>'fal_response_url', ''),
       nullif(j.metadata->>'fal_cancel_url', ''),
       CASE WHEN j.metadata->'reference_image_storage'->>'key' IS NOT NULL
            THEN j.metadata->'reference_image_storage'->>'bucket' END,
       CASE WHEN j.metadata->'reference_image_storage'->>'bucket' IS NOT NULL
            THEN j.metadata->'reference_image_storage'->>'key' END,
       nullif(j.metadata->>'destination', ''),
       t.character_id,
       t.scene_id,
       t.clip_id,
       -- postprocess::steps_for, once, for the jobs brought over here.
       array_remove(ARRAY[
         CASE WHEN j.metadata->>'destination' = 'character_portrait' AND t.character_id IS NOT NULL
              THEN 'character_portrait' END,
         CASE WHEN j.metadata->>'destination' IN ('character_scene', 'roleplay_scene') AND t.scene_id IS NOT NULL
              THEN 'scene_image' END,
         CASE WHEN t.clip_id IS NOT NULL THEN 'storyboard_clip' END], NULL)
  FROM public.jobs j
  LEFT JOIN public.api_models m ON m.id = j.api_model_id
  LEFT JOIN public.api_providers p ON p.id = m.provider_id
  CROSS JOIN LATERAL (
    SELECT CASE WHEN j.metadata->>'character_id' ~* uuid_re THEN (j.metadata->>'character_id')::uuid END
             AS character_id,
           CASE WHEN j.metadata->>'scene_id' ~* uuid_re THEN (j.metadata->>'scene_id')::uuid END AS scene_id,
           CASE WHEN j.metadata->>'storyboard_clip_id' ~* uuid_re THEN (j.metadata->>'storyboard_clip_id')::uuid END
             AS clip_id
      FROM (SELECT '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'::text AS uuid_re) re
  ) t
 WHERE j.status IN ('queued', 'processing')
ON CONFLICT DO NOTHING;
