-- When a reconciler pass last asked the provider to cancel an orphaned run and the provider could not be reached
-- (network, 5xx, 429). The run was dropped whatever the provider answered, so a request left running still held
-- nothing against its owner's bound while it ran. Now an orphan whose cancel did not go through is kept for a
-- later pass until the reconcile deadline, and passes take the orphans not yet tried first, then the least
-- recently tried, so runs stuck at a failing provider do not fill every pass.
ALTER TABLE public.job_run_orphans ADD COLUMN IF NOT EXISTS cancel_tried_at timestamptz;
