-- A kept run of a deleted job (`job_run_orphans`, V11) records its request id, so that its cancel URL is used only
-- when it names that request where the provider puts it (`ProviderUrl::names_request`), as a live run's URLs are.
-- The runs V5 brought over took their URLs and request id from `jobs.metadata`, which only clients wrote (the
-- original stored no URL): without the id, such a run deleted by its owner could have another request cancelled.
-- Orphans kept before this migration have no id: the reconciler checks only their host, as before.
ALTER TABLE public.job_run_orphans ADD COLUMN IF NOT EXISTS request_id text;

CREATE OR REPLACE FUNCTION public.keep_orphaned_run() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $$
BEGIN
  INSERT INTO public.job_run_orphans (job_id, user_id, provider_id, provider_name, cancel_url, request_id,
                                      created_at)
  VALUES (OLD.job_id, OLD.user_id, OLD.provider_id, OLD.provider_name, OLD.cancel_url, OLD.request_id,
          OLD.created_at)
  ON CONFLICT (job_id) DO NOTHING;
  RETURN OLD;
END
$$;
