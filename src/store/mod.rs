//! Storage: one `Store` over Postgres (production, several replicas) or SQLite (the
//! embedded default).
//!
//! Both dialects take `$n` parameters and their column types decode into the same Rust
//! types, so each query is written once and `on_pool!` runs it on whichever pool is open.
//! What differs between the backends (connecting, migrations, later the cross-replica
//! token lock) lives in `postgres.rs` and `sqlite.rs`. Failures leave this module as
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

mod postgres;
mod rows;
mod sqlite;
mod tokens;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

use crate::domain::{
    ApiKey, ApiKeyHash, ApiKeyId, ConnectionId, ConnectionStatus, Environment, MerchantToken,
    Region,
};
use rows::{ApiKeyColumns, ConnectionColumns, bind_connection};
pub use rows::{ConnectionRow, IdempotencyRecord, KeyCheck, StoredToken};
pub use tokens::{Change, ChangeListener, TokenLock};

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
    /// The database cannot be reached; worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("DATABASE_URL is not usable: {0}")]
    BadUrl(String),
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
    /// Only ids after this one (the cursor).
    pub after: Option<ConnectionId>,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Postgres only: connections for token locks (see `postgres::connect`).
    token_locks: Option<PgPool>,
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
            Pool::Postgres($pool) => $body,
            Pool::Sqlite($pool) => $body,
        }
    };
}

/// The connection columns in `bind_connection` order (a macro, so `concat!` can use it).
macro_rules! connection_columns {
    () => {
        "id, name, account_type, region, environment, client_id, \
    client_secret, client_secret_hint, client_secret_expires_at, \
    client_secret_expires_at_estimated, client_secret_updated_at, refresh_token, \
    merchant_token, application_id, marketplace_ids, status, last_error_code, \
    last_error_message, last_error_at, authorized_at, last_tested_at, access_token, \
    access_token_fetched_at, access_token_expires_at, version, created_at, updated_at"
    };
}

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
    created_at = $26, updated_at = $27 \
    WHERE id = $1 AND version = $25 - 1";

