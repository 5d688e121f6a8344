//! Connection rows: insert (with its idempotency record), read, list, update, delete.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::rows::{ConnectionColumns, bind_connection};
use super::{
    Backend, ConnectionFilter, ConnectionRow, IdempotencyRecord, SELECT_CONNECTION, Store,
    StoreError, UPDATE_CONNECTION,
};
use crate::domain::{ApiKeyId, ConnectionId, ConnectionStatus, Environment, MerchantToken, Region};
use crate::events::NewEvent;

impl Store {
    /// Inserts a connection and, in the same transaction, the idempotency record that
    /// names it. `Conflict` when that idempotency key is already taken.
    pub async fn insert_connection(
        &self,
        row: &ConnectionRow,
        idempotency: Option<&IdempotencyRecord>,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        let insert = concat!(
            "INSERT INTO connections (",
            connection_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)"
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
            insert_events!(tx, events);
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
            sqlx::query_as(SELECT_CONNECTION)
                .bind(id.as_uuid())
                .fetch_one(pool)
                .await
                .map_err(|err| super::pool_error(err, pool)))?;
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
               AND ($7 IS NULL OR client_secret_expires_at < $7) \
             ORDER BY id LIMIT $6"
        );
        let rows: Vec<ConnectionColumns> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(filter.status.map(ConnectionStatus::as_str))
            .bind(filter.region.map(Region::as_str))
            .bind(filter.environment.map(Environment::as_str))
            .bind(filter.merchant_token.as_ref().map(MerchantToken::as_str))
            .bind(filter.after.map(|id| id.as_uuid()))
            .bind(i64::from(limit))
            .bind(filter.client_secret_expires_before)
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Writes every column of `row` if the stored row is still at `row.version - 1`:
    /// `Conflict` means someone else changed it since it was read. Every replica hears of
    /// the change when it commits.
    pub async fn update_connection(
        &self,
        row: &ConnectionRow,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        let columns = ConnectionColumns::from(row);
        let id = row.connection.id;
        let updated = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let updated = bind_connection(sqlx::query(UPDATE_CONNECTION), columns)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 1 {
                insert_events!(tx, events);
                if self.backend() == Backend::Postgres {
                    notify_change!(&mut *tx, id);
                }
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

    /// Deletes the connection, with its secrets, its token, its website authorization
    /// states and the idempotency records that would replay its creation; every replica
    /// hears of it when it commits.
    pub async fn delete_connection(
        &self,
        id: ConnectionId,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
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
            sqlx::query("DELETE FROM oauth_states WHERE connection_id = $1")
                .bind(id.as_uuid())
                .execute(&mut *tx)
                .await?;
            if deleted == 1 {
                insert_events!(tx, events);
                if self.backend() == Backend::Postgres {
                    notify_change!(&mut *tx, id);
                }
            }
            tx.commit().await?;
            deleted
        });
        match deleted {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }
}
