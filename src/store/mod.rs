//! Storage: one `Store` over Postgres (production, several replicas) or SQLite (the
//! embedded default).
//!
//! Both dialects take `$n` parameters and their column types decode into the same Rust
//! types, so each query is written once and `on_pool!` runs it on whichever pool is open.
//! Queries live by concern (`connections.rs`, `api_keys.rs`; the token lease and change
//! notifications in `tokens.rs`); connecting and migrations per backend in `postgres.rs`
//! and `sqlite.rs`; column mapping in `rows.rs`. Failures leave this module as
//! `StoreError`, never as `sqlx::Error`.

/// Postgres: queues, in the transaction `$conn` belongs to, the notification that
/// connection `$id` changed; every replica's `ChangeListener` hears it at commit.
macro_rules! notify_change {
    ($conn:expr, $id:expr) => {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind($crate::store::CHANGES_CHANNEL)
            .bind($id.to_string())
            .execute($conn)
            .await?
    };
}

use sqlx::{PgPool, SqlitePool};
use std::sync::Arc;
use std::sync::atomic::AtomicI32;

use crate::config::DatabaseUrl;
use crate::domain::{ConnectionId, ConnectionStatus, Environment, MerchantToken, Region};
pub use client_secrets::{NotificationRecord, SecretChange};
pub use events::{EventFilter, Gauges, HANDOUTS_PER_STATEMENT, Handouts, StoredEvent};
pub use grantless::{GrantlessKey, GrantlessLease, grantless_owner};
pub use oauth::OAuthState;
pub use rows::{ConnectionRow, IdempotencyRecord, KeyCheck, PreviousSecret, StoredToken};
pub use sealed::{SealedConnection, SealedGrantless};
pub use tokens::{Change, ChangeListener, TokenFacts, TokenLease};
pub use webhooks::{AttemptOutcome, DeliveryRecord, DueDelivery, WebhookEndpointRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique key already exists, or the row changed since it was read.
    #[error("conflict")]
    Conflict,
    /// Waited too long for a lock another replica holds (its LWA exchange is slow).
    #[error("timed out waiting for a lock")]
    Busy,
    /// Every connection of this replica's pool stayed busy for the whole acquire timeout.
    #[error("every database connection is busy")]
    Exhausted,
    /// The database cannot be reached; worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            // lock_not_available: `lock_timeout` ran out.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => StoreError::Busy,
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            // A connection cut mid-handshake reads as garbage (a proxy or balancer in between).
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
            // Postgres says the server is shutting down or not yet accepting connections.
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|code| code.starts_with("57P") || code == "08006") =>
            {
                StoreError::Unavailable(err)
            }
            _ => StoreError::Other(err),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            other => StoreError::Corrupt(format!("migrations: {other}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Filters and page position for listing connections.
#[derive(Debug, Default, Clone)]
pub struct ConnectionFilter {
    pub status: Option<ConnectionStatus>,
    pub region: Option<Region>,
    pub environment: Option<Environment>,
    pub merchant_token: Option<MerchantToken>,
    /// Only connections whose client secret expires before this.
    pub client_secret_expires_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Only ids after this one (the cursor).
    pub after: Option<ConnectionId>,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Postgres: the change listener's backend pid (0 while it has none), recorded in the
    /// token leases this replica claims so that others can tell a dead holder's lease.
    session: Arc<AtomicI32>,
}

#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the open pool, whichever backend it is.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Postgres($pool) => $body,
            $crate::store::Pool::Sqlite($pool) => $body,
        }
    };
}

/// `PoolTimedOut` means either that every connection was busy the whole wait (this
/// replica is overloaded: `Exhausted`) or that none could be opened (`Unavailable`).
/// Applied where a caller waits on the pool on the token path (reading a connection,
/// the token lease), so overload is not reported as an outage.
pub(crate) fn pool_error<DB: sqlx::Database>(
    err: sqlx::Error,
    pool: &sqlx::Pool<DB>,
) -> StoreError {
    let saturated = pool.size() >= pool.options().get_max_connections() && pool.num_idle() == 0;
    classify_timeout(err, saturated)
}

fn classify_timeout(err: sqlx::Error, saturated: bool) -> StoreError {
    match err {
        sqlx::Error::PoolTimedOut if saturated => StoreError::Exhausted,
        other => other.into(),
    }
}

