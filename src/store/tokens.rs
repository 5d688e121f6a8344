//! What the token service needs beyond plain reads and writes: a per-connection lease
//! that lets one fetch of one replica at a time exchange the refresh token with LWA, and
//! the change notifications (sent by every connection write) that make every replica
//! drop a cached token at once.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use super::rows::{ConnectionColumns, bind_connection};
use super::{CHANGES_CHANNEL, ConnectionRow, Pool, Store, StoreError, UPDATE_CONNECTION};
use crate::domain::ConnectionId;
use crate::events::NewEvent;

/// Claims the lease of row `$1` for `$3` for `$2` seconds, recording `$4` as the holder's
/// session (0: none), unless another holder's lease is still running and its session
/// still exists; returns the row when claimed. Postgres's clock decides, so replicas'
/// clocks need not agree.
const CLAIM_LEASE: &str = concat!(
    "UPDATE connections SET token_lease_until = now() + make_interval(secs => $2), \
     token_lease_holder = $3, token_lease_session = NULLIF($4, 0) \
     WHERE id = $1 AND (token_lease_until IS NULL OR token_lease_until < now() \
       OR (token_lease_session IS NOT NULL AND NOT EXISTS \
           (SELECT 1 FROM pg_stat_activity a WHERE a.pid = token_lease_session))) \
     RETURNING ",
    connection_columns!()
);

/// `UPDATE_CONNECTION`, only while `$30` holds the lease, which it gives up.
static WRITE_UNDER_LEASE: LazyLock<String> = LazyLock::new(|| {
    UPDATE_CONNECTION.replace(
        " WHERE id = $1",
        ", token_lease_until = NULL, token_lease_holder = NULL, token_lease_session = NULL \
         WHERE token_lease_holder = $30 AND id = $1",
    )
});

const RELEASE_LEASE: &str = "UPDATE connections SET token_lease_until = NULL, \
    token_lease_holder = NULL, token_lease_session = NULL \
    WHERE id = $1 AND token_lease_holder = $2";

/// The right to exchange one connection's refresh token. On Postgres it is a lease in the
/// connection's row: no database connection is held while LWA answers, so slow LWA
/// exchanges cannot take the connections everything else needs. Other replicas' fetches
/// of the same connection wait for it to end, then find its token. On SQLite (one
/// process) the in-process single flight already serializes, and the lease is nothing.
pub struct TokenLease {
    id: ConnectionId,
    held: Held,
}

/// What a lease holds (shared by connection and grantless leases).
pub(super) enum Held {
    /// Postgres: the lease in the row, under this holder id, until written or released.
    Lease { pool: PgPool, holder: Uuid },
    /// SQLite: nothing to hold; the pool to write with.
    Nothing(sqlx::SqlitePool),
    /// Written or released.
    GivenUp,
}

impl Store {
    /// Claims `id`'s lease for `lease`, waiting while another fetch holds it: `Busy` after
    /// `wait`. Returns the row as it is once claimed (another replica may have stored a
    /// fresh token meanwhile).
    pub async fn lease_token(
        &self,
        id: ConnectionId,
        lease: Duration,
        wait: Duration,
    ) -> Result<(TokenLease, ConnectionRow), StoreError> {
        let pool = match &self.pool {
            Pool::Sqlite(pool) => {
                let row = self.get_connection(id).await?;
                let lease = TokenLease {
                    id,
                    held: Held::Nothing(pool.clone()),
                };
                return Ok((lease, row));
            }
            Pool::Postgres(pool) => pool,
        };
        let holder = Uuid::new_v4();
        let session = self.session.load(Ordering::SeqCst);
        let columns = claim_within(wait, || async {
            let claimed: Option<ConnectionColumns> = sqlx::query_as(CLAIM_LEASE)
                .bind(id.as_uuid())
                .bind(lease.as_secs_f64())
                .bind(holder)
                .bind(session)
                .fetch_optional(pool)
                .await
                .map_err(|err| super::pool_error(err, pool))?;
            if claimed.is_none() {
                // Held by another fetch, or gone.
                let exists: Option<(i64,)> =
                    sqlx::query_as("SELECT version FROM connections WHERE id = $1")
                        .bind(id.as_uuid())
                        .fetch_optional(pool)
                        .await
                        .map_err(|err| super::pool_error(err, pool))?;
                if exists.is_none() {
                    return Err(StoreError::NotFound);
                }
            }
            Ok(claimed)
        })
        .await?;
        let lease = TokenLease {
            id,
            held: Held::Lease {
                pool: pool.clone(),
                holder,
            },
        };
        Ok((lease, columns.try_into()?))
    }

