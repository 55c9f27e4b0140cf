//! Postgres through tokio-postgres: TLS with rustls when the URL asks for it (roots: [`target`]), connections
//! checked before reuse once they have been idle (Lambda freezes environments, so a held connection may be dead),
//! and only unnamed statements (`query_typed*`, `batch_execute`), so every query is safe behind a transaction-mode
//! pooler.

pub mod assets;
pub mod claims;
pub mod jobs;
pub mod models;
pub mod postprocess;
pub mod reconcile;
pub mod runs;
pub mod target;
pub mod usage;
pub mod users;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub use deadpool_postgres::Object as Client;
pub use tokio_postgres::types::Type;

/// Connections kept per function instance: one request at a time, plus after-response work.
const POOL_SIZE: usize = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle longer than this is checked with a round trip before reuse (a frozen environment's
/// connection may have been closed by the server meanwhile); one reused sooner is only checked for having been
/// closed, which costs nothing. A failed check replaces it with a new connection.
const VERIFY_AFTER_IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid Postgres URL")]
    BadUrl,
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("no database connection: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

impl DbError {
    /// True when the failure is the database being unreachable or the connection dropping, not a bad statement.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Query(e) => e.is_closed() || e.code().is_none(),
            DbError::BadUrl | DbError::Tls(_) => false,
        }
    }
}

/// Whether the statement failed on the named foreign key (the row it points at does not exist).
pub fn violates_foreign_key(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code() == &tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION
            && d.constraint() == Some(constraint)
    })
}

/// The process's database handle. The pool is created on first use from the URL in the secret, and created again
/// if a rotated secret carries a different URL.
/// The pool and the fingerprint of the URL it was built from.
type CurrentPool = Option<(Vec<u8>, Pool)>;

#[derive(Default, Clone)]
pub struct Db {
    current: Arc<Mutex<CurrentPool>>,
}

impl Db {
    pub fn new() -> Self {
        Self::default()
    }

    /// A live connection to `database_url`, whose TLS trusts `ca_pem` when given ([`target`]): a pooled one is
    /// checked (see [`VERIFY_AFTER_IDLE`]) and replaced when the server closed it.
    pub async fn client(
        &self,
        database_url: &SecretString,
        ca_pem: Option<&str>,
    ) -> Result<Client, DbError> {
        let pool = self.pool(database_url, ca_pem)?;
        pool.get()
            .await
            .map_err(|e| DbError::Unavailable(crate::telemetry::causes(&e)))
    }

    fn pool(&self, database_url: &SecretString, ca_pem: Option<&str>) -> Result<Pool, DbError> {
        let mut hash = Sha256::new();
        hash.update(database_url.expose_secret().as_bytes());
        hash.update([0]);
        hash.update(ca_pem.unwrap_or_default().as_bytes());
        let fingerprint = hash.finalize().to_vec();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((fp, pool)) = current.as_ref()
            && *fp == fingerprint
        {
            return Ok(pool.clone());
        }
        let pool = build_pool(target::target(database_url.expose_secret(), ca_pem)?)?;
        *current = Some((fingerprint, pool.clone()));
        Ok(pool)
    }
}

fn build_pool(target: target::Target) -> Result<Pool, DbError> {
    let mut pg = target.config;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("gen-pipeline");
    }
    let manager = Manager::from_config(
        pg,
        target.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .post_recycle(deadpool_postgres::Hook::async_fn(|client, metrics| {
            Box::pin(async move {
                if metrics.last_used() < VERIFY_AFTER_IDLE {
                    return Ok(());
                }
                match tokio::time::timeout(CONNECT_TIMEOUT, client.simple_query("")).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(HookError::Backend(e)),
                    Err(_) => Err(HookError::message("connection check timed out")),
                }
            })
        }))
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| DbError::Unavailable(e.to_string()))
}

/// Opens one unpooled connection (tools and migrations) to a URL read as [`target`] reads it (`sslrootcert=<file>`
/// names the CA); the connection task runs in the background.
pub async fn connect(database_url: &str) -> Result<tokio_postgres::Client, DbError> {
    let target = target::target(database_url, None)?;
    let (client, connection) = target.config.connect(target.tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}
