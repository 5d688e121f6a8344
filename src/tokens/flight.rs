//! One fetch of one connection's token, shared by every caller in this process that
//! needs it at the same time.
//!
//! A fetch first reads the row without any lock: usually the token some replica stored
//! will do. Only when LWA must be called does it take the cross-replica lock, re-read,
//! and then exchange the refresh token, store the new token sealed and record what LWA
//! said.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::{BoxFuture, FutureExt, Shared};

use super::{Grant, Need, TokenError, TokenService};
use crate::amazon::lwa::LwaError;
use crate::crypto::{Field, Sealed};
use crate::domain::{
    AccessToken, ClientSecret, ConnectionId, ConnectionStatus, LastError, RefreshToken, now,
};
use crate::store::{ConnectionRow, StoreError, StoredToken};

pub(super) type Flight = Shared<BoxFuture<'static, Result<Arc<Grant>, TokenError>>>;

/// The fetches under way, one per connection at most.
#[derive(Default)]
pub(super) struct Flights {
    under_way: Mutex<HashMap<ConnectionId, (u64, Flight)>>,
    numbers: AtomicU64,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, (u64, Flight)>> {
        self.under_way.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Later callers start a new fetch instead of joining the one under way (after an
    /// invalidation, that one may bring back what the old credentials gave).
    pub fn detach(&self, id: ConnectionId) {
        self.lock().remove(&id);
    }
}

/// Removes a finished fetch from `Flights`, even if it panicked.
struct Landing {
    service: TokenService,
    id: ConnectionId,
    number: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut under_way = self.service.inner.flights.lock();
        if under_way
            .get(&self.id)
            .is_some_and(|(n, _)| *n == self.number)
        {
            under_way.remove(&self.id);
        }
    }
}

/// The fetch under way for `id`, or a new one serving `need`.
pub(super) fn join_or_start(service: &TokenService, id: ConnectionId, need: Need) -> Flight {
    let flights = &service.inner.flights;
    let mut under_way = flights.lock();
    if let Some((_, flight)) = under_way.get(&id) {
        return flight.clone();
    }
    let number = flights.numbers.fetch_add(1, Ordering::Relaxed);
    let landing = Landing {
        service: service.clone(),
        id,
        number,
    };
    // Spawned, so a caller that gives up does not cancel the others' fetch.
    let task = tokio::spawn(async move {
        let result = run(&landing.service, id, need).await;
        drop(landing);
        result
    });
    let flight = async move {
        task.await.unwrap_or_else(|_| {
            Err(TokenError::Upstream(LwaError::Protocol(
                "the token fetch failed unexpectedly".into(),
            )))
        })
    }
    .boxed()
    .shared();
    under_way.insert(id, (number, flight.clone()));
    flight
}

async fn run(
    service: &TokenService,
    id: ConnectionId,
    need: Need,
) -> Result<Arc<Grant>, TokenError> {
    let cache = &service.inner.cache;
    let stamp = cache.stamp(id);
    let mut result = fetch(service, id, need).await;
    // A PATCH landed between our read and our write: the token may stem from the old
    // credentials. Start over once from the new row.
    if matches!(&result, Err(TokenError::Store(err)) if matches!(**err, StoreError::Conflict)) {
        result = fetch(service, id, need).await;
    }
    match &result {
        Ok(grant) => cache.store(id, grant, stamp),
        Err(TokenError::NotAuthorized(_) | TokenError::NotFound) => cache.remove(id),
        Err(_) => {}
    }
    result
}

async fn fetch(
    service: &TokenService,
    id: ConnectionId,
    need: Need,
) -> Result<Arc<Grant>, TokenError> {
    let inner = &service.inner;
    let now = now();
    // No lock to read: most fetches end here, with a token another fetch stored.
    let row = inner.store.get_connection(id).await?;
    if let Some(grant) = settle_without_lwa(service, &row, need, now)? {
        return Ok(grant);
    }
    let mut lock = inner
        .store
        .lock_for_token(id, inner.settings.lock_wait)
        .await?;
    // Another replica may have fetched while we waited for the lock.
    let mut row = lock.read(id).await?;
    match settle_without_lwa(service, &row, need, now) {
        Ok(None) => {}
        Ok(Some(grant)) => {
            lock.release().await?;
            return Ok(grant);
        }
        Err(err) => {
            lock.release().await?;
            return Err(err);
        }
    }

    let client_secret =
        ClientSecret::from_stored(open(service, id, Field::ClientSecret, &row.client_secret)?);
    let refresh_token =
        RefreshToken::from_stored(open(service, id, Field::RefreshToken, &row.refresh_token)?);
    let exchanged = inner
        .lwa
        .refresh(&row.connection.client_id, &client_secret, &refresh_token)
        .await;
    let before = row.connection.clone();
    row.version += 1;
    let outcome = match exchanged {
        Ok(lwa_grant) => {
            let token = lwa_grant.access_token;
            row.access_token = Some(StoredToken {
                sealed: inner
                    .keyring
                    .seal(&id.to_string(), Field::AccessToken, token.expose()),
                fetched_at: token.fetched_at,
                expires_at: token.expires_at,
            });
            if let Some(new_refresh) = lwa_grant
                .refresh_token
                .filter(|new| new.expose() != refresh_token.expose())
            {
                tracing::info!(connection_id = %id, "LWA issued a new refresh token; storing it");
                row.refresh_token =
                    inner
                        .keyring
                        .seal(&id.to_string(), Field::RefreshToken, new_refresh.expose());
            }
            // `authorized_at` is when the connection became usable, or was authorized on
            // request: not every hourly refresh.
            if row.connection.status != ConnectionStatus::Active || need.ignore_status {
                row.connection.authorized_at = Some(now);
            }
            row.connection.status = ConnectionStatus::Active;
            row.connection.last_error = None;
            Ok(token)
        }
        Err(err @ (LwaError::InvalidGrant(_) | LwaError::InvalidClient { .. })) => {
            row.connection.status = match err {
                LwaError::InvalidGrant(_) => ConnectionStatus::RefreshTokenInvalid,
                _ => ConnectionStatus::ClientCredentialsInvalid,
            };
            row.connection.last_error = Some(last_error(&err, now));
            row.access_token = None;
            Err(TokenError::Rejected(err))
        }
        // Transient or unexpected: the status stays; the failure is noted.
        Err(err) => {
            row.connection.last_error = Some(last_error(&err, now));
            Err(TokenError::Upstream(err))
        }
    };
    // What callers see changed: say when.
    if serde_json::to_value(&before).ok() != serde_json::to_value(&row.connection).ok() {
        row.connection.updated_at = now;
    }
    let refused = matches!(outcome, Err(TokenError::Rejected(_)));
    if refused {
        // Every replica drops its token for this connection when this commits.
        lock.announce_change(id).await?;
    }
    let written = lock.write(&row).await;
    let released = match written {
        Ok(()) => lock.release().await,
        Err(err) => Err(err),
    };
    match (outcome, released) {
        (Ok(token), Ok(())) => {
            tracing::info!(connection_id = %id, "fetched an access token from LWA");
            Ok(grant(service, &row, token, now))
        }
        (Ok(_), Err(err)) => Err(err.into()),
        (Err(err), noted) => {
            if let Err(store_err) = noted {
                tracing::debug!(connection_id = %id, error = %store_err, "could not record the LWA failure");
            }
            if refused {
                service.inner.cache.invalidate(id);
            }
            tracing::warn!(connection_id = %id, error = %err, "LWA exchange failed");
            Err(err)
        }
    }
}

/// Settles a fetch from the row alone: `Err` for a refused connection, `Some` when the
/// stored token will do, `None` when LWA must be asked.
fn settle_without_lwa(
    service: &TokenService,
    row: &ConnectionRow,
    need: Need,
    now: DateTime<Utc>,
) -> Result<Option<Arc<Grant>>, TokenError> {
    let status = row.connection.status;
    if status.is_refused() && !need.ignore_status {
        return Err(TokenError::NotAuthorized(status));
    }
    let Some(stored) = &row.access_token else {
        return Ok(None);
    };
    let will_do = !status.is_refused()
        && stored.expires_at > now
        && stored.expires_at - now >= TimeDelta::seconds(need.min_remaining_secs)
        && need
            .fetched_since
            .is_none_or(|since| stored.fetched_at >= since);
    if !will_do {
        return Ok(None);
    }
    let id = row.connection.id;
    let secret = open(service, id, Field::AccessToken, &stored.sealed)?;
    let token = AccessToken::new(secret, stored.fetched_at, stored.expires_at);
    Ok(Some(grant(service, row, token, now)))
}

fn open(
    service: &TokenService,
    id: ConnectionId,
    field: Field,
    sealed: &Sealed,
) -> Result<secrecy::SecretString, TokenError> {
    service
        .inner
        .keyring
        .open(&id.to_string(), field, sealed)
        .map_err(TokenError::Crypto)
}

fn last_error(err: &LwaError, at: DateTime<Utc>) -> LastError {
    LastError {
        code: err.code().to_owned(),
        message: err.to_string(),
        at,
    }
}

fn grant(
    service: &TokenService,
    row: &ConnectionRow,
    token: AccessToken,
    now: DateTime<Utc>,
) -> Arc<Grant> {
    let c = &row.connection;
    Arc::new(Grant {
        token,
        region: c.region,
        environment: c.environment,
        merchant_token: c.merchant_token.clone(),
        marketplace_ids: c.marketplace_ids.clone(),
        endpoint: service.inner.hosts.endpoint(c.region, c.environment),
        last_used: AtomicI64::new(now.timestamp_millis()),
    })
}
