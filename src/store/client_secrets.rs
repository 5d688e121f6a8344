//! Every connection of one application (client id) at once: a new client secret or its
//! expiry lands on all of them in one transaction. And the SP-API notifications
//! forwarded so far, by id.

use chrono::{DateTime, Utc};

use super::rows::{ConnectionColumns, bind_connection};
use super::{Backend, ConnectionRow, Store, StoreError, UPDATE_CONNECTION};
use crate::domain::ClientId;

/// What a forwarded notification did, kept by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    pub notification_id: String,
    pub notification_type: String,
    pub client_id: String,
    /// `applied` or `ignored` (no connection uses the client id).
    pub outcome: String,
    pub connections: i64,
    pub received_at: DateTime<Utc>,
}

impl Store {
    /// Every connection using `client_id`, in id order.
    pub async fn connections_of_client(
        &self,
        client_id: &ClientId,
    ) -> Result<Vec<ConnectionRow>, StoreError> {
        let sql = concat!(
            "SELECT ",
            connection_columns!(),
            " FROM connections WHERE client_id = $1 ORDER BY id"
        );
        let rows: Vec<ConnectionColumns> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(client_id.as_str())
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Writes `rows`, connections of `client_id`, in one transaction: each only on the
    /// version before its own, and only if the client id still has `total` connections
    /// (none added or removed since they were read). `Conflict` otherwise, and nothing is
    /// written. Every replica hears of each change when it commits.
    pub async fn update_connections_of_client(
        &self,
        client_id: &ClientId,
        total: usize,
        rows: &[ConnectionRow],
    ) -> Result<(), StoreError> {
        let written = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let (count,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM connections WHERE client_id = $1")
                    .bind(client_id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            let mut all = usize::try_from(count).ok() == Some(total);
            for row in rows {
                if !all {
                    break;
                }
                let columns = ConnectionColumns::from(row);
                let updated = bind_connection(sqlx::query(UPDATE_CONNECTION), columns)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                all = updated == 1;
                if all && self.backend() == Backend::Postgres {
                    notify_change!(&mut *tx, row.connection.id);
                }
            }
            if all {
                tx.commit().await?;
            }
            all
        });
        if written {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    /// The record of a notification already forwarded, if any.
    pub async fn find_notification(
        &self,
        notification_id: &str,
    ) -> Result<Option<NotificationRecord>, StoreError> {
        let sql = "SELECT notification_id, notification_type, client_id, outcome, connections, \
                   received_at FROM spapi_notifications WHERE notification_id = $1";
        let row: Option<(String, String, String, String, i64, DateTime<Utc>)> = on_pool!(self, pool => sqlx::query_as(sql)
                .bind(notification_id)
                .fetch_optional(pool)
                .await)?;
        Ok(row.map(
            |(notification_id, notification_type, client_id, outcome, connections, received_at)| {
                NotificationRecord {
                    notification_id,
                    notification_type,
                    client_id,
                    outcome,
                    connections,
                    received_at,
                }
            },
        ))
    }

    /// Records a notification; `false` if its id was recorded already (a duplicate that
    /// arrived at the same time).
    pub async fn insert_notification(
        &self,
        record: &NotificationRecord,
    ) -> Result<bool, StoreError> {
        let sql = "INSERT INTO spapi_notifications \
                   (notification_id, notification_type, client_id, outcome, connections, \
                    received_at) VALUES ($1, $2, $3, $4, $5, $6) \
                   ON CONFLICT (notification_id) DO NOTHING";
        let inserted = on_pool!(self, pool => sqlx::query(sql)
            .bind(&record.notification_id)
            .bind(&record.notification_type)
            .bind(&record.client_id)
            .bind(&record.outcome)
            .bind(record.connections)
            .bind(record.received_at)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(inserted == 1)
    }
}
