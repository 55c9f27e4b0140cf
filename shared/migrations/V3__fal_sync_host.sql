-- Existing deployments: fal's provider row names only the queue host (https://queue.fal.run). Give it fal's
-- sync host as data, so the sync route is table-driven too and no code ever rewrites a host.
UPDATE public.api_providers
   SET sync_base_url = 'https://fal.run'
 WHERE sync_base_url IS NULL
   AND rtrim(base_url, '/') = 'https://queue.fal.run';
