use crate::common::{as_user, stack_var, unique, with_database};
use gen_pipeline::jobs::OPEN_STATUSES_SQL;
use gen_pipeline::{db, migrations};
use serde_json::json;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

const ORIGINAL_SCHEMA: &str = include_str!("../fixtures/original-schema.sql");
/// The local stack's copy of Supabase's security model (`xtask/src/stack/supabase.rs`): client roles,
/// `auth.uid()` and default grants before the migrations, the original's RLS policies after them.
const SUPABASE_BEFORE_MIGRATIONS: &str =
    include_str!("../../../xtask/src/stack/supabase/before_migrations.sql");
const SUPABASE_AFTER_MIGRATIONS: &str =
    include_str!("../../../xtask/src/stack/supabase/after_migrations.sql");

/// A fresh database on the stack's server, dropped when the guard goes.
struct TempDb {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl TempDb {
    async fn new() -> TempDb {
        let admin = db::connect(&stack_var("DATABASE_URL")).await.unwrap();
        let name = unique("mig");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = with_database(&stack_var("DATABASE_URL"), &name);
        TempDb { admin, name, url }
    }

    async fn drop(self) {
        self.admin
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

/// Every column, index and constraint of the schemas the migrations touch, as sortable text.
async fn schema(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for row in client
        .simple_query(
            "SELECT table_schema||'.'||table_name||'.'||column_name||' '||data_type||' null='||is_nullable||' default='||coalesce(column_default,'')
               FROM information_schema.columns WHERE table_schema IN ('public','auth')
             UNION ALL SELECT 'index '||schemaname||' '||indexdef FROM pg_indexes WHERE schemaname IN ('public','auth')
             UNION ALL SELECT 'constraint '||conrelid::regclass||' '||conname||' '||pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace IN ('public'::regnamespace,'auth'::regnamespace)
             ORDER BY 1",
        )
        .await
        .unwrap()
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = row {
            out.push(r.get(0).unwrap_or_default().to_owned());
        }
    }
    out
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_create_every_contract_table() {
    let tmp = TempDb::new().await;
    let applied = migrations::apply(&tmp.url).await.unwrap();
    assert_eq!(applied, migrations::names().len());
    let client = db::connect(&tmp.url).await.unwrap();
    let tables = schema(&client).await;
    for table in [
        "public.jobs.status",
        "public.jobs.metadata",
        "public.workspace_assets.temp_storage_path",
        "public.api_models.endpoint_path",
        "public.api_providers.sync_base_url",
        "public.api_usage_logs.job_id",
        "public.characters.seed_locked",
        "public.character_scenes.image_url",
        "public.user_library.storage_path",
        "public.storyboard_clips.video_url",
        "public.job_completion_claims.lease_expires_at",
        "public.job_postprocessing.step",
    ] {
        assert!(
            tables.iter().any(|c| c.starts_with(&format!("{table} "))),
            "missing {table}"
        );
    }
    // The webhook finds jobs by request id in the server-owned table; the metadata copy is indexed, not unique
    // (a client could otherwise block another job's request id).
    assert!(
        tables
            .iter()
            .any(|c| c.contains("job_runs_request_id_key") && c.contains("UNIQUE"))
    );
    assert!(!tables.iter().any(|c| c.contains("jobs_fal_request_id_key")));
    drop(client);
    tmp.drop().await;
}

#[tokio::test]
async fn migrations_apply_on_top_of_the_original_schema_and_keep_every_original_column() {
    let tmp = TempDb::new().await;
    let client = db::connect(&tmp.url).await.unwrap();
    client.batch_execute(ORIGINAL_SCHEMA).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO public.api_providers (name, display_name, base_url, auth_scheme, secret_name)
             VALUES ('fal', 'fal.ai', 'https://queue.fal.run', 'api_key_header', 'FAL_KEY')",
        )
        .await
        .unwrap();
    let before = schema(&client).await;
    migrations::apply(&tmp.url).await.unwrap();
    let after = schema(&client).await;
    for item in &before {
        assert!(
            after.contains(item),
            "the migrations changed or dropped: {item}"
        );
    }
    let added: Vec<&String> = after.iter().filter(|i| !before.contains(i)).collect();
    for item in &added {
        // Additions to original tables are nullable columns, indexes or the port's own tables.
        let ours = [
            "job_completion_claims",
            "job_reconcile_checks",
            "job_postprocessing",
            "job_runs",
            "job_run_orphans",
            "gen_pipeline_migrations",
        ]
        .iter()
        .any(|t| item.contains(t));
        assert!(
            ours || item.starts_with("index ") || item.contains("null=YES"),
            "unexpected change to an original table: {item}"
        );
    }
    assert!(added.iter().any(|i| i.contains("job_runs_request_id_key")));
    // The original fal row gains fal's sync host beside its queue host.
    let row = client
        .query_one(
            "SELECT base_url, sync_base_url FROM public.api_providers WHERE name = 'fal'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("https://queue.fal.run")
    );
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("https://fal.run")
    );
    drop(client);
    tmp.drop().await;
}

/// The open jobs of an existing deployment as the migrations find them: V5 brings each over with a run, and V11
/// closes the runs the port has nothing to act on, so no reconciler pass fails another pipeline's job or one whose
/// result the original stored. The original's queued fal jobs stay open for their webhooks (and the reconciler).
#[tokio::test]
async fn the_runs_of_an_existing_deployments_open_jobs_stay_open_only_for_the_originals_fal_requests()
 {
    let tmp = TempDb::new().await;
    let client = db::connect(&tmp.url).await.unwrap();
    client.batch_execute(ORIGINAL_SCHEMA).await.unwrap();
    let user = Uuid::new_v4();
    client
        .batch_execute(&format!(
            "INSERT INTO auth.users (id) VALUES ('{user}');
             INSERT INTO public.profiles (id) VALUES ('{user}');
             INSERT INTO public.api_providers (name, display_name, base_url)
             VALUES ('fal', 'fal.ai', 'https://queue.fal.run'), ('replicate', 'Replicate', 'https://api.replicate.com');
             INSERT INTO public.api_models (provider_id, model_key, display_name, modality, tasks)
             SELECT id, name || '-model', name, 'image', '{{generate}}' FROM public.api_providers;"
        ))
        .await
        .unwrap();
    let job = async |prompt: &str,
                     status: &str,
                     provider: Option<&str>,
                     metadata: serde_json::Value|
           -> Uuid {
        client
            .query_one(
                "INSERT INTO public.jobs (user_id, job_type, status, original_prompt, api_model_id, metadata)
                 VALUES ($1, 'image_fast', $2, $3,
                         (SELECT m.id FROM public.api_models m JOIN public.api_providers p ON p.id = m.provider_id
                           WHERE p.name = $4), $5)
                 RETURNING id",
                &[&user, &status, &prompt, &provider, &metadata],
            )
            .await
            .unwrap()
            .get(0)
    };
    let queued_fal = job(
        "fal, queued",
        "queued",
        Some("fal"),
        json!({"fal_request_id": "r-1"}),
    )
    .await;
    let other_pipeline = job("job-callback", "processing", None, json!({})).await;
    let replicate_pipeline = job("replicate-webhook", "queued", Some("replicate"), json!({})).await;
    let stuck_portrait = job("portrait", "processing", Some("fal"), json!({})).await;
    client
        .execute(
            "INSERT INTO public.workspace_assets (user_id, job_id, asset_type, temp_storage_path, file_size_bytes,
                                                 mime_type, generation_seed, original_prompt, model_used)
             VALUES ($1, $2, 'image', 'p.png', 1, 'image/png', 1, 'portrait', 'fal-model')",
            &[&user, &stuck_portrait],
        )
        .await
        .unwrap();