impl Store {
    /// Opens `url` (`postgres://…` or `sqlite://…`) and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            return Ok(Self {
                pool: Pool::Sqlite(sqlite::connect(url).await?),
                token_locks: None,
            });
        }
        let (pool, token_locks) = postgres::connect(url).await?;
        Ok(Self {
            pool: Pool::Postgres(pool),
            token_locks: Some(token_locks),
        })
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
        if let Some(locks) = &self.token_locks {
            locks.close().await;
        }
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

    // ---- connections ----

    /// Inserts a connection and, in the same transaction, the idempotency record that
    /// names it. `Conflict` when that idempotency key is already taken.
    pub async fn insert_connection(
        &self,
        row: &ConnectionRow,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<(), StoreError> {
        let insert = concat!(
            "INSERT INTO connections (",
            connection_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)"
        );
        let remember = "INSERT INTO idempotency_keys \
            (api_key_id, key, request_hash, connection_id, response, created_at) \
            VALUES ($1, $2, $3, $4, $5, $6)";
        let columns = ConnectionColumns::from(row);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(record) = idempotency {
                // A record past its 24 hours no longer holds the key.
                sqlx::query("DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2 AND created_at < $3")
                    .bind(record.api_key_id.as_uuid())
                    .bind(&record.key)
                    .bind(record.created_at - IdempotencyRecord::LIFETIME)
                    .execute(&mut *tx)
                    .await?;
            }
            bind_connection(sqlx::query(insert), columns).execute(&mut *tx).await?;
            if let Some(record) = idempotency {
                sqlx::query(remember)
                    .bind(record.api_key_id.as_uuid())
                    .bind(&record.key)
                    .bind(&record.request_hash)
                    .bind(record.connection_id.as_uuid())
                    .bind(&record.response)
                    .bind(record.created_at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// The create request remembered under `key` for this caller, if any and still fresh.
    pub async fn find_idempotency(
        &self,
        api_key_id: ApiKeyId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let sql = "SELECT api_key_id, key, request_hash, connection_id, response, created_at \
                   FROM idempotency_keys WHERE api_key_id = $1 AND key = $2";
        let row: Option<(Uuid, String, String, Uuid, String, DateTime<Utc>)> = on_pool!(self, pool =>
            sqlx::query_as(sql).bind(api_key_id.as_uuid()).bind(key).fetch_optional(pool).await)?;
        Ok(row
            .map(IdempotencyRecord::from)
            .filter(|record| record.is_fresh(crate::domain::now())))
    }

    pub async fn get_connection(&self, id: ConnectionId) -> Result<ConnectionRow, StoreError> {
        let columns: ConnectionColumns = on_pool!(self, pool =>
            sqlx::query_as(SELECT_CONNECTION).bind(id.as_uuid()).fetch_one(pool).await)?;
        columns.try_into()
    }

    /// Up to `limit` connections in id (creation) order, after the filter's cursor.
    pub async fn list_connections(
        &self,
        filter: &ConnectionFilter,
        limit: u32,
    ) -> Result<Vec<ConnectionRow>, StoreError> {
        let sql = concat!(
            "SELECT ",
            connection_columns!(),
            " FROM connections \
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR region = $2) \
               AND ($3 IS NULL OR environment = $3) AND ($4 IS NULL OR merchant_token = $4) \
               AND ($5 IS NULL OR id > $5) \
             ORDER BY id LIMIT $6"
        );
        let rows: Vec<ConnectionColumns> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(filter.status.map(ConnectionStatus::as_str))
            .bind(filter.region.map(Region::as_str))
            .bind(filter.environment.map(Environment::as_str))
            .bind(filter.merchant_token.as_ref().map(MerchantToken::as_str))
            .bind(filter.after.map(|id| id.as_uuid()))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Writes every column of `row` if the stored row is still at `row.version - 1`:
    /// `Conflict` means someone else changed it since it was read. Every replica hears of
    /// the change when it commits.
    pub async fn update_connection(&self, row: &ConnectionRow) -> Result<(), StoreError> {
        let columns = ConnectionColumns::from(row);
        let id = row.connection.id;
        let updated = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let updated = bind_connection(sqlx::query(UPDATE_CONNECTION), columns)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 1 && self.backend() == Backend::Postgres {
                notify_change!(&mut *tx, id);
            }
            tx.commit().await?;
            updated
        });
        if updated == 1 {
            return Ok(());
        }
        // Tell "gone" from "changed under us".
        self.get_connection(id).await?;
        Err(StoreError::Conflict)
    }

    /// Deletes the connection, with its secrets, its token and the idempotency records
    /// that would replay its creation; every replica hears of it when it commits.
    pub async fn delete_connection(&self, id: ConnectionId) -> Result<(), StoreError> {
        let deleted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query("DELETE FROM connections WHERE id = $1")
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM idempotency_keys WHERE connection_id = $1")
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?;
            if deleted == 1 && self.backend() == Backend::Postgres {
                notify_change!(&mut *tx, id);
            }
            tx.commit().await?;
            deleted
        });
        match deleted {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    // ---- API keys ----

    pub async fn insert_api_key(&self, key: &ApiKey, hash: ApiKeyHash) -> Result<(), StoreError> {
        self.write_api_key(key, hash, "").await
    }

    /// Makes sure a key with this hash exists and is not revoked (the bootstrap key).
    pub async fn ensure_api_key(&self, key: &ApiKey, hash: ApiKeyHash) -> Result<(), StoreError> {
        let upsert = "ON CONFLICT (hash) DO UPDATE SET revoked_at = NULL, scopes = excluded.scopes";
        self.write_api_key(key, hash, upsert).await
    }

    async fn write_api_key(
        &self,
        key: &ApiKey,
        hash: ApiKeyHash,
        on_conflict: &str,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO api_keys (id, name, hash, prefix, scopes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) {on_conflict}"
        );
        let scopes: Vec<&str> = key.scopes.iter().map(|scope| scope.as_str()).collect();
        on_pool!(self, pool => sqlx::query(&sql)
            .bind(key.id.as_uuid())
            .bind(key.name.as_str())
            .bind(hash.to_base64())
            .bind(&key.prefix)
            .bind(Json(&scopes))
            .bind(key.created_at)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Every key that is not revoked, with its hash: what the verifier keeps in memory.
    pub async fn active_api_keys(&self) -> Result<Vec<(ApiKeyHash, ApiKey)>, StoreError> {
        let sql = "SELECT id, name, hash, prefix, scopes, created_at FROM api_keys \
                   WHERE revoked_at IS NULL ORDER BY id";
        let rows: Vec<ApiKeyColumns> =
            on_pool!(self, pool => sqlx::query_as(sql).fetch_all(pool).await)?;
        rows.into_iter()
            .map(ApiKeyColumns::into_hashed_key)
            .collect()
    }

    pub async fn find_active_api_key(
        &self,
        hash: ApiKeyHash,
    ) -> Result<Option<ApiKey>, StoreError> {
        let sql = "SELECT id, name, hash, prefix, scopes, created_at FROM api_keys \
                   WHERE hash = $1 AND revoked_at IS NULL";
        let row: Option<ApiKeyColumns> = on_pool!(self, pool =>
            sqlx::query_as(sql).bind(hash.to_base64()).fetch_optional(pool).await)?;
        row.map(|columns| columns.into_hashed_key().map(|(_, key)| key))
            .transpose()
    }

    pub async fn revoke_api_key(&self, id: ApiKeyId) -> Result<(), StoreError> {
        let sql = "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
        let revoked = on_pool!(self, pool => sqlx::query(sql)
            .bind(id.as_uuid())
            .bind(crate::domain::now())
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        match revoked {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    pub async fn has_api_keys(&self) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) FROM api_keys";
        let (count,): (i64,) = on_pool!(self, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
        Ok(count > 0)
    }
}