/// The connection columns in `bind_connection` order (a macro, so `concat!` can use it).
/// `connection_columns!(without_secrets)` has the same shape with empty placeholders
/// where the secrets are, for reads that never open them (the list).
macro_rules! connection_columns {
    () => {
        connection_columns!(@with
            "client_secret",
            "refresh_token",
            "access_token, access_token_fetched_at, access_token_expires_at",
            "previous_client_secret, previous_client_secret_until")
    };
    (without_secrets) => {
        connection_columns!(@with
            "CAST('' AS TEXT) AS client_secret",
            "CAST('' AS TEXT) AS refresh_token",
            "CAST(NULL AS TEXT) AS access_token, \
             CAST(NULL AS TIMESTAMPTZ) AS access_token_fetched_at, \
             CAST(NULL AS TIMESTAMPTZ) AS access_token_expires_at",
            "CAST(NULL AS TEXT) AS previous_client_secret, \
             CAST(NULL AS TIMESTAMPTZ) AS previous_client_secret_until")
    };
    (@with $client_secret:literal, $refresh_token:literal, $access_token:literal,
     $previous_client_secret:literal) => {
        concat!(
            "id, name, account_type, region, environment, client_id, ",
            $client_secret,
            ", client_secret_hint, client_secret_expires_at, \
             client_secret_expires_at_estimated, client_secret_updated_at, ",
            $refresh_token,
            ", merchant_token, application_id, marketplace_ids, status, last_error_code, \
             last_error_message, last_error_at, authorized_at, last_tested_at, ",
            $access_token,
            ", version, created_at, updated_at, ",
            $previous_client_secret
        )
    };
}

#[macro_use]
mod events;
mod api_keys;
mod client_secrets;
mod connections;
mod grantless;
mod oauth;
mod pg_columns;
mod postgres;
mod rows;
mod sealed;
mod sqlite;
mod tokens;
mod webhooks;

const SELECT_CONNECTION: &str = concat!(
    "SELECT ",
    connection_columns!(),
    " FROM connections WHERE id = $1"
);

/// The Postgres channel of `notify_change!`.
const CHANGES_CHANNEL: &str = "connection_registry_changes";

/// Writes every column if the stored row is still at the version before `$25`.
const UPDATE_CONNECTION: &str = "UPDATE connections SET name = $2, account_type = $3, \
    region = $4, environment = $5, client_id = $6, client_secret = $7, \
    client_secret_hint = $8, client_secret_expires_at = $9, \
    client_secret_expires_at_estimated = $10, client_secret_updated_at = $11, \
    refresh_token = $12, merchant_token = $13, application_id = $14, marketplace_ids = $15, \
    status = $16, last_error_code = $17, last_error_message = $18, last_error_at = $19, \
    authorized_at = $20, last_tested_at = $21, access_token = $22, \
    access_token_fetched_at = $23, access_token_expires_at = $24, version = $25, \
    created_at = $26, updated_at = $27, previous_client_secret = $28, \
    previous_client_secret_until = $29 \
    WHERE id = $1 AND version = $25 - 1";

impl Store {
    /// Connects to the database `url` names; `migrate` brings its schema up to date.
    pub async fn open(url: &DatabaseUrl) -> Result<Self, StoreError> {
        match url {
            DatabaseUrl::Sqlite { options, .. } => Ok(Self {
                pool: Pool::Sqlite(sqlite::connect(options.clone()).await?),
                session: Arc::default(),
            }),
            DatabaseUrl::Postgres { options, .. } => Ok(Self {
                pool: Pool::Postgres(postgres::connect(options.clone()).await?),
                session: Arc::default(),
            }),
        }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => postgres::MIGRATOR.run(pool).await?,
            Pool::Sqlite(pool) => sqlite::MIGRATOR.run(pool).await?,
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    // ---- master key checks ----

    pub async fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError> {
        let sql = "SELECT key_id, sealed FROM key_checks ORDER BY key_id";
        let rows: Vec<(String, String)> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        Ok(rows.into_iter().map(KeyCheck::from).collect())
    }

    pub async fn insert_key_check(&self, check: &KeyCheck) -> Result<(), StoreError> {
        let sql = "INSERT INTO key_checks (key_id, sealed, created_at) VALUES ($1, $2, $3) \
                   ON CONFLICT (key_id) DO NOTHING";
        on_pool!(self, pool => sqlx::query(sql)
            .bind(&check.key_id)
            .bind(check.sealed.as_str())
            .bind(crate::domain::now())
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_timeout_is_exhaustion_only_when_every_connection_is_busy() {
        assert!(matches!(
            classify_timeout(sqlx::Error::PoolTimedOut, true),
            StoreError::Exhausted
        ));
        assert!(matches!(
            classify_timeout(sqlx::Error::PoolTimedOut, false),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify_timeout(sqlx::Error::RowNotFound, true),
            StoreError::NotFound
        ));
    }
}