    /// Postgres only (one SQLite process has no other replica): the change listener.
    /// `heartbeat`: after this long without a notification, the listener checks that its
    /// connection still answers, within the same time, and reconnects if not.
    pub fn change_listener(&self, heartbeat: Duration) -> Option<ChangeListener> {
        match &self.pool {
            Pool::Postgres(pool) => Some(ChangeListener {
                pool: pool.clone(),
                listener: None,
                heartbeat,
                session: self.session.clone(),
            }),
            Pool::Sqlite(_) => None,
        }
    }

    /// What a handed-out token reflects of those of `ids` that still exist (Postgres
    /// only; empty on SQLite, where no other process changes rows behind this one's
    /// back).
    pub async fn token_facts(
        &self,
        ids: &[ConnectionId],
    ) -> Result<Vec<(ConnectionId, TokenFacts)>, StoreError> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Vec::new());
        };
        let uuids: Vec<uuid::Uuid> = ids.iter().map(ConnectionId::as_uuid).collect();
        type Columns = (
            uuid::Uuid,
            String,
            Option<chrono::DateTime<chrono::Utc>>,
            String,
            sqlx::types::Json<Vec<String>>,
        );
        let rows: Vec<Columns> = sqlx::query_as(
            "SELECT id, status, access_token_fetched_at, merchant_token, marketplace_ids \
             FROM connections WHERE id = ANY($1)",
        )
        .bind(uuids)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, status, fetched_at, merchant_token, marketplace_ids)| {
                    let facts = TokenFacts {
                        status,
                        token_fetched_at: fetched_at,
                        merchant_token,
                        marketplace_ids: marketplace_ids.0,
                    };
                    (ConnectionId::from(id), facts)
                },
            )
            .collect())
    }
}

