//! Webhook endpoints and their deliveries. A delivery is queued with its event
//! (`insert_events!`); a replica claims due ones for a short while, sends them and
//! records the outcome. And the client-secret expiry warnings already given.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Backend, Store, StoreError, StoredEvent};
use crate::crypto::Sealed;
use crate::domain::{ConnectionId, now};
use crate::events::NewEvent;

/// An endpoint as stored.
#[derive(Debug, Clone)]
pub struct WebhookEndpointRow {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    pub secret: Sealed,
    pub event_types: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A delivery as `GET /webhook-endpoints/{id}/deliveries` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRecord {
    pub event_id: Uuid,
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (given up after 24 hours, or the endpoint was
    /// deleted).
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A delivery claimed for sending, with what it needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub url: String,
    pub secret: Sealed,
    pub endpoint_deleted: bool,
    pub event: super::StoredEvent,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    Delivered,
    Retry { at: DateTime<Utc> },
    Failed,
}

type EndpointColumns = (Uuid, String, Option<String>, String, DateTime<Utc>);

/// A claimed delivery with its endpoint, then its event's columns (one row).
type DueColumns = (
    Uuid,
    Uuid,
    i32,
    DateTime<Utc>,
    String,
    String,
    Option<DateTime<Utc>>,
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

impl Store {
    pub async fn insert_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpointRow,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, url, description, secret, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(endpoint.id)
            .bind(&endpoint.url)
            .bind(endpoint.description.as_deref())
            .bind(endpoint.secret.as_str())
            .bind(endpoint.created_at)
            .execute(&mut *tx)
            .await?;
            for event_type in &endpoint.event_types {
                sqlx::query(
                    "INSERT INTO webhook_subscriptions (endpoint_id, event_type) VALUES ($1, $2)",
                )
                .bind(endpoint.id)
                .bind(event_type)
                .execute(&mut *tx)
                .await?;
            }
            insert_events!(tx, events);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Endpoints not deleted, oldest first.
    pub async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpointRow>, StoreError> {
        let rows: Vec<EndpointColumns> = on_pool!(self, pool =>
            sqlx::query_as(
                "SELECT id, url, description, secret, created_at FROM webhook_endpoints \
                 WHERE deleted_at IS NULL ORDER BY id",
            )
            .fetch_all(pool)
            .await)?;
        let subscriptions: Vec<(Uuid, String)> = on_pool!(self, pool =>
            sqlx::query_as(
                "SELECT endpoint_id, event_type FROM webhook_subscriptions ORDER BY event_type",
            )
            .fetch_all(pool)
            .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, url, description, secret, created_at)| WebhookEndpointRow {
                    id,
                    url,
                    description,
                    secret: Sealed::from_stored(secret),
                    event_types: subscriptions
                        .iter()
                        .filter(|(endpoint, _)| *endpoint == id)
                        .map(|(_, event_type)| event_type.clone())
                        .collect(),
                    created_at,
                },
            )
            .collect())
    }

    /// Deletes an endpoint (it stays for its deliveries' history); its pending
    /// deliveries fail. `NotFound` if there is no such endpoint.
    pub async fn delete_webhook_endpoint(
        &self,
        id: Uuid,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        let deleted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query(
                "UPDATE webhook_endpoints SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deleted == 1 {
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'failed', \
                     last_error = 'the endpoint was deleted' \
                     WHERE endpoint_id = $1 AND status = 'pending'",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                insert_events!(tx, events);
            }
            tx.commit().await?;
            deleted
        });
        match deleted {
            1 => Ok(()),
            _ => Err(StoreError::NotFound),
        }
    }

    /// The endpoint's most recent deliveries, newest first; `NotFound` for an unknown
    /// endpoint.
    pub async fn webhook_deliveries(
        &self,
        endpoint_id: Uuid,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let (known,): (i64,) = on_pool!(self, pool =>
            sqlx::query_as("SELECT COUNT(*) FROM webhook_endpoints WHERE id = $1")
                .bind(endpoint_id)
                .fetch_one(pool)
                .await)?;
        if known == 0 {
            return Err(StoreError::NotFound);
        }
        type Row = (
            Uuid,
            String,
            String,
            i32,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            Option<i32>,
            Option<String>,
            DateTime<Utc>,
        );
        let rows: Vec<Row> = on_pool!(self, pool => sqlx::query_as(
                "SELECT d.event_id, e.type, d.status, d.attempts, d.next_attempt_at, \
                 d.last_attempt_at, d.last_status, d.last_error, d.created_at \
                 FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
                 WHERE d.endpoint_id = $1 ORDER BY d.created_at DESC, d.event_id DESC LIMIT $2",
            )
            .bind(endpoint_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    event_id,
                    event_type,
                    status,
                    attempts,
                    next,
                    last,
                    last_status,
                    last_error,
                    created_at,
                )| {
                    DeliveryRecord {
                        next_attempt_at: (status == "pending").then_some(next),
                        event_id,
                        event_type,
                        status,
                        attempts,
                        last_attempt_at: last,
                        last_status,
                        last_error,
                        created_at,
                    }
                },
            )
            .collect())
    }

    /// Claims up to `limit` due deliveries for `lock_secs` seconds: no other replica
    /// sends them meanwhile (Postgres: `FOR UPDATE SKIP LOCKED`; SQLite has one writer).
    pub async fn claim_due_deliveries(
        &self,
        limit: u32,
        lock_secs: i64,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let now = now();
        let lock_until = now + chrono::Duration::seconds(lock_secs);
        let pick = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let claim = format!(
            "UPDATE webhook_deliveries SET locked_until = $2 \
             WHERE (event_id, endpoint_id) IN (SELECT event_id, endpoint_id \
               FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
               AND (locked_until IS NULL OR locked_until < $1) \
               ORDER BY next_attempt_at LIMIT $3{pick}) \
             RETURNING event_id, endpoint_id"
        );
        let claimed: Vec<(Uuid, Uuid)> = on_pool!(self, pool => sqlx::query_as(&claim)
            .bind(now)
            .bind(lock_until)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        let mut due = Vec::with_capacity(claimed.len());
        for (event_id, endpoint_id) in claimed {
            let row: Option<DueColumns> = on_pool!(self, pool => sqlx::query_as(
                    "SELECT d.event_id, d.endpoint_id, d.attempts, d.created_at, w.url, w.secret, \
                     w.deleted_at, e.id, e.type, e.occurred_at, e.actor, e.target_type, \
                     e.target_id, e.connection_id, e.request_id, e.body \
                     FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id \
                     JOIN events e ON e.id = d.event_id \
                     WHERE d.event_id = $1 AND d.endpoint_id = $2",
                )
                .bind(event_id)
                .bind(endpoint_id)
                .fetch_optional(pool)
                .await)?;
            let Some((
                event_id,
                endpoint_id,
                attempts,
                created_at,
                url,
                secret,
                deleted_at,
                id,
                kind,
                occurred_at,
                actor,
                target_type,
                target_id,
                connection_id,
                request_id,
                body,
            )) = row
            else {
                continue;
            };
            due.push(DueDelivery {
                event_id,
                endpoint_id,
                attempts,
                created_at,
                url,
                secret: Sealed::from_stored(secret),
                endpoint_deleted: deleted_at.is_some(),
                event: StoredEvent::try_from((
                    id,
                    kind,
                    occurred_at,
                    actor,
                    target_type,
                    target_id,
                    connection_id,
                    request_id,
                    body,
                ))?,
            });
        }
        Ok(due)
    }

    /// Records one attempt and releases the claim.
    pub async fn record_delivery_attempt(
        &self,
        delivery: &DueDelivery,
        outcome: &AttemptOutcome,
        status_code: Option<u16>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now();
        let (status, next) = match outcome {
            AttemptOutcome::Delivered => ("delivered", now),
            AttemptOutcome::Retry { at } => ("pending", *at),
            AttemptOutcome::Failed => ("failed", now),
        };
        on_pool!(self, pool => sqlx::query(
                "UPDATE webhook_deliveries SET status = $3, attempts = attempts + 1, \
                 next_attempt_at = $4, locked_until = NULL, last_attempt_at = $5, \
                 last_status = $6, last_error = $7 \
                 WHERE event_id = $1 AND endpoint_id = $2",
            )
            .bind(delivery.event_id)
            .bind(delivery.endpoint_id)
            .bind(status)
            .bind(next)
            .bind(now)
            .bind(status_code.map(i32::from))
            .bind(error)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Connections whose client secret expires within `days` that were not warned about
    /// at `days` for that expiry yet: (id, expiry).
    pub async fn secrets_to_warn(
        &self,
        days: i32,
    ) -> Result<Vec<(ConnectionId, DateTime<Utc>)>, StoreError> {
        let now = now();
        let rows: Vec<(Uuid, DateTime<Utc>)> = on_pool!(self, pool => sqlx::query_as(
                "SELECT c.id, c.client_secret_expires_at FROM connections c \
                 WHERE c.client_secret_expires_at <= $1 AND c.client_secret_expires_at > $2 \
                 AND NOT EXISTS (SELECT 1 FROM secret_expiry_warnings w \
                   WHERE w.connection_id = c.id AND w.expires_at = c.client_secret_expires_at \
                   AND w.days_ahead = $3) ORDER BY c.id LIMIT 1000",
            )
            .bind(now + chrono::Duration::days(i64::from(days)))
            .bind(now)
            .bind(days)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(|(id, at)| (id.into(), at)).collect())
    }

    /// Records one warning with its event, once (another replica may have given it).
    pub async fn record_secret_warning(
        &self,
        id: ConnectionId,
        expires_at: DateTime<Utc>,
        days: i32,
        events: &[NewEvent],
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO secret_expiry_warnings (connection_id, expires_at, days_ahead) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(id.as_uuid())
            .bind(expires_at)
            .bind(days)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                insert_events!(tx, events);
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
