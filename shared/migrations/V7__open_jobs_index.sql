-- Every submission counts the caller's open jobs against MAX_OPEN_JOBS_PER_USER (the INSERT's `open` CTE). With
-- only (user_id, status, created_at) to go by, that count also walks the dead index entries every status change
-- of a job leaves behind; this index holds open jobs only, so the count reads as many entries as there are open
-- jobs, and it is small (a job leaves it when it ends).
CREATE INDEX IF NOT EXISTS idx_jobs_open_by_user ON public.jobs (user_id) WHERE status IN ('queued', 'processing');
