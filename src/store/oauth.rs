//! Website authorization states: handed out with a consent URL, taken back (once) by the
//! callback. Only the state's SHA-256 is stored.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::ConnectionId;

/// One consent URL's state, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthState {
    pub state_hash: String,
    pub connection_id: ConnectionId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Store {
    /// Stores a new state, and drops states that expired before `now` (nobody can use
    /// them, and nothing else would ever remove them).
    pub async fn insert_oauth_state(
        &self,
        state: &OAuthState,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO oauth_states (state_hash, connection_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&state.state_hash)
            .bind(state.connection_id.as_uuid())
            .bind(state.created_at)
            .bind(state.expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Removes and returns the state with this hash, expired or not: whoever presents a
    /// state uses it up, so two callbacks with one state cannot both proceed.
    pub async fn take_oauth_state(
        &self,
        state_hash: &str,
    ) -> Result<Option<OAuthState>, StoreError> {
        let row: Option<(Uuid, DateTime<Utc>, DateTime<Utc>)> = on_pool!(self, pool =>
            sqlx::query_as(
                "DELETE FROM oauth_states WHERE state_hash = $1 \
                 RETURNING connection_id, created_at, expires_at",
            )
            .bind(state_hash)
            .fetch_optional(pool)
            .await)?;
        Ok(
            row.map(|(connection_id, created_at, expires_at)| OAuthState {
                state_hash: state_hash.to_owned(),
                connection_id: ConnectionId::from(connection_id),
                created_at,
                expires_at,
            }),
        )
    }

    /// How many states are outstanding for a connection (tests and operators).
    pub async fn count_oauth_states(&self, id: ConnectionId) -> Result<i64, StoreError> {
        let (count,): (i64,) = on_pool!(self, pool =>
            sqlx::query_as("SELECT COUNT(*) FROM oauth_states WHERE connection_id = $1")
                .bind(id.as_uuid())
                .fetch_one(pool)
                .await)?;
        Ok(count)
    }
}
