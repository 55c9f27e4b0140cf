//! The schema migrations in `shared/migrations/`, applied in order and recorded in `gen_pipeline_migrations`.
//!
//! They only add: tables where they do not exist (so they apply both to an empty database and on top of the
//! original deployment), indexes, new tables and nullable columns. Run them against Postgres directly, not
//! through a transaction-mode pooler (the runner keeps a transaction open across statements).

use crate::db;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Name of the table that records applied migrations.
pub const HISTORY_TABLE: &str = "gen_pipeline_migrations";

/// Applies the pending migrations to the database at `database_url`; returns how many were applied.
pub async fn apply(database_url: &str) -> anyhow::Result<usize> {
    let mut client = db::connect(database_url).await?;
    apply_with(&mut client).await
}

/// Same as [`apply`] on an open connection.
pub async fn apply_with(client: &mut tokio_postgres::Client) -> anyhow::Result<usize> {
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    let report = runner.run_async(client).await?;
    Ok(report.applied_migrations().len())
}

/// Names of every migration shipped in this build, in order.
pub fn names() -> Vec<String> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect()
}
