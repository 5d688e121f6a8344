//! The event record (`crate::events`): written by `insert_events!` inside the transaction
//! of each change, read newest first by the audit trail. And the token hand-out counts.

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{ApiKeyId, ConnectionId};

/// Rows per statement of a hand-out flush. A flush of a busy interval holds one row per
/// (key, connection, minute) handed out in it, 10,000 and more; a statement per row was as many
/// round trips (on SQLite, each a hand-off to its worker thread and back), on the cores
/// that serve tokens. 4 parameters a row keeps a statement far below either backend's
/// limit (SQLite 32,766, Postgres 65,535).
pub const HANDOUTS_PER_STATEMENT: usize = 1_000;

/// Inserts each `crate::events::NewEvent` of `$events` on `$executor` (a transaction's
/// connection), with a webhook delivery for each endpoint that takes its type; `?` on
/// failure: the change, its events and their deliveries commit together or not at all.
macro_rules! insert_events {
    ($executor:expr, $events:expr) => {
        for event in $events {
            let event: &$crate::events::NewEvent = event;
            sqlx::query(
                "INSERT INTO events (id, type, occurred_at, actor, target_type, target_id, \
                 connection_id, request_id, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(event.id)
            .bind(event.kind)
            .bind(event.occurred_at)
            .bind(&event.actor)
            .bind(event.target_type)
            .bind(&event.target_id)
            .bind(event.connection_id.map(|id| id.as_uuid()))
            .bind(event.request_id.as_deref())
            .bind(event.body.to_string())
            .execute(&mut *$executor)
            .await?;
            // Its webhook deliveries, queued with it: an event no transaction committed is
            // never sent.
            sqlx::query(
                "INSERT INTO webhook_deliveries \
                 (event_id, endpoint_id, status, attempts, next_attempt_at, created_at) \
                 SELECT $1, s.endpoint_id, 'pending', 0, $2, $2 FROM webhook_subscriptions s \
                 JOIN webhook_endpoints e ON e.id = s.endpoint_id \
                 WHERE s.event_type = $3 AND e.deleted_at IS NULL",
            )
            .bind(event.id)
            .bind(event.occurred_at)
            .bind(event.kind)
            .execute(&mut *$executor)
            .await?;
        }
    };
}

/// An event as the audit trail shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredEvent {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub target_type: String,
    pub target_id: String,
    pub connection_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub body: serde_json::Value,
}

/// Which events to list; `before` is the cursor (newest first).
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub connection_id: Option<ConnectionId>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before: Option<Uuid>,
}

/// An event row, in `SELECT id, type, occurred_at, actor, target_type, target_id,
/// connection_id, request_id, body` order.
type EventColumns = (
    Uuid,
    String,
    DateTime<Utc>,
    String,
    String,
    String,
    Option<Uuid>,
    Option<String>,
    String,
);

impl TryFrom<EventColumns> for StoredEvent {
    type Error = StoreError;

    fn try_from(columns: EventColumns) -> Result<Self, StoreError> {
        let (id, kind, occurred_at, actor, target_type, target_id, connection_id, request_id, body) =
            columns;
        let body = serde_json::from_str(&body)
            .map_err(|err| StoreError::Corrupt(format!("events.body: {err}")))?;
        Ok(Self {
            id,
            kind,
            occurred_at,
            actor,
            target_type,
            target_id,
            connection_id,
            request_id,
            body,
        })
    }
}

/// One row of the hand-out trail: how many tokens a key was handed for a connection in
/// one minute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Handouts {
    pub api_key_id: ApiKeyId,
    pub connection_id: ConnectionId,
    pub minute: DateTime<Utc>,
    pub count: i64,
}

