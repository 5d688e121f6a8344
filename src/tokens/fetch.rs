//! What one fetch of a connection's token does, and what LWA's answer does to the
//! connection.
//!
//! A fetch first reads the row without any lock: usually the token some replica stored
//! will do. Only when LWA must be called does it claim the connection's lease (one short
//! UPDATE that also re-reads the row; no database connection is held while LWA answers),
//! exchange the refresh token, and store the new token sealed with what LWA said
//! (`record_exchange`), which gives the lease up.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use chrono::{DateTime, Utc};

use super::{Grant, Need, TokenError, TokenService};
use crate::amazon::lwa::{LwaError, LwaGrant};
use crate::crypto::{CryptoError, Field, Keyring, Sealed};
use crate::domain::{
    AccessToken, ClientSecret, ClientSecrets, ConnectionId, ConnectionStatus, LastError,
    RefreshToken, now,
};
use crate::events::connection_events;
use crate::store::{ConnectionRow, StoreError, StoredToken};

/// Fetches a token meeting `need` and caches it, or drops the cached one when the
/// connection is gone or refused.
pub(super) async fn fetch_and_cache(
    service: TokenService,
    id: ConnectionId,
    need: Need,
) -> Result<Arc<Grant>, TokenError> {
    let cache = &service.inner.cache;
    let stamp = cache.stamp(id);
    let mut result = fetch(&service, id, need).await;
    // A PATCH landed between our read and our write: the token may stem from the old
    // credentials. Start over once from the new row.
    if is_conflict(&result) {
        result = fetch(&service, id, need).await;
    }
    if is_conflict(&result) {
        result = Err(TokenError::ChangedDuringFetch);
    }
    match &result {
        Ok(grant) => cache.store(id, grant, stamp),
        Err(TokenError::NotAuthorized(_) | TokenError::NotFound) => cache.remove(id),
        Err(_) => {}
    }
    result
}

