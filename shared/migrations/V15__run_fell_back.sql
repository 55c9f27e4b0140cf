-- A queue submission that failed for a reason not the caller's falls back to the sync route. The job's metadata
-- says so (`sync_fallback`), but its owner can rewrite that; the run records it where only the functions write, so
-- a late delivery for the abandoned queue request cannot fail the job the sync run is finishing
-- (`webhook::deliver`).
ALTER TABLE public.job_runs ADD COLUMN IF NOT EXISTS fell_back_at timestamptz;