impl Store {
    /// Events matching `filter`, newest first, at most `limit`.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = "SELECT id, type, occurred_at, actor, target_type, target_id, connection_id, \
                   request_id, body FROM events \
                   WHERE ($1 IS NULL OR connection_id = $1) AND ($2 IS NULL OR actor = $2) \
                     AND ($3 IS NULL OR type = $3) AND ($4 IS NULL OR occurred_at >= $4) \
                     AND ($5 IS NULL OR occurred_at < $5) AND ($6 IS NULL OR id < $6) \
                   ORDER BY id DESC LIMIT $7";
        let rows: Vec<EventColumns> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(filter.connection_id.map(|id| id.as_uuid()))
            .bind(filter.actor.as_deref())
            .bind(filter.kind.as_deref())
            .bind(filter.since)
            .bind(filter.until)
            .bind(filter.before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    /// Adds counted hand-outs to the trail, in one transaction of a few statements:
    /// `HANDOUTS_PER_STATEMENT` rows each. `counts` must hold each (key, connection,
    /// minute) once, as one statement may not update a row twice. Rows are written in
    /// primary-key order, so that two replicas flushing the same rows lock them in the
    /// same order (no deadlock).
    pub async fn add_handouts(&self, counts: &[Handouts]) -> Result<(), StoreError> {
        let mut in_key_order: Vec<&Handouts> = counts.iter().collect();
        in_key_order.sort_unstable_by_key(|row| (row.connection_id, row.minute, row.api_key_id));
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in in_key_order.chunks(HANDOUTS_PER_STATEMENT) {
                let mut query = QueryBuilder::new(
                    "INSERT INTO token_handouts (api_key_id, connection_id, minute, count) ",
                );
                query.push_values(chunk, |mut row, handouts| {
                    row.push_bind(handouts.api_key_id.as_uuid())
                        .push_bind(handouts.connection_id.as_uuid())
                        .push_bind(handouts.minute)
                        .push_bind(handouts.count);
                });
                query.push(
                    " ON CONFLICT (connection_id, minute, api_key_id) \
                     DO UPDATE SET count = token_handouts.count + excluded.count",
                );
                // Prepared afresh each flush (every few seconds), not kept: on SQLite a
                // 1,000-row statement kept prepared holds memory on every pooled
                // connection, and a short last one has a new text each time.
                query.build().persistent(false).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The hand-out trail of a connection and/or a key, newest minute first.
    pub async fn list_handouts(
        &self,
        connection_id: Option<ConnectionId>,
        api_key_id: Option<ApiKeyId>,
        limit: u32,
    ) -> Result<Vec<Handouts>, StoreError> {
        let sql = "SELECT api_key_id, connection_id, minute, count FROM token_handouts \
                   WHERE ($1 IS NULL OR connection_id = $1) AND ($2 IS NULL OR api_key_id = $2) \
                   ORDER BY minute DESC, connection_id, api_key_id LIMIT $3";
        let rows: Vec<(Uuid, Uuid, DateTime<Utc>, i64)> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(connection_id.map(|id| id.as_uuid()))
            .bind(api_key_id.map(|id| id.as_uuid()))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows
            .into_iter()
            .map(|(api_key_id, connection_id, minute, count)| Handouts {
                api_key_id: api_key_id.into(),
                connection_id: connection_id.into(),
                minute,
                count,
            })
            .collect())
    }
}

/// What the gauges at `/metrics` show, read in a few cheap queries.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub connections_by_status: Vec<(String, i64)>,
    pub soonest_secret_expiry: Option<DateTime<Utc>>,
    pub oldest_pending_delivery: Option<DateTime<Utc>>,
    /// Database connections open, and of those idle.
    pub pool_size: u32,
    pub pool_idle: usize,
}

impl Store {
    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        let connections_by_status: Vec<(String, i64)> = on_pool!(self, pool => sqlx::query_as(
                "SELECT status, COUNT(*) FROM connections GROUP BY status ORDER BY status",
            )
            .fetch_all(pool)
            .await)?;
        let (soonest_secret_expiry,): (Option<DateTime<Utc>>,) = on_pool!(self, pool =>
            sqlx::query_as("SELECT MIN(client_secret_expires_at) FROM connections")
                .fetch_one(pool)
                .await)?;
        let (oldest_pending_delivery,): (Option<DateTime<Utc>>,) = on_pool!(self, pool =>
            sqlx::query_as(
                "SELECT MIN(created_at) FROM webhook_deliveries WHERE status = 'pending'",
            )
            .fetch_one(pool)
            .await)?;
        let (pool_size, pool_idle) = on_pool!(self, pool => (pool.size(), pool.num_idle()));
        Ok(Gauges {
            connections_by_status,
            soonest_secret_expiry,
            oldest_pending_delivery,
            pool_size,
            pool_idle,
        })
    }
}
