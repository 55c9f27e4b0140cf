//! Supabase's security model on the local database, so a test meets a client's limits as on Supabase: the
//! client roles, `auth.uid()` and friends, Supabase's default grants on `public` (before the migrations), and
//! the original's row level security policies on its tables (after them). Both parts are safe to apply again.
//!
//! The functions keep connecting as the role that owns the tables, which RLS does not restrict: that is
//! Supabase's `postgres`/service role, as the original's functions had.

use anyhow::Context;

/// Roles, JWT accessors, `has_role` and default grants. The migration tests (`shared/tests/adapters`) include the
/// same file, to make the client roles in their throwaway databases.
pub const BEFORE_MIGRATIONS: &str = include_str!("supabase/before_migrations.sql");
/// The original's RLS policies on the original's tables.
pub const AFTER_MIGRATIONS: &str = include_str!("supabase/after_migrations.sql");

/// Applies [`BEFORE_MIGRATIONS`] to the database at `database_url`.
pub async fn before_migrations(database_url: &str) -> anyhow::Result<()> {
    run(database_url, BEFORE_MIGRATIONS)
        .await
        .context("cannot create Supabase's roles, auth functions and default grants")
}

/// Applies [`AFTER_MIGRATIONS`] to the database at `database_url`.
pub async fn after_migrations(database_url: &str) -> anyhow::Result<()> {
    run(database_url, AFTER_MIGRATIONS)
        .await
        .context("cannot apply the original's row level security policies")
}

async fn run(database_url: &str, sql: &str) -> anyhow::Result<()> {
    let client = gen_pipeline::db::connect(database_url).await?;
    // One simple query: the statements run as one implicit transaction, all or nothing.
    client.batch_execute(sql).await?;
    Ok(())
}
