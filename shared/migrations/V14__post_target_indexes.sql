-- A post-processing step that points a character or scene at its copy first asks whether a later run for the same
-- character or scene already did (`db::postprocess::superseded_by_later`): a late re-run of an older job's step
-- must not point the row back at the older result. A storyboard clip is written only by the latest job asked for
-- it (`db::postprocess::clip_not_asked_again`). These indexes answer both from the runs of that target alone.
CREATE INDEX IF NOT EXISTS job_runs_by_character ON public.job_runs (character_id, closed_at)
    WHERE character_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS job_runs_by_scene ON public.job_runs (scene_id, closed_at)
    WHERE scene_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS job_runs_by_clip ON public.job_runs (storyboard_clip_id, created_at)
    WHERE storyboard_clip_id IS NOT NULL;
