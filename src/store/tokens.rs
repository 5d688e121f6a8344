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
    pub fn change_listener(&self) -> Option<ChangeListener> {
        match &self.pool {
            Pool::Postgres(pool) => Some(ChangeListener {
                pool: pool.clone(),
                listener: None,
                connected_before: false,
            }),
            Pool::Sqlite(_) => None,
        }
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
}

impl ChangeListener {
    /// The next change; reconnects (every second) while the database is unreachable.
    pub async fn next(&mut self) -> Change {
        loop {
            let listener = match &mut self.listener {
                Some(listener) => listener,
                None => match self.connect().await {
                    Ok(listener) => {
                        let listener = self.listener.insert(listener);
                        if std::mem::replace(&mut self.connected_before, true) {
                            return Change::MaybeMissed;
                        }
                        listener
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "cannot listen for changes yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            match listener.try_recv().await {
                Ok(Some(notification)) => match ConnectionId::parse(notification.payload()) {
                    Ok(id) => return Change::Connection(id),
                    Err(_) => tracing::warn!("ignoring a malformed change notification"),
                },
                // The connection dropped; reconnect on the next turn.
                Ok(None) | Err(_) => self.listener = None,
            }
        }
    }

    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(listener)
    }
}
