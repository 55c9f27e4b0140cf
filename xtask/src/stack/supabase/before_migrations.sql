-- Supabase's security model, the part that must exist before the migrations create tables: the client roles,
-- the JWT accessors in schema auth, a has_role stand-in, and Supabase's default grants on schema public (so a
-- table created afterwards is granted to the client roles exactly as on Supabase). Every statement is safe to
-- run again and on a database that already has these objects (a Supabase database keeps its own).

-- The roles PostgREST switches to: anon (no token), authenticated (a user's token), service_role (the service
-- key; bypasses RLS). Roles are per cluster, so another database of the cluster may have made them already.
DO $$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT * FROM (VALUES ('anon', false), ('authenticated', false), ('service_role', true)) AS v(name, bypass)
  LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r.name) THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT%s', r.name, CASE WHEN r.bypass THEN ' BYPASSRLS' ELSE '' END);
      EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL; -- created meanwhile by a concurrent run
      END;
    END IF;
    -- The connecting role may SET ROLE to act as a client (a superuser already may).
    IF r.name <> current_user AND NOT pg_has_role(current_user, r.name::name, 'MEMBER') THEN
      EXECUTE format('GRANT %I TO %I', r.name, current_user);
    END IF;
  END LOOP;
END
$$;

-- Supabase's JWT accessors: PostgREST puts the token's claims in request.jwt.claims (older versions in
-- request.jwt.claim.<name>). Created only where missing: on Supabase they belong to supabase_auth_admin.
CREATE SCHEMA IF NOT EXISTS auth;

-- Alike in shape on purpose: each accessor is spelled out as Supabase defines it, not generated.
DO $do$
BEGIN
  IF to_regprocedure('auth.uid()') IS NULL THEN
    EXECUTE $f$
      CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $b$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
      $b$
    $f$;
  END IF;
  IF to_regprocedure('auth.role()') IS NULL THEN
    EXECUTE $f$
      CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $b$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
      $b$
    $f$;
  END IF;
  IF to_regprocedure('auth.jwt()') IS NULL THEN
    EXECUTE $f$
      CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $b$
        SELECT coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $b$
    $f$;
  END IF;
END
$do$;

GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.jwt() TO anon, authenticated, service_role;

-- The original's admin check, has_role(uid, 'admin'), over its user_roles table; here a stand-in that is false
-- unless a user_roles row says otherwise. SECURITY DEFINER as in the original, so policies can call it whatever
-- the caller may read of user_roles.
CREATE TABLE IF NOT EXISTS public.user_roles (
  user_id uuid NOT NULL,
  role text NOT NULL,
  PRIMARY KEY (user_id, role)
);

DO $do$
BEGIN
  IF to_regprocedure('public.has_role(uuid, text)') IS NULL THEN
    EXECUTE $f$
      CREATE FUNCTION public.has_role(_user_id uuid, _role text) RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $b$
        SELECT EXISTS (SELECT 1 FROM public.user_roles WHERE user_id = _user_id AND role::text = _role)
      $b$
    $f$;
  END IF;
END
$do$;

-- Supabase's default grants on schema public: every table, sequence and function the connecting role creates
-- there is granted to the three roles, so RLS is all that stands between a client and a table.
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;

-- Tables that existed before these defaults (an original schema loaded into a plain database) get the grants
-- Supabase gave them when they were created. Only tables nobody ever granted or revoked anything on (no ACL):
-- running this again must not re-open a table a migration has since closed with REVOKE.
DO $$
DECLARE
  t regclass;
BEGIN
  FOR t IN
    SELECT c.oid::regclass FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
       AND c.relacl IS NULL
  LOOP
    EXECUTE format('GRANT ALL ON %s TO anon, authenticated, service_role', t);
  END LOOP;
END
$$;

-- user_roles decides who is admin: clients may read their own rows, never write any. Left alone where another
-- role owns it (a database that brought its own user_roles keeps its own policies).
DO $$
BEGIN
  IF pg_has_role((SELECT relowner FROM pg_class WHERE oid = 'public.user_roles'::regclass), 'USAGE') THEN
    ALTER TABLE public.user_roles ENABLE ROW LEVEL SECURITY;
    DROP POLICY IF EXISTS "Users can view their own roles" ON public.user_roles;
    CREATE POLICY "Users can view their own roles" ON public.user_roles
      FOR SELECT TO authenticated USING (auth.uid() = user_id);
  END IF;
END
$$;
