//! Postgres: the production backend, shared by several replicas.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::StoreError;

pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The pool for every query, and a separate one for token locks: a lock's transaction
/// stays open while LWA answers (seconds when it is slow), and an LWA outage must not
/// take the connections that reads, writes and readiness need.
pub(super) async fn connect(options: PgConnectOptions) -> Result<(PgPool, PgPool), StoreError> {
    let main = PgPoolOptions::new()
        .max_connections(16)
        // Fail fast when the database is down: callers answer 503 rather than hang.
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options.clone())
        .await?;
    let locks = PgPoolOptions::new()
        .max_connections(8)
        .min_connections(0)
        // Waiting here means other connections' exchanges are under way: worth a wait.
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    Ok((main, locks))
}
