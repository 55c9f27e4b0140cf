-- V12's record_queued_request, completing the usage row an early delivery wrote. A webhook that completes the job
-- before the submission recorded its request inserts the row from the job and its run, without the request's
-- payload or the submission's provider metadata (`async`, `model_key`, `request_id`); the submission's insert then
-- found the row and did nothing. It now fills what the row lacks: the payload when it has none, and the metadata
-- keys it does not have (the delivery's own keys are kept). Same signature, so instances of the previous release
-- keep calling it during a deploy.
CREATE OR REPLACE FUNCTION public.record_queued_request(
  p_job_id uuid, p_provider_id uuid, p_model_id uuid, p_user_id uuid, p_request_type text, p_endpoint_path text,
  p_request_payload jsonb, p_cost_usd float8, p_response_status integer, p_response_time_ms integer,
  p_response_payload jsonb, p_error_message text, p_provider_metadata jsonb,
  p_request_id text, p_gateway_request_id text, p_status_url text, p_response_url text, p_cancel_url text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
  v_open boolean := false;
BEGIN
  UPDATE public.jobs
     SET metadata = coalesce(metadata, '{}'::jsonb) || jsonb_build_object(
         'fal_request_id', p_request_id, 'fal_gateway_request_id', p_gateway_request_id,
         'fal_status_url', p_status_url, 'fal_response_url', p_response_url, 'fal_cancel_url', p_cancel_url)
   WHERE id = p_job_id;
  -- Written into a closed run too: it is the provider's request of that job whatever happened to it.
  UPDATE public.job_runs
     SET request_id = p_request_id, gateway_request_id = p_gateway_request_id, status_url = p_status_url,
         response_url = p_response_url, cancel_url = p_cancel_url
   WHERE job_id = p_job_id
  RETURNING closed_at IS NULL INTO v_open;
  IF NOT FOUND THEN
    -- Its owner deleted the job before the provider's answer was recorded: the orphaned run gets the cancel URL,
    -- so that the reconciler can stop the request.
    UPDATE public.job_run_orphans SET cancel_url = p_cancel_url WHERE job_id = p_job_id;
    v_open := false;
  END IF;
  INSERT INTO public.api_usage_logs (job_id, provider_id, model_id, user_id, request_type, endpoint_path,
                                     request_payload, cost_usd, response_status, response_time_ms,
                                     response_payload, error_message, provider_metadata)
  VALUES (p_job_id, p_provider_id, p_model_id, p_user_id, p_request_type, p_endpoint_path,
          p_request_payload, p_cost_usd::numeric(10,6), p_response_status, p_response_time_ms,
          p_response_payload, p_error_message, p_provider_metadata)
  ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO UPDATE
     SET request_payload = coalesce(api_usage_logs.request_payload, EXCLUDED.request_payload),
         provider_metadata = EXCLUDED.provider_metadata || coalesce(api_usage_logs.provider_metadata, '{}'::jsonb);
  RETURN v_open;
END
$$;
