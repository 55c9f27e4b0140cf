-- V20's reference is NOT VALID, so it leaves alone a run model id whose api_models row was deleted between V19 and
-- V20 (applied in separate deploys): the usage row's own reference would still refuse it at every completing
-- transaction. Such ids become NULL, as ON DELETE SET NULL does from V20 on.
UPDATE public.job_runs r
   SET api_model_id = NULL
 WHERE r.api_model_id IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM public.api_models m WHERE m.id = r.api_model_id);