/// Tries `claim` until it claims something (`Some`), pausing 25 ms, doubling up to
/// 250 ms, in between: `Busy` once `wait` would pass.
pub(super) async fn claim_within<T, Fut>(
    wait: Duration,
    mut claim: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(25);
    loop {
        if let Some(claimed) = claim().await? {
            return Ok(claimed);
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(StoreError::Busy);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

impl TokenLease {
    /// A version-checked write that gives up the lease, like `Store::update_connection`;
    /// `Conflict` if the row changed (or went) since it was read, or the lease ran out
    /// and another fetch took it. With `announce`, every replica hears of the change when
    /// it commits.
    pub async fn write(
        mut self,
        row: &ConnectionRow,
        announce: bool,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        let columns = ConnectionColumns::from(row);
        let (pool, holder) = match std::mem::replace(&mut self.held, Held::GivenUp) {
            Held::Lease { pool, holder } => (pool, holder),
            Held::Nothing(pool) => {
                let mut tx = pool.begin().await?;
                let updated = bind_connection(sqlx::query(UPDATE_CONNECTION), columns)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated != 1 {
                    return Err(StoreError::Conflict);
                }
                insert_events!(tx, events);
                tx.commit().await?;
                return Ok(());
            }
            Held::GivenUp => unreachable!("write and release take the lease by value"),
        };
        let written = async {
            let mut tx = pool.begin().await?;
            let updated = bind_connection(sqlx::query(&WRITE_UNDER_LEASE), columns)
                .bind(holder)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated != 1 {
                return Err(StoreError::Conflict);
            }
            insert_events!(tx, events);
            if announce {
                notify_change!(&mut *tx, self.id);
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        if written.is_err() {
            // Not written: the lease is still ours to give up.
            release(&pool, self.id, holder).await;
        }
        written
    }

    /// Gives up the lease without writing.
    pub async fn release(mut self) {
        if let Held::Lease { pool, holder } = std::mem::replace(&mut self.held, Held::GivenUp) {
            release(&pool, self.id, holder).await;
        }
    }
}

/// Best effort: a lease not given up runs out by itself.
async fn release(pool: &PgPool, id: ConnectionId, holder: Uuid) {
    let released = sqlx::query(RELEASE_LEASE)
        .bind(id.as_uuid())
        .bind(holder)
        .execute(pool)
        .await;
    if let Err(err) = released {
        tracing::debug!(connection_id = %id, error = %err, "could not give up a token lease; it will run out");
    }
}

/// A lease dropped on an error path is given up in the background.
impl Drop for TokenLease {
    fn drop(&mut self) {
        if let Held::Lease { pool, holder } = std::mem::replace(&mut self.held, Held::GivenUp) {
            let id = self.id;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { release(&pool, id, holder).await });
            }
        }
    }
}

/// The columns of a connection that a handed-out token reflects: if any differs from the
/// cached grant, the grant is out of date. (A write of `last_error` alone changes none.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    pub status: String,
    pub token_fetched_at: Option<chrono::DateTime<chrono::Utc>>,
    pub merchant_token: String,
    pub marketplace_ids: Vec<String>,
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
    heartbeat: Duration,
    /// The listener's backend pid while it is connected (0 when not): the session that
    /// stands for this replica in the token leases it holds.
    session: Arc<AtomicI32>,
}

impl ChangeListener {
    /// Connects before the replica serves, so nothing it caches can predate its
    /// listening. `false` if the database did not answer in time: `next` keeps trying.
    pub async fn connect_before_serving(&mut self) -> bool {
        match self.connect().await {
            Ok(Ok(listener)) => {
                self.listener = Some(listener);
                true
            }
            _ => false,
        }
    }

    /// The next change; reconnects (every second) while the database is unreachable.
    ///
    /// A link can die silently (a NAT or load balancer forgetting an idle connection, a
    /// half-open socket after a failover): no error, just no more notifications. So a
    /// quiet link is asked `SELECT 1` every `heartbeat`, and one that does not answer
    /// within `heartbeat` is replaced. Every connection made here, the first one included
    /// (the replica was serving, and caching, meanwhile), reports `MaybeMissed`.
    pub async fn next(&mut self) -> Change {
        loop {
            let listener = match &mut self.listener {
                Some(listener) => listener,
                None => match self.connect().await {
                    Ok(Ok(listener)) => {
                        self.listener = Some(listener);
                        return Change::MaybeMissed;
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
                Ok(Ok(None) | Err(_)) => self.lose_link(),
                Err(_quiet) => {
                    let ping = sqlx::query("SELECT 1").execute(&mut *listener);
                    if !matches!(tokio::time::timeout(self.heartbeat, ping).await, Ok(Ok(_))) {
                        tracing::warn!(
                            "the change listener's database connection stopped answering; \
                             reconnecting"
                        );
                        self.lose_link();
                    }
                }
            }
        }
    }

    /// The link is gone: leases claimed from now on name no session until it is back.
    fn lose_link(&mut self) {
        self.listener = None;
        self.session.store(0, Ordering::SeqCst);
    }

    async fn connect(
        &self,
    ) -> Result<Result<PgListener, sqlx::Error>, tokio::time::error::Elapsed> {
        // A connection of its own, freshly opened: one from the shared pool may sit on the
        // same dead link the heartbeat just gave up on.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        tokio::time::timeout(self.heartbeat.max(Duration::from_secs(1)), async {
            let mut listener = PgListener::connect_with(&own).await?;
            // A lost link must come back through `next`, which reports `MaybeMissed`, not
            // be mended quietly inside `try_recv` or the heartbeat's query.
            listener.eager_reconnect(false);
            let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
                .fetch_one(&mut listener)
                .await?;
            listener.listen(CHANGES_CHANNEL).await?;
            self.session.store(pid, Ordering::SeqCst);
            Ok(listener)
        })
        .await
    }
}
