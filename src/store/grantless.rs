//! Grantless tokens: one per application (client id), scope and client secret (by its
//! fingerprint), sealed, shared by every connection of the application and every
//! replica. On Postgres a lease in the row lets
//! one fetch at a time call LWA, as `tokens.rs` does for connections.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::tokens::{Held, claim_within};
use super::{Pool, Store, StoreError, StoredToken, pool_error};
use crate::crypto::Sealed;
use crate::domain::{ClientId, GrantlessScope};

/// Which grantless token: the application, the scope, and the fingerprint of the client
/// secret it is fetched with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantlessKey {
    pub client_id: ClientId,
    pub scope: GrantlessScope,
    pub secret_fingerprint: String,
}

impl GrantlessKey {
    /// Whom the token's ciphertext belongs to (its authenticated data).
    pub fn owner(&self) -> String {
        grantless_owner(
            self.client_id.as_str(),
            self.scope.as_str(),
            &self.secret_fingerprint,
        )
    }
}

/// The owner of a grantless token's ciphertext, from its row's key columns.
pub fn grantless_owner(client_id: &str, scope: &str, secret_fingerprint: &str) -> String {
    format!("grantless:{client_id}:{scope}:{secret_fingerprint}")
}

type TokenColumns = (Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn stored(columns: TokenColumns) -> Option<StoredToken> {
    match columns {
        (Some(sealed), Some(fetched_at), Some(expires_at)) => Some(StoredToken {
            sealed: Sealed::from_stored(sealed),
            fetched_at,
            expires_at,
        }),
        _ => None,
    }
}

/// Claims the row's lease for `$4` for `$3` seconds (creating the row if need be) unless
/// another holder's lease is running; returns the stored token when claimed.
const CLAIM: &str = "INSERT INTO grantless_tokens \
    (client_id, scope, secret_fingerprint, lease_until, lease_holder) \
    VALUES ($1, $2, $5, now() + make_interval(secs => $3), $4) \
    ON CONFLICT (client_id, scope, secret_fingerprint) DO UPDATE \
    SET lease_until = excluded.lease_until, lease_holder = excluded.lease_holder \
    WHERE grantless_tokens.lease_until IS NULL OR grantless_tokens.lease_until < now() \
    RETURNING access_token, fetched_at, expires_at";

/// The right to fetch one application's grantless token for one scope.
pub struct GrantlessLease {
    key: GrantlessKey,
    held: Held,
}

impl Store {
    /// The stored grantless token for `key`, if any.
    pub async fn grantless_token(
        &self,
        key: &GrantlessKey,
    ) -> Result<Option<StoredToken>, StoreError> {
        let sql = "SELECT access_token, fetched_at, expires_at FROM grantless_tokens \
                   WHERE client_id = $1 AND scope = $2 AND secret_fingerprint = $3";
        let row: Option<TokenColumns> = on_pool!(self, pool => sqlx::query_as(sql)
            .bind(key.client_id.as_str())
            .bind(key.scope.as_str())
            .bind(&key.secret_fingerprint)
            .fetch_optional(pool)
            .await)?;
        Ok(row.and_then(stored))
    }

    /// Claims the lease, waiting while another fetch holds it (`Busy` after `wait`);
    /// returns the token stored by then.
    pub async fn lease_grantless(
        &self,
        key: &GrantlessKey,
        lease: Duration,
        wait: Duration,
    ) -> Result<(GrantlessLease, Option<StoredToken>), StoreError> {
        let pool = match &self.pool {
            Pool::Sqlite(pool) => {
                let token = self.grantless_token(key).await?;
                let lease = GrantlessLease {
                    key: key.clone(),
                    held: Held::Nothing(pool.clone()),
                };
                return Ok((lease, token));
            }
            Pool::Postgres(pool) => pool,
        };
        let holder = Uuid::new_v4();
        let columns = claim_within(wait, || async {
            let claimed: Option<TokenColumns> = sqlx::query_as(CLAIM)
                .bind(key.client_id.as_str())
                .bind(key.scope.as_str())
                .bind(lease.as_secs_f64())
                .bind(holder)
                .bind(&key.secret_fingerprint)
                .fetch_optional(pool)
                .await
                .map_err(|err| pool_error(err, pool))?;
            Ok(claimed)
        })
        .await?;
        let lease = GrantlessLease {
            key: key.clone(),
            held: Held::Lease {
                pool: pool.clone(),
                holder,
            },
        };
        Ok((lease, stored(columns)))
    }
}

impl GrantlessLease {
    /// Stores `token` and gives up the lease (on Postgres only while still holding it;
    /// `Conflict` if it ran out and another fetch took it).
    pub async fn write(mut self, token: &StoredToken) -> Result<(), StoreError> {
        let key = &self.key;
        match std::mem::replace(&mut self.held, Held::GivenUp) {
            Held::Nothing(pool) => {
                sqlx::query(
                    "INSERT INTO grantless_tokens \
                     (client_id, scope, secret_fingerprint, access_token, fetched_at, expires_at) \
                     VALUES ($1, $2, $6, $3, $4, $5) \
                     ON CONFLICT (client_id, scope, secret_fingerprint) DO UPDATE \
                     SET access_token = excluded.access_token, \
                     fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
                )
                .bind(key.client_id.as_str())
                .bind(key.scope.as_str())
                .bind(token.sealed.as_str())
                .bind(token.fetched_at)
                .bind(token.expires_at)
                .bind(&key.secret_fingerprint)
                .execute(&pool)
                .await?;
                Ok(())
            }
            Held::Lease { pool, holder } => {
                let written = sqlx::query(
                    "UPDATE grantless_tokens SET access_token = $3, fetched_at = $4, \
                     expires_at = $5, lease_until = NULL, lease_holder = NULL \
                     WHERE client_id = $1 AND scope = $2 AND secret_fingerprint = $7 \
                     AND lease_holder = $6",
                )
                .bind(key.client_id.as_str())
                .bind(key.scope.as_str())
                .bind(token.sealed.as_str())
                .bind(token.fetched_at)
                .bind(token.expires_at)
                .bind(holder)
                .bind(&key.secret_fingerprint)
                .execute(&pool)
                .await;
                match written {
                    Ok(done) if done.rows_affected() == 1 => Ok(()),
                    Ok(_) => Err(StoreError::Conflict),
                    Err(err) => {
                        // Not written: the lease is still ours to give up.
                        release(&pool, key, holder).await;
                        Err(err.into())
                    }
                }
            }
            Held::GivenUp => Ok(()),
        }
    }

    /// Gives up the lease without writing.
    pub async fn release(mut self) {
        if let Held::Lease { pool, holder } = std::mem::replace(&mut self.held, Held::GivenUp) {
            release(&pool, &self.key, holder).await;
        }
    }
}

/// Best effort: a lease not given up runs out by itself.
async fn release(pool: &PgPool, key: &GrantlessKey, holder: Uuid) {
    let released = sqlx::query(
        "UPDATE grantless_tokens SET lease_until = NULL, lease_holder = NULL \
         WHERE client_id = $1 AND scope = $2 AND secret_fingerprint = $4 \
         AND lease_holder = $3",
    )
    .bind(key.client_id.as_str())
    .bind(key.scope.as_str())
    .bind(holder)
    .bind(&key.secret_fingerprint)
    .execute(pool)
    .await;
    if let Err(err) = released {
        tracing::debug!(error = %err, "could not give up a grantless token lease; it will run out");
    }
}

/// A lease dropped on an error path is given up in the background.
impl Drop for GrantlessLease {
    fn drop(&mut self) {
        if let Held::Lease { pool, holder } = std::mem::replace(&mut self.held, Held::GivenUp) {
            let key = self.key.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { release(&pool, &key, holder).await });
            }
        }
    }
}
