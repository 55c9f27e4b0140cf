-- The port's own tables are the functions' bookkeeping, never a client's. On Supabase every table created in
-- public is granted to anon and authenticated, and one without row level security is open to any client with
-- a token. Close them: RLS on with no policy (nothing passes but the owner, the functions' role), and the client
-- roles' grants taken away. A table a later migration creates belongs here too: a test fails on any table
-- beside the original's without RLS.

ALTER TABLE public.job_completion_claims ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.job_postprocessing ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.job_reconcile_checks ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.job_runs ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
  port_tables text[] := ARRAY[
    'public.job_completion_claims', 'public.job_postprocessing', 'public.job_reconcile_checks', 'public.job_runs',
    'public.gen_pipeline_migrations'
  ];
  t text;
  r text;
  s regclass;
BEGIN
  -- refinery's history table: absent when this file is applied by hand.
  IF to_regclass('public.gen_pipeline_migrations') IS NOT NULL THEN
    ALTER TABLE public.gen_pipeline_migrations ENABLE ROW LEVEL SECURITY;
  END IF;

  -- Only Supabase (or the local stack playing it) has the client roles; a plain Postgres has none.
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
    CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    FOREACH t IN ARRAY port_tables LOOP
      CONTINUE WHEN to_regclass(t) IS NULL;
      EXECUTE format('REVOKE ALL ON TABLE %s FROM %I', t, r);
      -- Sequences behind serial or identity columns were granted by the same defaults.
      FOR s IN
        SELECT d.objid::regclass FROM pg_depend d JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
           AND d.refobjid = to_regclass(t) AND d.deptype IN ('a', 'i')
      LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %I', s, r);
      END LOOP;
    END LOOP;
  END LOOP;
END
$$;
