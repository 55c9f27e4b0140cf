-- The original deployment's tables, as far as the functions and their clients use them
-- (spec: original-schema.sql). Every statement is a no-op where the object already exists,
-- so this applies both to an empty database and to the original one.

CREATE SCHEMA IF NOT EXISTS auth;
CREATE TABLE IF NOT EXISTS auth.users (id uuid PRIMARY KEY);
CREATE TABLE IF NOT EXISTS public.profiles (id uuid PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE);

CREATE TABLE IF NOT EXISTS public.api_providers (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL UNIQUE,
  display_name text NOT NULL,
  base_url text,
  auth_scheme text NOT NULL DEFAULT 'bearer',
  auth_header_name text DEFAULT 'Authorization',
  secret_name text,
  rate_limits jsonb NOT NULL DEFAULT '{}',
  is_active boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.api_models (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  provider_id uuid NOT NULL REFERENCES public.api_providers(id) ON DELETE CASCADE,
  model_key text NOT NULL UNIQUE,
  display_name text NOT NULL,
  modality text NOT NULL CHECK (modality IN ('image', 'video', 'chat')),
  tasks text[] NOT NULL CHECK (cardinality(tasks) > 0),
  default_for_tasks text[] NOT NULL DEFAULT '{}',
  endpoint_path text,
  input_defaults jsonb NOT NULL DEFAULT '{}',
  capabilities jsonb NOT NULL DEFAULT '{}',
  pricing jsonb,
  is_active boolean NOT NULL DEFAULT true,
  is_default boolean DEFAULT false,
  priority integer NOT NULL DEFAULT 0,
  version text,
  model_family text,
  output_format text,
  cost_per_use numeric,
  avg_generation_time integer,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.jobs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES public.profiles(id) ON DELETE CASCADE,
  job_type text NOT NULL CHECK (job_type IN ('image_fast', 'image_high', 'video_fast', 'video_high',
    'sdxl_image_fast', 'sdxl_image_high', 'image7b_fast_enhanced', 'image7b_high_enhanced',
    'video7b_fast_enhanced', 'video7b_high_enhanced', 'wan_video_fast', 'wan_video_high', 'rv51_fast', 'rv51_high')),
  status text DEFAULT 'queued' CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')),
  error_message text,
  metadata jsonb,
  created_at timestamptz DEFAULT now(),
  started_at timestamptz,
  completed_at timestamptz,
  format text CHECK (format IN ('image', 'video')),
  quality text CHECK (quality IN ('fast', 'high')),
  model_type text CHECK (model_type IN ('sdxl', 'wan', 'rv51', 'flux', 'replicate-sdxl', 'replicate-sdxl-i2i')),
  original_prompt text,
  enhanced_prompt text,
  template_name text,
  api_model_id uuid REFERENCES public.api_models(id),
  destination text DEFAULT 'library' CHECK (destination IN ('library', 'workspace')),
  image_id uuid,
  video_id uuid,
  attempts integer DEFAULT 0,
  max_attempts integer DEFAULT 3
);
CREATE INDEX IF NOT EXISTS idx_jobs_user_status_created ON public.jobs (user_id, status, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_jobs_status_created ON public.jobs (status, created_at)
  WHERE status IN ('queued', 'processing', 'failed');
CREATE INDEX IF NOT EXISTS idx_jobs_api_model ON public.jobs (api_model_id);

CREATE TABLE IF NOT EXISTS public.workspace_assets (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
  job_id uuid NOT NULL,
  asset_index integer NOT NULL DEFAULT 0,
  asset_type text NOT NULL CHECK (asset_type IN ('image', 'video')),
  temp_storage_path text NOT NULL,
  thumbnail_path text,
  file_size_bytes bigint NOT NULL,
  mime_type text NOT NULL,
  generation_seed bigint NOT NULL,
  original_prompt text NOT NULL,
  model_used text NOT NULL,
  generation_settings jsonb DEFAULT '{}',
  duration_seconds numeric(10,3),
  width integer,
  height integer,
  created_at timestamptz DEFAULT now(),
  expires_at timestamptz DEFAULT (now() + interval '7 days'),
  CONSTRAINT workspace_assets_job_id_asset_index_unique UNIQUE (job_id, asset_index),
  UNIQUE (user_id, job_id, asset_index)
);
CREATE INDEX IF NOT EXISTS idx_workspace_assets_job ON public.workspace_assets (job_id);
CREATE INDEX IF NOT EXISTS idx_workspace_assets_user_created ON public.workspace_assets (user_id, created_at DESC);

CREATE TABLE IF NOT EXISTS public.api_usage_logs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  provider_id uuid NOT NULL REFERENCES public.api_providers(id) ON DELETE CASCADE,
  model_id uuid REFERENCES public.api_models(id) ON DELETE SET NULL,
  user_id uuid REFERENCES public.profiles(id) ON DELETE SET NULL,
  request_type text NOT NULL CHECK (request_type IN ('chat', 'image', 'video')),
  endpoint_path text,
  request_payload jsonb,
  tokens_input integer,
  tokens_output integer,
  tokens_total integer,
  tokens_cached integer,
  cost_usd numeric(10,6),
  cost_credits numeric(10,6),
  response_status integer,
  response_time_ms integer NOT NULL,
  response_payload jsonb,
  error_message text,
  provider_metadata jsonb DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.characters (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid REFERENCES public.profiles(id) ON DELETE CASCADE,
  name text NOT NULL,
  image_url text,
  reference_image_url text,
  seed_locked integer,
  portrait_count integer DEFAULT 0,
  is_public boolean DEFAULT true,
  content_rating varchar(10) NOT NULL DEFAULT 'sfw' CHECK (content_rating IN ('sfw', 'nsfw')),
  updated_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.character_scenes (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  character_id uuid REFERENCES public.characters(id) ON DELETE CASCADE,
  conversation_id uuid,
  image_url text,
  scene_prompt text NOT NULL,
  generation_metadata jsonb DEFAULT '{}',
  job_id uuid REFERENCES public.jobs(id),
  created_at timestamptz DEFAULT now(),
  updated_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.user_library (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL,
  asset_type text NOT NULL,
  storage_path text NOT NULL,
  file_size_bytes bigint NOT NULL,
  mime_type text NOT NULL,
  original_prompt text NOT NULL,
  model_used text NOT NULL,
  generation_seed bigint,
  thumbnail_path text,
  width integer,
  height integer,
  tags text[],
  content_category text DEFAULT 'general',
  roleplay_metadata jsonb DEFAULT '{}',
  character_id uuid REFERENCES public.characters(id),
  output_type text,
  is_primary boolean NOT NULL DEFAULT false,
  is_pinned boolean NOT NULL DEFAULT false,
  sort_order integer NOT NULL DEFAULT 0,
  generation_metadata jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.storyboard_clips (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  status text,
  video_url text,
  duration_seconds numeric,
  thumbnail_url text,
  updated_at timestamptz DEFAULT now()
);
