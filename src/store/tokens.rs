//! What the token service needs beyond plain reads and writes: a per-connection lock that
//! spans replicas while one of them talks to LWA, and the change notifications (sent by
//! every connection write) that make every replica drop a cached token at once.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, SqlitePool, Transaction};

use super::rows::{ConnectionColumns, bind_connection};
use super::{CHANGES_CHANNEL, Pool, SELECT_CONNECTION, Store, StoreError, UPDATE_CONNECTION};
use crate::domain::ConnectionId;

/// The right to exchange one connection's refresh token. On Postgres it is a transaction
/// holding an advisory lock, so replicas take turns and the later ones find the earlier
/// one's token; on SQLite (one process) the in-process single flight already serializes.
pub struct TokenLock {
    conn: LockConn,
}

enum LockConn {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$exec` bound to the lock's transaction or pool.
macro_rules! on_lock {
    ($lock:expr, $exec:ident => $body:expr) => {
        match &mut $lock.conn {
            LockConn::Postgres(tx) => {
                let $exec = &mut **tx;
                $body
            }
            LockConn::Sqlite(pool) => {
                let $exec = &*pool;
                $body
            }
        }
    };
}

impl Store {
    /// Waits until no other replica is exchanging this connection's token; `Busy` after
    /// `wait`.
    pub async fn lock_for_token(
        &self,
        id: ConnectionId,
        wait: Duration,
    ) -> Result<TokenLock, StoreError> {
        let conn = match &self.pool {
            Pool::Postgres(pool) => {
                let mut tx = self.token_locks.as_ref().unwrap_or(pool).begin().await?;
                // Whole milliseconds: SET takes no bind parameters.
                sqlx::query(&format!(
                    "SET LOCAL lock_timeout = {}",
                    wait.as_millis().max(1)
                ))
                .execute(&mut *tx)
                .await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(advisory_key(id))
                    .execute(&mut *tx)
                    .await?;
                LockConn::Postgres(tx)
            }
            Pool::Sqlite(pool) => LockConn::Sqlite(pool.clone()),
        };
        Ok(TokenLock { conn })
    }

    /// Change notifications from every replica; `None` on SQLite.
    /// Postgres only (one SQLite process has no other replica): the change listener.
    /// `heartbeat`: after this long without a notification, the listener checks that its
    /// connection still answers, within the same time, and reconnects if not.
    pub fn change_listener(&self, heartbeat: Duration) -> Option<ChangeListener> {
        match &self.pool {
            Pool::Postgres(pool) => Some(ChangeListener {
                pool: pool.clone(),
                listener: None,
                connected_before: false,
                heartbeat,
            }),
            Pool::Sqlite(_) => None,
        }
    }

    /// The current versions of those of `ids` that still exist (Postgres only; empty on
    /// SQLite, where no other process changes rows behind this one's back).
    pub async fn connection_versions(
        &self,
        ids: &[ConnectionId],
    ) -> Result<Vec<(ConnectionId, i64)>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        let uuids: Vec<uuid::Uuid> = ids.iter().map(ConnectionId::as_uuid).collect();
        let rows: Vec<(uuid::Uuid, i64)> =
            sqlx::query_as("SELECT id, version FROM connections WHERE id = ANY($1)")
                .bind(uuids)
                .fetch_all(pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, version)| (ConnectionId::from(id), version))
            .collect())
    }
}

impl TokenLock {
    pub async fn read(&mut self, id: ConnectionId) -> Result<super::ConnectionRow, StoreError> {
        let columns: ConnectionColumns = on_lock!(self, exec =>
            sqlx::query_as(SELECT_CONNECTION).bind(id.as_uuid()).fetch_one(exec).await)?;
        columns.try_into()
    }

    /// A version-checked write, like `Store::update_connection`; `Conflict` if the row
    /// changed (or went) since it was read.
    pub async fn write(&mut self, row: &super::ConnectionRow) -> Result<(), StoreError> {
        let columns = ConnectionColumns::from(row);
        let updated = on_lock!(self, exec => bind_connection(sqlx::query(UPDATE_CONNECTION), columns)
            .execute(exec)
            .await
            .map(|done| done.rows_affected()))?;
        match updated {
            1 => Ok(()),
            _ => Err(StoreError::Conflict),
        }
    }

    /// Every replica hears of this connection's change when the lock is released.
    pub async fn announce_change(&mut self, id: ConnectionId) -> Result<(), StoreError> {
        if let LockConn::Postgres(tx) = &mut self.conn {
            notify_change!(&mut **tx, id);
        }
        Ok(())
    }

    /// Commits what was written and lets the next replica in.
    pub async fn release(self) -> Result<(), StoreError> {
        if let LockConn::Postgres(tx) = self.conn {
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Postgres advisory locks take one 64-bit key; a UUIDv7's last 8 bytes are random.
fn advisory_key(id: ConnectionId) -> i64 {
    let bytes = id.as_uuid().into_bytes();
    i64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"))
}

#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Connection(ConnectionId),
    /// The listener reconnected: notifications may have been missed meanwhile.
    MaybeMissed,
}

pub struct ChangeListener {
    pool: PgPool,
    listener: Option<PgListener>,
    connected_before: bool,
    heartbeat: Duration,
}

impl ChangeListener {
    /// The next change; reconnects (every second) while the database is unreachable.
    ///
    /// A link can die silently (a NAT or load balancer forgetting an idle connection, a
    /// half-open socket after a failover): no error, just no more notifications. So a
    /// quiet link is asked `SELECT 1` every `heartbeat`, and one that does not answer
    /// within `heartbeat` is replaced; the reconnect reports `MaybeMissed`.
    pub async fn next(&mut self) -> Change {
        loop {
            let listener = match &mut self.listener {
                Some(listener) => listener,
                None => match self.connect().await {
                    Ok(Ok(listener)) => {
                        let listener = self.listener.insert(listener);
                        if std::mem::replace(&mut self.connected_before, true) {
                            return Change::MaybeMissed;
                        }
                        listener
                    }
                    failed => {
                        let reason = match failed {
                            Ok(Err(err)) => err.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        tracing::debug!(error = reason, "cannot listen for changes yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            match tokio::time::timeout(self.heartbeat, listener.try_recv()).await {
                Ok(Ok(Some(notification))) => match ConnectionId::parse(notification.payload()) {
                    Ok(id) => return Change::Connection(id),
                    Err(_) => tracing::warn!("ignoring a malformed change notification"),
                },
                // The connection dropped; reconnect on the next turn.
                Ok(Ok(None) | Err(_)) => self.listener = None,
                Err(_quiet) => {
                    let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                    if !matches!(tokio::time::timeout(self.heartbeat, ping).await, Ok(Ok(_))) {
                        tracing::warn!(
                            "the change listener's database connection stopped answering; \
                             reconnecting"
                        );
                        self.listener = None;
                    }
                }
            }
        }
    }

    async fn connect(
        &self,
    ) -> Result<Result<PgListener, sqlx::Error>, tokio::time::error::Elapsed> {
        tokio::time::timeout(self.heartbeat.max(Duration::from_secs(1)), async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(CHANGES_CHANNEL).await?;
            Ok(listener)
        })
        .await
    }
}
