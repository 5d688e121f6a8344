//! Connection rows: insert (with its idempotency record), read, list, update, delete.

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, QueryBuilder, Type};
use uuid::Uuid;

use super::rows::{ConnectionColumns, ConnectionResult, bind_connection};
use super::{
    Backend, ConnectionFilter, ConnectionRow, IdempotencyRecord, SELECT_CONNECTION, Store,
    StoreError, UPDATE_CONNECTION,
};
use crate::domain::{ApiKeyId, Connection, ConnectionId};
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
    ) -> Result<Vec<Connection>, StoreError> {
        // Not kept prepared: Postgres plans each run with its values (a rare status or a
        // short expiry range takes an index, a common one the id order), where a prepared
        // statement may settle on one generic plan for every value.
        let rows = on_pool!(self, pool => {
            let mut query = QueryBuilder::new(LIST_CONNECTIONS);
            push_list_filter(&mut query, filter, limit);
            let rows = query.build().persistent(false).fetch_all(pool).await?;
            ConnectionResult::connection_columns(&rows)?
        });
        rows.into_iter()
            .map(|row| ConnectionRow::try_from(row).map(|row| row.connection))
            .collect()
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

/// A list never reads the secrets: each page would carry about 1.5 KB of ciphertext per
/// row from the database only to drop it.
const LIST_CONNECTIONS: &str = concat!(
    "SELECT ",
    connection_columns!(without_secrets),
    " FROM connections"
);

/// Appends to `LIST_CONNECTIONS` a condition for each filter present (and only those, so
/// that the planner sees which index fits: see migrations/*/…_list_indexes.sql and
/// docs/performance-list.md), the id order and the limit. Every value is bound.
fn push_list_filter<'a, DB>(
    query: &mut QueryBuilder<'a, DB>,
    filter: &'a ConnectionFilter,
    limit: u32,
) where
    DB: Database,
    &'a str: Encode<'a, DB> + Type<DB>,
    Uuid: Encode<'a, DB> + Type<DB>,
    DateTime<Utc>: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut joiner = " WHERE ";
    let mut condition = |query: &mut QueryBuilder<'a, DB>, column: &str| {
        query.push(joiner).push(column);
        joiner = " AND ";
    };
    if let Some(status) = filter.status {
        condition(query, "status = ");
        query.push_bind(status.as_str());
    }
    if let Some(region) = filter.region {
        condition(query, "region = ");
        query.push_bind(region.as_str());
    }
    if let Some(environment) = filter.environment {
        condition(query, "environment = ");
        query.push_bind(environment.as_str());
    }
    if let Some(merchant_token) = &filter.merchant_token {
        condition(query, "merchant_token = ");
        query.push_bind(merchant_token.as_str());
    }
    if let Some(before) = filter.client_secret_expires_before {
        condition(query, "client_secret_expires_at < ");
        query.push_bind(before);
    }
    if let Some(after) = filter.after {
        condition(query, "id > ");
        query.push_bind(after.as_uuid());
    }
    query
        .push(" ORDER BY id LIMIT ")
        .push_bind(i64::from(limit));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConnectionStatus, Environment, MerchantToken, Region};

    fn where_clause(filter: &ConnectionFilter) -> String {
        let mut query = QueryBuilder::<sqlx::Postgres>::new(LIST_CONNECTIONS);
        push_list_filter(&mut query, filter, 51);
        query.sql()[LIST_CONNECTIONS.len()..].to_owned()
    }

    #[test]
    fn the_list_query_names_only_the_filters_given() {
        assert_eq!(
            where_clause(&ConnectionFilter::default()),
            " ORDER BY id LIMIT $1"
        );
        let status = ConnectionFilter {
            status: Some(ConnectionStatus::Active),
            ..ConnectionFilter::default()
        };
        assert_eq!(
            where_clause(&status),
            " WHERE status = $1 ORDER BY id LIMIT $2"
        );
        let every = ConnectionFilter {
            status: Some(ConnectionStatus::Active),
            region: Some(Region::Fe),
            environment: Some(Environment::Sandbox),
            merchant_token: Some(MerchantToken::parse("A1OTHERSELLER9").unwrap()),
            client_secret_expires_before: Some(crate::domain::now()),
            after: Some(ConnectionId::generate()),
        };
        assert_eq!(
            where_clause(&every),
            " WHERE status = $1 AND region = $2 AND environment = $3 AND merchant_token = $4 \
             AND client_secret_expires_at < $5 AND id > $6 ORDER BY id LIMIT $7"
        );
    }
}
