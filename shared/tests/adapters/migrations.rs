use crate::common::{stack_var, unique, with_database};
use gen_pipeline::{db, migrations};

const ORIGINAL_SCHEMA: &str = include_str!("../fixtures/original-schema.sql");

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
    assert!(
        tables
            .iter()
            .any(|c| c.contains("jobs_fal_request_id_key") && c.contains("UNIQUE"))
    );
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
            "gen_pipeline_migrations",
        ]
        .iter()
        .any(|t| item.contains(t));
        assert!(
            ours || item.starts_with("index ") || item.contains("null=YES"),
            "unexpected change to an original table: {item}"
        );
    }
    assert!(added.iter().any(|i| i.contains("jobs_fal_request_id_key")));
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