    migrations::apply(&tmp.url).await.unwrap();

    let open: Vec<Uuid> = client
        .query(
            "SELECT job_id FROM public.job_runs WHERE closed_at IS NULL ORDER BY job_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(open, vec![queued_fal]);
    let brought: i64 = client
        .query_one("SELECT count(*) FROM public.job_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(brought, 4, "V5 brings every open job over");
    for closed in [other_pipeline, replicate_pipeline, stuck_portrait] {
        let status: String = client
            .query_one("SELECT status FROM public.jobs WHERE id = $1", &[&closed])
            .await
            .unwrap()
            .get(0);
        assert!(
            status == "queued" || status == "processing",
            "the job itself is left as it was"
        );
    }
    drop(client);
    tmp.drop().await;
}

#[tokio::test]
async fn migrations_applied_twice_change_nothing_the_second_time() {
    let tmp = TempDb::new().await;
    migrations::apply(&tmp.url).await.unwrap();
    let client = db::connect(&tmp.url).await.unwrap();
    let first = schema(&client).await;
    assert_eq!(migrations::apply(&tmp.url).await.unwrap(), 0);
    assert_eq!(schema(&client).await, first);
    drop(client);
    tmp.drop().await;
}

/// The original's tables, schema-qualified, as the fixture creates them: the only tables without RLS allowed.
fn original_tables() -> Vec<String> {
    ORIGINAL_SCHEMA
        .lines()
        .filter_map(|l| l.strip_prefix("CREATE TABLE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The reconciler's post-processing backlog read can use V18's partial index (its predicate is implied by the
/// query's): with sequential scans off, the read counts a scan of that index. Without it, every pass read the
/// whole history of runs.
#[tokio::test]
async fn the_post_processing_backlog_is_read_through_its_index() {
    let tmp = TempDb::new().await;
    migrations::apply(&tmp.url).await.unwrap();
    let client = db::connect(&tmp.url).await.unwrap();
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let scans = async || -> i64 {
        client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        client
            .query_one(
                "SELECT idx_scan FROM pg_stat_user_indexes
                  WHERE indexrelname = 'job_runs_post_processing_backlog'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    // A completed job an hour ago, with a step to run (so that the read's join reaches the runs).
    let user = Uuid::new_v4();
    let args = "'image_fast', 'p', 'processing', 'fast', NULL, 'image', '{}', 10, NULL, 'fal', 'k', 'none', \
                NULL, NULL, NULL, NULL, NULL, NULL, '{storyboard_clip}'";
    client
        .batch_execute(&format!(
            "INSERT INTO auth.users (id) VALUES ('{user}');
             INSERT INTO public.profiles (id) VALUES ('{user}');
             SELECT public.insert_job('{user}', {args});
             UPDATE public.jobs SET status = 'completed' WHERE user_id = '{user}';
             UPDATE public.job_runs SET result_key = 'k', closed_at = now() - interval '1 hour'
              WHERE user_id = '{user}';"
        ))
        .await
        .unwrap();
    let before = scans().await;
    let taken = db::reconcile::take_post_processing_backlog(
        &client,
        std::time::Duration::from_secs(60),
        25,
    )
    .await
    .unwrap();
    assert_eq!(taken.len(), 1, "the job with a step to run");
    assert!(
        scans().await > before,
        "the backlog read did not use the index"
    );
    drop(client);
    tmp.drop().await;
}

/// V8's bound (still called by the release before V9) spells the open statuses out, as V7's partial index does:
/// they must be the statuses the guards call open, and the index's predicate must be the count's, or the count
/// stops reading only that index. Since V11, `insert_job` counts the runs the functions have not closed, and reads
/// only their partial index.
#[tokio::test]
async fn the_open_jobs_bound_and_its_index_name_the_open_statuses_of_the_guards() {
    let tmp = TempDb::new().await;
    migrations::apply(&tmp.url).await.unwrap();
    let client = db::connect(&tmp.url).await.unwrap();
    let open = format!("status IN {OPEN_STATUSES_SQL}");
    let body = async |function: &str| -> String {
        client
            .query_one(
                "SELECT prosrc FROM pg_proc WHERE proname = $1 AND pronamespace = 'public'::regnamespace",
                &[&function],
            )
            .await
            .unwrap()
            .get(0)
    };
    assert!(body("open_jobs_below").await.contains(&open));
    let insert_job = body("insert_job").await;
    assert!(
        insert_job.contains("FROM public.job_runs") && insert_job.contains("closed_at IS NULL"),
        "insert_job does not count open runs: {insert_job}"
    );
    assert!(!insert_job.contains(&open), "insert_job counts statuses");
    // Postgres normalises a predicate: compare the index's with that of the same list on a scratch table.
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE open_probe (status text);
             CREATE INDEX open_probe_idx ON open_probe (status) WHERE {open};"
        ))
        .await
        .unwrap();
    let predicate = async |index: &str| -> String {
        client
            .query_one(
                "SELECT pg_get_expr(indpred, indrelid) FROM pg_index WHERE indexrelid = $1::text::regclass",
                &[&index],
            )
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(
        predicate("public.idx_jobs_open_by_user").await,
        predicate("open_probe_idx").await
    );
    assert_eq!(
        predicate("public.job_runs_open_by_user").await,
        "(closed_at IS NULL)"
    );
    drop(client);
    tmp.drop().await;
}

/// Every table of the database outside the system schemas, with whether row level security is on.
async fn tables(client: &tokio_postgres::Client) -> Vec<(String, bool)> {
    client
        .query(
            "SELECT n.nspname || '.' || c.relname, c.relrowsecurity
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn every_table_the_migrations_create_has_rls() {
    let tmp = TempDb::new().await;
    migrations::apply(&tmp.url).await.unwrap();
    let client = db::connect(&tmp.url).await.unwrap();
    let original = original_tables();
    assert!(original.contains(&"public.jobs".to_owned()));
    let ours: Vec<(String, bool)> = tables(&client)
        .await
        .into_iter()
        .filter(|(t, _)| !original.contains(t))
        .collect();
    assert!(
        ours.iter()
            .any(|(t, _)| t == "public.job_completion_claims"),
        "the port's tables were not found: {ours:?}"
    );
    let open: Vec<&String> = ours
        .iter()
        .filter(|(_, rls)| !rls)
        .map(|(t, _)| t)
        .collect();
    assert!(
        open.is_empty(),
        "tables the migrations create without row level security (enable it, as V6 does): {open:?}"
    );
    drop(client);
    tmp.drop().await;
}

/// A fresh database set up as the local stack sets it up; returns it with the tables that the Supabase part made
/// before the migrations ran.
async fn supabase_database(tmp: &TempDb) -> (tokio_postgres::Client, Vec<String>) {
    let mut client = db::connect(&tmp.url).await.unwrap();
    client
        .batch_execute(SUPABASE_BEFORE_MIGRATIONS)
        .await
        .unwrap();
    let before = tables(&client).await.into_iter().map(|(t, _)| t).collect();
    migrations::apply_with(&mut client).await.unwrap();
    client
        .batch_execute(SUPABASE_AFTER_MIGRATIONS)
        .await
        .unwrap();
    // Applied again, as on every `stack up` over a kept DATABASE_URL: nothing closed opens again.
    client
        .batch_execute(SUPABASE_BEFORE_MIGRATIONS)
        .await
        .unwrap();
    client
        .batch_execute(SUPABASE_AFTER_MIGRATIONS)
        .await
        .unwrap();
    (client, before)
}

#[tokio::test]
async fn a_signed_in_client_can_neither_read_nor_write_the_port_tables() {
    let tmp = TempDb::new().await;
    let (mut client, before) = supabase_database(&tmp).await;
    let original = original_tables();
    let port_tables: Vec<String> = tables(&client)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !original.contains(t) && !before.contains(t))
        .collect();
    assert!(port_tables.contains(&"public.gen_pipeline_migrations".to_owned()));
    let user = Uuid::new_v4();
    db::users::ensure(&client, user).await.unwrap();

    // The same client reaches the original tables (through their policies), so each refusal below is the
    // port table's own.
    as_user(&mut client, user, async |tx| {
        tx.query("SELECT id FROM public.jobs", &[]).await
    })
    .await
    .unwrap();
    for table in &port_tables {
        for sql in [
            format!("SELECT * FROM {table}"),
            format!("INSERT INTO {table} DEFAULT VALUES"),
        ] {
            refused(&mut client, user, &sql).await;
        }
    }
    // Nor call the port's functions (Supabase grants every new function in public to its client roles, and
    // PostgREST would expose them as RPCs).
    refused(
        &mut client,
        user,
        &format!("SELECT public.open_jobs_below('{user}', 1)"),
    )
    .await;
    let args = "'image_fast', 'p', 'queued', 'fast', NULL, 'image', '{}', 10, NULL, 'fal', 'k', 'none', \
                NULL, NULL, NULL, NULL, NULL, NULL, '{}'";
    refused(
        &mut client,
        user,
        &format!("SELECT public.insert_job('{user}', {args})"),
    )
    .await;
    let args = "'image', '/', '{}', 0, NULL, 0, NULL, NULL, '{}', 'r', NULL, NULL, NULL, NULL";
    refused(
        &mut client,
        user,
        &format!(
            "SELECT public.record_queued_request(gen_random_uuid(), NULL, NULL, '{user}', {args})"
        ),
    )
    .await;
    drop(client);
    tmp.drop().await;
}

/// `sql` run as the signed-in user fails for want of privilege.
async fn refused(client: &mut tokio_postgres::Client, user: Uuid, sql: &str) {
    let err = as_user(client, user, async |tx| tx.batch_execute(sql).await)
        .await
        .expect_err(sql);
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{sql}: {err}"
    );
}

#[tokio::test]
async fn under_the_originals_policies_a_user_reads_and_cancels_only_their_own_jobs() {
    let tmp = TempDb::new().await;
    let (mut client, _) = supabase_database(&tmp).await;
    let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
    for u in [owner, other] {
        db::users::ensure(&client, u).await.unwrap();
    }
    let job: Uuid = client
        .query_one(
            "INSERT INTO public.jobs (user_id, job_type) VALUES ($1, 'image_fast') RETURNING id",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    let cancel = "UPDATE public.jobs SET status = 'cancelled' WHERE id = $1";

    let seen = as_user(&mut client, other, async |tx| {
        tx.query("SELECT id FROM public.jobs", &[]).await
    })
    .await
    .unwrap();
    assert!(seen.is_empty(), "another user's job is visible");
    let updated = as_user(&mut client, other, async |tx| {
        tx.execute(cancel, &[&job]).await
    })
    .await
    .unwrap();
    assert_eq!(updated, 0, "another user's job was updated");

    let updated = as_user(&mut client, owner, async |tx| {
        tx.execute(cancel, &[&job]).await
    })
    .await
    .unwrap();
    assert_eq!(updated, 1, "the owner cannot cancel their job");
    // storyboard_clips has no RLS in the original: any client writes it (the model reproduced, not a goal).
    as_user(&mut client, other, async |tx| {
        tx.batch_execute("INSERT INTO public.storyboard_clips DEFAULT VALUES")
            .await
    })
    .await
    .unwrap();
    drop(client);
    tmp.drop().await;
}
