//! Every connection of one application (client id) at once: a new client secret or its
//! expiry lands on all of them in one transaction, with the record of the notification
//! that brought it (so a notification is applied once). Targeted updates, compared on the
//! secret's ciphertext rather than the row's version: the hourly token writes of a large
//! application must not make a new secret fail.

use chrono::{DateTime, Utc};

use super::rows::ConnectionColumns;
use super::{Backend, ConnectionRow, Store, StoreError};
use crate::crypto::Sealed;
use crate::domain::{ClientId, ConnectionId, ConnectionStatus, SecretExpiry};
use crate::events::NewEvent;

/// One connection's new client secret, as `replace_client_secret` writes it.
#[derive(Debug, Clone)]
pub struct SecretChange {
    pub id: ConnectionId,
    /// The ciphertext the row must still hold: else its secret changed meanwhile.
    pub old: Sealed,
    pub new: Sealed,
    pub hint: String,
    pub updated_at: DateTime<Utc>,
    pub expiry: SecretExpiry,
    /// Until when the replaced secret is still tried.
    pub previous_until: DateTime<Utc>,
}

/// Inserts a `NotificationRecord` on `$executor` unless its id is there already: whether
/// it was inserted. (A macro: one statement for both backends' executors.)
macro_rules! insert_notification {
    ($executor:expr, $record:expr) => {{
        let record: &NotificationRecord = $record;
        sqlx::query(
            "INSERT INTO spapi_notifications \
             (notification_id, notification_type, client_id, outcome, connections, \
              received_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (notification_id) DO NOTHING",
        )
        .bind(&record.notification_id)
        .bind(&record.notification_type)
        .bind(&record.client_id)
        .bind(&record.outcome)
        .bind(record.connections)
        .bind(record.received_at)
        .execute($executor)
        .await?
        .rows_affected()
            == 1
    }};
}

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

    /// Stores a new client secret on connections of `client_id`, in one transaction:
    /// each secret in `changes` only if the row still holds the ciphertext it was read
    /// with (its version may have moved: token writes do not matter here), and only if
    /// the client id still has `total` connections. The replaced ciphertext becomes the
    /// previous secret; refused connections go back to `pending`; stored tokens are
    /// dropped. `notification`, if given, is recorded in the same transaction.
    ///
    /// `Ok(false)`: the notification was recorded before, and nothing was written.
    /// `Conflict`: something changed meanwhile, and nothing was written.
    pub async fn replace_client_secret(
        &self,
        client_id: &ClientId,
        total: usize,
        changes: &[SecretChange],
        notification: Option<&NotificationRecord>,
        events: &[NewEvent],
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE connections SET client_secret = $1, client_secret_hint = $2, \
                   client_secret_updated_at = $3, client_secret_expires_at = $4, \
                   client_secret_expires_at_estimated = $5, \
                   previous_client_secret = client_secret, previous_client_secret_until = $6, \
                   access_token = NULL, access_token_fetched_at = NULL, \
                   access_token_expires_at = NULL, \
                   last_error_code = CASE WHEN status IN ($9, $10) THEN NULL \
                     ELSE last_error_code END, \
                   last_error_message = CASE WHEN status IN ($9, $10) THEN NULL \
                     ELSE last_error_message END, \
                   last_error_at = CASE WHEN status IN ($9, $10) THEN NULL \
                     ELSE last_error_at END, \
                   status = CASE WHEN status IN ($9, $10) THEN $11 ELSE status END, \
                   version = version + 1, updated_at = $3 \
                   WHERE id = $7 AND client_secret = $8";
        // This transaction reads (the count) before it writes. On SQLite a deferred one
        // cannot then take the write lock if another connection wrote meanwhile: SQLITE_BUSY
        // at once, whatever busy_timeout says (concurrent replacements answered 500).
        // IMMEDIATE takes the write lock at BEGIN, waiting for it like any other write.
        let begin = match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        let written = on_pool!(self, pool => {
            let mut tx = pool.begin_with(begin).await?;
            if let Some(record) = notification {
                if !insert_notification!(&mut *tx, record) {
                    return Ok(false);
                }
            }
            let (count,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM connections WHERE client_id = $1")
                    .bind(client_id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            let mut all = usize::try_from(count).ok() == Some(total);
            for change in changes {
                if !all {
                    break;
                }
                let updated = sqlx::query(sql)
                    .bind(change.new.as_str())
                    .bind(&change.hint)
                    .bind(change.updated_at)
                    .bind(change.expiry.at)
                    .bind(change.expiry.estimated)
                    .bind(change.previous_until)
                    .bind(change.id.as_uuid())
                    .bind(change.old.as_str())
                    .bind(ConnectionStatus::ClientCredentialsInvalid.as_str())
                    .bind(ConnectionStatus::ClientSecretExpired.as_str())
                    .bind(ConnectionStatus::Pending.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                all = updated == 1;
                if all && self.backend() == Backend::Postgres {
                    notify_change!(&mut *tx, change.id);
                }
            }
            if all {
                insert_events!(tx, events);
                tx.commit().await?;
            }
            all
        });
        if written {
            Ok(true)
        } else {
            Err(StoreError::Conflict)
        }
    }

    /// Sets Amazon's expiry date on the connections of `client_id` whose secret was
    /// stored no later than `secret_stored_by` (a notice about an older secret must not
    /// date a newer one), recording `notification` in the same transaction. `None`: the
    /// notification was recorded before, and nothing was written. Otherwise how many
    /// connections changed.
    pub async fn set_client_secret_expiry(
        &self,
        client_id: &ClientId,
        expires_at: DateTime<Utc>,
        secret_stored_by: DateTime<Utc>,
        notification: &NotificationRecord,
        events: &[NewEvent],
    ) -> Result<Option<u64>, StoreError> {
        let sql = "UPDATE connections SET client_secret_expires_at = $1, \
                   client_secret_expires_at_estimated = $2, version = version + 1, \
                   updated_at = $3 \
                   WHERE client_id = $4 AND client_secret_updated_at <= $5 \
                     AND (client_secret_expires_at <> $1 \
                       OR client_secret_expires_at_estimated <> $2)";
        let changed = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if !insert_notification!(&mut *tx, notification) {
                return Ok(None);
            }
            let changed = sqlx::query(sql)
                .bind(expires_at)
                .bind(false)
                .bind(crate::domain::now())
                .bind(client_id.as_str())
                .bind(secret_stored_by)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            insert_events!(tx, events);
            tx.commit().await?;
            changed
        });
        // Other replicas need not hear of it: no token depends on the expiry date.
        Ok(Some(changed))
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

    /// Records a notification on its own (one about a client id no connection uses);
    /// `false` if its id was recorded already.
    pub async fn insert_notification(
        &self,
        record: &NotificationRecord,
    ) -> Result<bool, StoreError> {
        Ok(on_pool!(self, pool => insert_notification!(pool, record)))
    }
}
