//! One fetch of one connection's token: under the cross-replica lock, re-read the row;
//! use the token another replica stored if it will do; otherwise exchange the refresh
//! token with LWA, store the new token sealed, and record what LWA said.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

use super::{Grant, Need, TokenError, TokenService};
use crate::amazon::lwa::LwaError;
use crate::crypto::Field;
use crate::domain::ConnectionId;
use crate::domain::{AccessToken, ClientSecret, ConnectionStatus, LastError, RefreshToken, now};
use crate::store::{ConnectionRow, StoreError, StoredToken};

pub(super) async fn run(
    service: &TokenService,
    id: ConnectionId,
    need: Need,
) -> Result<Arc<Grant>, TokenError> {
    let inner = &service.inner;
    let epoch = inner.epoch.load(Ordering::SeqCst);
    let mut result = exchange(service, id, need).await;
    // A PATCH landed between our read and our write: the token may stem from the old
    // credentials. Start over once from the new row.
    if matches!(&result, Err(TokenError::Store(err)) if matches!(**err, StoreError::Conflict)) {
        result = exchange(service, id, need).await;
    }
    match &result {
        Ok(grant) if inner.epoch.load(Ordering::SeqCst) == epoch => {
            service.write_grants().insert(id, grant.clone());
        }
        Err(TokenError::NotAuthorized(_) | TokenError::NotFound) => service.forget(id),
        _ => {}
    }
    result
}

async fn exchange(
    service: &TokenService,
    id: ConnectionId,
    need: Need,
) -> Result<Arc<Grant>, TokenError> {
    let inner = &service.inner;
    let mut lock = inner.store.lock_for_token(id).await?;
    let mut row = lock.read(id).await?;
    let status = row.connection.status;
    if status.is_refused() && !need.ignore_status {
        lock.release().await?;
        return Err(TokenError::NotAuthorized(status));
    }
    let now = now();
    // Another replica (or an earlier flight) may have stored a token that will do.
    if let Some(stored) = &row.access_token {
        let usable = !status.is_refused()
            && stored.expires_at - now >= chrono::TimeDelta::seconds(need.min_remaining_secs)
            && need
                .fetched_since
                .is_none_or(|since| stored.fetched_at >= since);
        if usable {
            let secret = open(service, id, Field::AccessToken, &stored.sealed)?;
            let token = AccessToken::new(secret, stored.fetched_at, stored.expires_at);
            lock.release().await?;
            return Ok(grant(service, &row, token, now));
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
    row.version += 1;
    row.connection.updated_at = now;
    match exchanged {
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
            row.connection.status = ConnectionStatus::Active;
            row.connection.authorized_at = Some(now);
            row.connection.last_error = None;
            lock.write(&row).await?;
            lock.release().await?;
            tracing::info!(connection_id = %id, "fetched an access token from LWA");
            Ok(grant(service, &row, token, now))
        }
        Err(err @ (LwaError::InvalidGrant(_) | LwaError::InvalidClient { .. })) => {
            row.connection.status = match err {
                LwaError::InvalidGrant(_) => ConnectionStatus::RefreshTokenInvalid,
                _ => ConnectionStatus::ClientCredentialsInvalid,
            };
            row.connection.last_error = Some(last_error(&err, now));
            row.access_token = None;
            lock.write(&row).await?;
            lock.release().await?;
            tracing::warn!(connection_id = %id, error = %err, "LWA refused the connection's credentials");
            service.invalidate(id).await;
            Err(TokenError::Rejected(err))
        }
        Err(err) => {
            // Transient or unexpected: the status stays; the note is best effort.
            row.connection.last_error = Some(last_error(&err, now));
            let noted = lock.write(&row).await;
            let released = lock.release().await;
            if let Err(store_err) = noted.and(released) {
                tracing::debug!(connection_id = %id, error = %store_err, "could not record the LWA failure");
            }
            tracing::warn!(connection_id = %id, error = %err, "LWA exchange failed");
            Err(TokenError::Upstream(err))
        }
    }
}

fn open(
    service: &TokenService,
    id: ConnectionId,
    field: Field,
    sealed: &crate::crypto::Sealed,
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
