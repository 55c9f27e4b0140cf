-- Every reconciler pass looks for completed jobs whose run closed within the last day with a post-processing step
-- not yet recorded (`db::reconcile::take_post_processing_backlog`). Without an index on the close, that read
-- went through every run ever written; this one holds only runs that stored a result and have steps to run, and
-- the query names the same predicate so that the planner can use it.
CREATE INDEX IF NOT EXISTS job_runs_post_processing_backlog ON public.job_runs (closed_at)
    WHERE result_key IS NOT NULL AND post_steps <> '{}';
