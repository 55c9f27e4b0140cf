-- The original's Row Level Security on its tables (spec: original-system.md §1), on top of the migrations.
-- Safe to run again: each policy is dropped before it is made. Where the spec gives a policy's name, it is the
-- original's; the others are named for what they allow. Policies without TO apply to every role (an anon
-- client has no auth.uid(), so owner checks refuse it).
-- Alike in shape on purpose: each policy is its own DROP + CREATE, as in the original, so it can be read alone.

-- jobs: one policy for everything, no separate WITH CHECK: a user reads and updates (the client's cancel) their
-- own jobs, and may insert rows for themselves.
ALTER TABLE public.jobs ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Jobs access policy" ON public.jobs;
CREATE POLICY "Jobs access policy" ON public.jobs
  FOR ALL USING (public.has_role(auth.uid(), 'admin') OR auth.uid() = user_id);

-- workspace_assets: anything on one's own rows.
ALTER TABLE public.workspace_assets ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "workspace_policy" ON public.workspace_assets;
CREATE POLICY "workspace_policy" ON public.workspace_assets
  FOR ALL USING (auth.uid() = user_id);

-- api_providers, api_models: signed-in users read the active rows; admins everything.
ALTER TABLE public.api_providers ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Authenticated users read active providers" ON public.api_providers;
CREATE POLICY "Authenticated users read active providers" ON public.api_providers
  FOR SELECT TO authenticated USING (is_active);
DROP POLICY IF EXISTS "Admins manage providers" ON public.api_providers;
CREATE POLICY "Admins manage providers" ON public.api_providers
  FOR ALL USING (public.has_role(auth.uid(), 'admin'));

ALTER TABLE public.api_models ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Authenticated users read active models" ON public.api_models;
CREATE POLICY "Authenticated users read active models" ON public.api_models
  FOR SELECT TO authenticated USING (is_active);
DROP POLICY IF EXISTS "Admins manage models" ON public.api_models;
CREATE POLICY "Admins manage models" ON public.api_models
  FOR ALL USING (public.has_role(auth.uid(), 'admin'));

-- api_usage_logs: users read their own rows, admins all; only the service role inserts.
ALTER TABLE public.api_usage_logs ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Users read own usage logs" ON public.api_usage_logs;
CREATE POLICY "Users read own usage logs" ON public.api_usage_logs
  FOR SELECT USING (auth.uid() = user_id);
DROP POLICY IF EXISTS "Admins read all usage logs" ON public.api_usage_logs;
CREATE POLICY "Admins read all usage logs" ON public.api_usage_logs
  FOR SELECT USING (public.has_role(auth.uid(), 'admin'));
DROP POLICY IF EXISTS "Service role inserts usage logs" ON public.api_usage_logs;
CREATE POLICY "Service role inserts usage logs" ON public.api_usage_logs
  FOR INSERT TO service_role WITH CHECK (true);

-- characters: the owner and admins everything; public sfw characters readable by anyone. The original also lets
-- age-verified users read public nsfw characters (profiles.age_verified); profiles here is reduced to its key,
-- so those rows stay readable by their owner and admins only.
ALTER TABLE public.characters ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Owners manage their characters" ON public.characters;
CREATE POLICY "Owners manage their characters" ON public.characters
  FOR ALL USING (auth.uid() = user_id);
DROP POLICY IF EXISTS "Admins manage characters" ON public.characters;
CREATE POLICY "Admins manage characters" ON public.characters
  FOR ALL USING (public.has_role(auth.uid(), 'admin'));
DROP POLICY IF EXISTS "Public sfw characters are readable" ON public.characters;
CREATE POLICY "Public sfw characters are readable" ON public.characters
  FOR SELECT USING (is_public AND content_rating = 'sfw');

-- character_scenes: admins and the owner of the scene's character, for select, insert, update and delete
-- (one FOR ALL policy: its USING also checks inserted rows).
ALTER TABLE public.character_scenes ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Character owners manage scenes" ON public.character_scenes;
CREATE POLICY "Character owners manage scenes" ON public.character_scenes
  FOR ALL USING (
    public.has_role(auth.uid(), 'admin')
    OR EXISTS (SELECT 1 FROM public.characters c WHERE c.id = character_id AND c.user_id = auth.uid())
  );

-- user_library: anything on one's own rows.
ALTER TABLE public.user_library ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Owners manage their library" ON public.user_library;
CREATE POLICY "Owners manage their library" ON public.user_library
  FOR ALL USING (auth.uid() = user_id);

-- profiles: users read and update their own.
ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS "Users read own profile" ON public.profiles;
CREATE POLICY "Users read own profile" ON public.profiles
  FOR SELECT USING (auth.uid() = id);
DROP POLICY IF EXISTS "Users update own profile" ON public.profiles;
CREATE POLICY "Users update own profile" ON public.profiles
  FOR UPDATE USING (auth.uid() = id);

-- storyboard_clips: the known schema records NO row level security for it, so under Supabase's default grants
-- any client (anon included) can read and write every row. That is the model reproduced here, on purpose: RLS
-- stays as the migrations left it.
