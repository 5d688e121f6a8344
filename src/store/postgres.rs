//! Postgres: the production backend, shared by several replicas.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::StoreError;

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// One pool for every query: each is short, since no connection is held while LWA
/// answers (the token lease is a row, not a transaction).
pub(super) async fn connect(options: PgConnectOptions) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        // Fail fast when the database is down: callers answer 503 rather than hang.
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await?;
    Ok(pool)
}
