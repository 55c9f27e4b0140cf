-- The run's model (V19) refers to its api_models row, as jobs.api_model_id does: a model row deleted while a job
-- is open (its owner may have pointed jobs.api_model_id elsewhere, so nothing else held it) leaves the run
-- without a model instead of a dangling id, which the usage row's own reference to api_models would refuse at
-- every completing transaction. NOT VALID: the values already there came from jobs.api_model_id, which refers to
-- the same rows; new and updated rows are checked.
ALTER TABLE public.job_runs
  ADD CONSTRAINT job_runs_api_model_id_fkey FOREIGN KEY (api_model_id)
  REFERENCES public.api_models(id) ON DELETE SET NULL NOT VALID;
