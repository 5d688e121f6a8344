//! Grantless tokens (`grant_type=client_credentials`): for the operations that act for an
//! application rather than for a seller (notifications, client secret rotation). One
//! token per application (client id), scope and client secret serves every connection of
//! the application: cached in memory by that key, stored sealed for the other replicas,
//! and fetched by one fetch at a time across replicas, like a connection's token. The
//! secret is part of the key (as a fingerprint) so that a connection naming an
//! application's client id with any other secret cannot be handed that application's
//! token: it gets its own fetch, which LWA refuses.
//!
//! A request names a connection, whose row gives the application and its client secret,
//! so each request reads that row: grantless tokens are for occasional management calls,
//! not the sync workers' hot path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::fetch::{grant, open_client_secrets};
use super::{Grant, Need, Served, TokenError, TokenService, count_served};
use crate::amazon::lwa::LwaError;
use crate::crypto::Field;
use crate::domain::{
    AccessToken, ClientSecret, ClientSecrets, ConnectionId, ConnectionStatus, GrantlessScope, now,
};
use crate::store::{GrantlessKey, StoreError, StoredToken};

/// The grantless tokens in memory.
#[derive(Default)]
pub(super) struct GrantlessCache {
    tokens: Mutex<HashMap<GrantlessKey, Arc<AccessToken>>>,
}

impl GrantlessCache {
    fn get(&self, key: &GrantlessKey) -> Option<Arc<AccessToken>> {
        self.lock().get(key).cloned()
    }

    fn store(&self, key: GrantlessKey, token: Arc<AccessToken>) {
        self.lock().insert(key, token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GrantlessKey, Arc<AccessToken>>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl TokenService {
    /// A grantless token for `scope` of the application of connection `id`, with at
    /// least `min_ttl_secs` left, handed out with the connection's SP-API endpoint.
    pub async fn grantless(
        &self,
        id: ConnectionId,
        scope: GrantlessScope,
        min_ttl_secs: i64,
        force_refresh: bool,
    ) -> Result<(Arc<Grant>, Served), TokenError> {
        let now = now();
        let row = self.inner.store.get_connection(id).await?;
        // A refused refresh token does not matter here; refused client credentials do.
        let status = row.connection.status;
        if matches!(
            status,
            ConnectionStatus::ClientCredentialsInvalid | ConnectionStatus::ClientSecretExpired
        ) {
            return Err(TokenError::NotAuthorized(status));
        }
        let need = Need {
            min_remaining_secs: min_ttl_secs,
            fetched_since: force_refresh.then(|| now - self.inner.settings.force_refresh_min_age),
            ignore_status: false,
        };
        let secrets =
            open_client_secrets(&self.inner.keyring, &row, now).map_err(TokenError::Crypto)?;
        let key = GrantlessKey {
            client_id: row.connection.client_id.clone(),
            scope,
            secret_fingerprint: fingerprint(&secrets.current),
        };
        let cached = self
            .inner
            .grantless
            .get(&key)
            .filter(|token| need.accepts_token(token, now));
        let (token, served) = match cached {
            Some(token) => (token, Served::Memory),
            None => (
                self.fetch_grantless(key, secrets, need).await?,
                Served::Fetched,
            ),
        };
        count_served(served);
        Ok((grant(self, &row, AccessToken::clone(&token), now), served))
    }

    /// Joins or starts the fetch for `key`; one more if the joined one served a weaker
    /// need.
    async fn fetch_grantless(
        &self,
        key: GrantlessKey,
        client_secrets: ClientSecrets,
        need: Need,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let client_secrets = Arc::new(client_secrets);
        for _ in 0..2 {
            let flight = self.inner.grantless_flights.join_or_start(key.clone(), || {
                fetch(self.clone(), key.clone(), client_secrets.clone(), need)
            });
            let token = flight.await?;
            if need.accepts_token(&token, now()) {
                return Ok(token);
            }
        }
        Err(TokenError::Upstream(LwaError::Unavailable {
            reason: "no grantless token with the asked-for life could be fetched".into(),
            retry_after: None,
        }))
    }
}

/// The stored token if it will do, else one from LWA under the lease.
async fn fetch(
    service: TokenService,
    key: GrantlessKey,
    client_secrets: Arc<ClientSecrets>,
    need: Need,
) -> Result<Arc<AccessToken>, TokenError> {
    let inner = &service.inner;
    let (client_id, scope) = (&key.client_id, key.scope);
    let owner = key.owner();
    let usable = |stored: &StoredToken| {
        need.accepts(stored.fetched_at, stored.expires_at, now())
            .then(|| {
                inner
                    .keyring
                    .open(&owner, Field::AccessToken, &stored.sealed)
                    .map(|secret| AccessToken::new(secret, stored.fetched_at, stored.expires_at))
                    .map_err(TokenError::Crypto)
            })
    };
    let found = inner.store.grantless_token(&key).await?;
    if let Some(token) = found.as_ref().and_then(usable) {
        return cache(&service, key, token?);
    }
    let (lease, found) = inner
        .store
        .lease_grantless(&key, inner.lease, inner.settings.lease_wait)
        .await?;
    // Another replica may have fetched while we waited for the lease.
    if let Some(token) = found.as_ref().and_then(usable) {
        lease.release().await;
        return cache(&service, key, token?);
    }
    match inner
        .lwa
        .client_credentials(client_id, &client_secrets, scope.as_str())
        .await
    {
        Ok(lwa_grant) => {
            let token = lwa_grant.access_token;
            let stored = StoredToken {
                sealed: inner
                    .keyring
                    .seal(&owner, Field::AccessToken, token.expose()),
                fetched_at: token.fetched_at,
                expires_at: token.expires_at,
            };
            match lease.write(&stored).await {
                // The lease ran out and another fetch took it: this token is still good.
                Ok(()) | Err(StoreError::Conflict) => {}
                Err(err) => return Err(err.into()),
            }
            tracing::info!(client_id = %client_id, scope = scope.as_str(), "fetched a grantless token from LWA");
            cache(&service, key, token)
        }
        Err(err) => {
            lease.release().await;
            tracing::warn!(client_id = %client_id, scope = scope.as_str(), error = %err, "grantless token exchange failed");
            Err(match err {
                LwaError::InvalidClient { .. } | LwaError::InvalidGrant(_) => {
                    TokenError::Rejected(err)
                }
                other => TokenError::Upstream(other),
            })
        }
    }
}

fn cache(
    service: &TokenService,
    key: GrantlessKey,
    token: AccessToken,
) -> Result<Arc<AccessToken>, TokenError> {
    let token = Arc::new(token);
    service.inner.grantless.store(key, token.clone());
    Ok(token)
}

/// Tells client secrets apart without keeping one: SHA-256 of the secret (high-entropy,
/// so the hash gives nothing away), base64url.
fn fingerprint(secret: &ClientSecret) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("connection-registry grantless:{}", secret.expose()));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}
