//! Postgres: the production backend, shared by several replicas.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::StoreError;

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

pub(super) async fn connect(url: &str) -> Result<PgPool, StoreError> {
    let options =
        PgConnectOptions::from_str(url).map_err(|err| StoreError::BadUrl(err.to_string()))?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        // Fail fast when the database is down: callers answer 503 rather than hang.
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await?;
    Ok(pool)
}