fn is_conflict(result: &Result<Arc<Grant>, TokenError>) -> bool {
    matches!(result, Err(TokenError::Store(err)) if matches!(**err, StoreError::Conflict))
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
    let (lease, mut row) = inner
        .store
        .lease_token(id, inner.lease, inner.settings.lease_wait)
        .await?;
    // Another replica may have fetched while we waited for the lease.
    match settle_without_lwa(service, &row, need, now) {
        Ok(None) => {}
        Ok(Some(grant)) => {
            lease.release().await;
            return Ok(grant);
        }
        Err(err) => {
            lease.release().await;
            return Err(err);
        }
    }

    let client_secrets =
        open_client_secrets(&inner.keyring, &row, now).map_err(TokenError::Crypto)?;
    let refresh_token =
        RefreshToken::from_stored(open(service, id, Field::RefreshToken, &row.refresh_token)?);
    let exchanged = inner
        .lwa
        .refresh(&row.connection.client_id, &client_secrets, &refresh_token)
        .await;
    let sent_refresh_token = row.refresh_token.clone();
    let before = row.clone();
    let outcome = record_exchange(service, &mut row, &refresh_token, exchanged, need, now);
    // A token exchange records only what it did to the status; a new token, a noted
    // transient failure are not changes worth an event.
    let events: Vec<_> = connection_events(Some(&before), Some(&row))
        .into_iter()
        .filter(|event| event.kind == "connection.status_changed")
        .collect();
    let rotated = row.refresh_token != sent_refresh_token;
    let refused = matches!(outcome, Err(TokenError::Rejected(_)));
    // A refusal is announced: every replica drops its token for this connection when the
    // write commits.
    let mut written = lease.write(&row, refused, &events).await;
    if outcome.is_ok() && matches!(written, Err(StoreError::Conflict)) {
        // Someone recorded something else meanwhile (a test's findings, a rename). When
        // the credentials are the ones exchanged, the token is good: lay it onto the new
        // row instead of throwing it away and asking LWA again.
        written = rebase_exchange(service, &before, &row)
            .await
            .map(|rebased| {
                // The caller's grant shows the row as it now is (a test's marketplaces, say).
                row = rebased;
            });
    }
    match (outcome, written) {
        (Ok(token), Ok(())) => {
            tracing::info!(connection_id = %id, "fetched an access token from LWA");
            Ok(grant(service, &row, token, now))
        }
        (Ok(_), Err(err)) => {
            if rotated {
                // LWA has never been seen to rotate; should it, and the write lose a race,
                // the new refresh token is lost and the old one may no longer work.
                tracing::error!(connection_id = %id, error = %err, "could not store a refresh token LWA rotated");
            }
            Err(err.into())
        }
        // Refused, but the connection changed meanwhile (new credentials, say): the refusal
        // concerned the old ones and was not recorded. Start over from the new row.
        (Err(TokenError::Rejected(_)), Err(StoreError::Conflict)) => {
            Err(StoreError::Conflict.into())
        }
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

/// Attempts at laying a successful exchange onto a row that changed meanwhile.
const REBASE_ATTEMPTS: usize = 3;

/// Writes what a successful exchange did (`exchanged`, made from `read`) onto the row as
/// it is now, provided the row still holds the credentials exchanged, and returns the row
/// written; `Conflict` when it does not (new credentials: the token may stem from the old
/// ones).
async fn rebase_exchange(
    service: &TokenService,
    read: &ConnectionRow,
    exchanged: &ConnectionRow,
) -> Result<ConnectionRow, StoreError> {
    let store = &service.inner.store;
    for _ in 0..REBASE_ATTEMPTS {
        let current = store.get_connection(read.connection.id).await?;
        if !same_credentials(read, &current) {
            return Err(StoreError::Conflict);
        }
        let mut rebased = current.clone();
        rebased.version = current.version + 1;
        rebased.access_token.clone_from(&exchanged.access_token);
        rebased.refresh_token = exchanged.refresh_token.clone();
        let c = &mut rebased.connection;
        c.status = exchanged.connection.status;
        c.last_error.clone_from(&exchanged.connection.last_error);
        c.authorized_at = exchanged.connection.authorized_at;
        c.updated_at = exchanged.connection.updated_at.max(c.updated_at);
        let events: Vec<_> = connection_events(Some(&current), Some(&rebased))
            .into_iter()
            .filter(|event| event.kind == "connection.status_changed")
            .collect();
        match store.update_connection(&rebased, &events).await {
            Ok(()) => return Ok(rebased),
            Err(StoreError::Conflict) => continue,
            Err(err) => return Err(err),
        }
    }
    Err(StoreError::Conflict)
}

/// Whether `current` still holds what `read` held for an exchange: the same client,
/// secrets, refresh token, seller and status.
fn same_credentials(read: &ConnectionRow, current: &ConnectionRow) -> bool {
    let (a, b) = (&read.connection, &current.connection);
    read.client_secret == current.client_secret
        && read.refresh_token == current.refresh_token
        && read.previous_client_secret == current.previous_client_secret
        && a.client_id == b.client_id
        && a.merchant_token == b.merchant_token
        && a.region == b.region
        && a.environment == b.environment
        && a.status == b.status
}

/// The rules of what LWA's answer does to the connection's row (written by the caller):
/// - a token: stored sealed; the connection is `active`, its `last_error` cleared, a
///   rotated refresh token kept, and `authorized_at` set when it became usable or was
///   authorized on request (not on every hourly refresh);
/// - `invalid_grant` / `invalid_client`: the status says which credential was refused,
///   and the stored token is dropped;
/// - anything else is transient or unexplained: the status stays, the failure is noted.
fn record_exchange(
    service: &TokenService,
    row: &mut ConnectionRow,
    sent_refresh_token: &RefreshToken,
    exchanged: Result<LwaGrant, LwaError>,
    need: Need,
    now: DateTime<Utc>,
) -> Result<AccessToken, TokenError> {
    let keyring = &service.inner.keyring;
    let id = row.connection.id.to_string();
    let before = row.connection.clone();
    row.version += 1;
    let outcome = match exchanged {
        Ok(lwa_grant) => {
            let token = lwa_grant.access_token;
            row.access_token = Some(StoredToken {
                sealed: keyring.seal(&id, Field::AccessToken, token.expose()),
                fetched_at: token.fetched_at,
                expires_at: token.expires_at,
            });
            if let Some(new_refresh) = lwa_grant
                .refresh_token
                .filter(|new| new.expose() != sent_refresh_token.expose())
            {
                tracing::info!(connection_id = %id, "LWA issued a new refresh token; storing it");
                row.refresh_token = keyring.seal(&id, Field::RefreshToken, new_refresh.expose());
            }
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
        Err(err) => {
            row.connection.last_error = Some(last_error(&err, now));
            Err(TokenError::Upstream(err))
        }
    };
    // What callers see changed: say when.
    if serde_json::to_value(&before).ok() != serde_json::to_value(&row.connection).ok() {
        row.connection.updated_at = now;
    }
    outcome
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
    if status.is_refused() {
        if !need.ignore_status {
            return Err(TokenError::NotAuthorized(status));
        }
        // Authorizing a refused connection: only LWA can say whether it works again.
        return Ok(None);
    }
    let Some(stored) = &row.access_token else {
        return Ok(None);
    };
    if !need.accepts(stored.fetched_at, stored.expires_at, now) {
        return Ok(None);
    }
    let secret = open(
        service,
        row.connection.id,
        Field::AccessToken,
        &stored.sealed,
    )?;
    let token = AccessToken::new(secret, stored.fetched_at, stored.expires_at);
    Ok(Some(grant(service, row, token, now)))
}

/// A connection's client secret, opened, with the one it replaced while that one's grace
/// lasts.
pub(crate) fn open_client_secrets(
    keyring: &Keyring,
    row: &ConnectionRow,
    now: DateTime<Utc>,
) -> Result<ClientSecrets, CryptoError> {
    let owner = row.connection.id.to_string();
    let current = keyring.open(&owner, Field::ClientSecret, &row.client_secret)?;
    let previous =
        match &row.previous_client_secret {
            Some(previous) if previous.until > now => Some(ClientSecret::from_stored(
                keyring.open(&owner, Field::ClientSecret, &previous.sealed)?,
            )),
            _ => None,
        };
    Ok(ClientSecrets {
        current: ClientSecret::from_stored(current),
        previous,
    })
}

pub(super) fn open(
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

pub(super) fn grant(
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
        merchant_token: c.merchant_token,
        marketplace_ids: c.marketplace_ids.clone(),
        endpoint: service.inner.hosts.endpoint(c.region, c.environment),
        last_used: AtomicI64::new(now.timestamp_millis()),
    })
}
