//! Restricted Data Tokens: `createRestrictedDataToken` called with a connection's access
//! token, for workers that need buyers' personal data. A burst of workers asking for the
//! same operations of one connection costs one SP-API call: identical requests share a
//! token from memory until shortly before it expires, and one fetch at a time (single
//! flight, per process). RDTs are never stored, and dropped with the connection's access
//! token when the connection changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use secrecy::SecretString;

use super::{Served, TokenError, TokenService};
use crate::amazon::spapi::SpApiError;
use crate::domain::{ConnectionId, RestrictedDataRequest, now};

/// An RDT is not handed out with less than this left.
const MIN_LIFE: TimeDelta = TimeDelta::seconds(60);
/// Most RDTs kept in memory; a request per order would otherwise grow the cache without
/// end (expired ones also go at each refresher tick).
const MAX_CACHED: usize = 10_000;

pub(super) type RestrictedKey = (ConnectionId, RestrictedDataRequest);

/// A Restricted Data Token (`Atz.sprdt|…`). `Debug` prints a redaction.
pub struct RestrictedDataToken {
    pub token: SecretString,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for RestrictedDataToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestrictedDataToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The RDTs in memory.
#[derive(Default)]
pub(super) struct RestrictedCache {
    tokens: Mutex<HashMap<RestrictedKey, Arc<RestrictedDataToken>>>,
}

impl RestrictedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RestrictedKey, Arc<RestrictedDataToken>>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached RDT for `key`, if it has at least `MIN_LIFE` left.
    fn usable(&self, key: &RestrictedKey) -> Option<Arc<RestrictedDataToken>> {
        let now = now();
        self.lock()
            .get(key)
            .filter(|token| is_usable_at(token, now))
            .cloned()
    }

    /// Drops every RDT of this connection.
    pub(super) fn invalidate(&self, id: ConnectionId) {
        self.lock().retain(|(of, _), _| *of != id);
    }

    pub(super) fn invalidate_all(&self) {
        self.lock().clear();
    }

    /// Drops the RDTs too short-lived to hand out.
    pub(super) fn prune(&self, now: DateTime<Utc>) {
        self.lock().retain(|_, token| is_usable_at(token, now));
    }
}

/// Whether `token` has at least `MIN_LIFE` left at `now`.
fn is_usable_at(token: &RestrictedDataToken, now: DateTime<Utc>) -> bool {
    token.expires_at - now >= MIN_LIFE
}

impl TokenService {
    /// An RDT for `request` on connection `id`, with at least a minute left.
    pub async fn restricted_data_token(
        &self,
        id: ConnectionId,
        request: RestrictedDataRequest,
    ) -> Result<(Arc<RestrictedDataToken>, Served), TokenError> {
        let key: RestrictedKey = (id, request);
        if let Some(token) = self.inner.restricted.usable(&key) {
            return Ok((token, Served::Memory));
        }
        for _ in 0..2 {
            let flight = self
                .inner
                .restricted_flights
                .join_or_start(key.clone(), || fetch(self.clone(), key.clone()));
            let token = flight.await?;
            if is_usable_at(&token, now()) {
                return Ok((token, Served::Fetched));
            }
        }
        Err(TokenError::SpApi(SpApiError::Protocol(
            "Amazon issued a restricted data token that expires at once".into(),
        )))
    }
}

/// Calls `createRestrictedDataToken` with the connection's token; with a fresh one once
/// more if SP-API refuses it.
async fn fetch(
    service: TokenService,
    key: RestrictedKey,
) -> Result<Arc<RestrictedDataToken>, TokenError> {
    // A request that missed the cache just before the last flight for this key cached
    // its token and landed starts this one: that token is as good as a new one.
    if let Some(token) = service.inner.restricted.usable(&key) {
        return Ok(token);
    }
    let (id, request) = &key;
    let spapi = &service.inner.spapi;
    // Invalidations while this runs mean the connection changed: do not cache then.
    let generation = service.inner.cache.stamp(*id);
    let (grant, _) = service
        .get(*id, MIN_LIFE.num_seconds(), false, crate::domain::now())
        .await?;
    let sent_at = now();
    let mut minted = spapi
        .create_restricted_data_token(&grant.endpoint, &grant.token, request)
        .await;
    if let Err(SpApiError::AccessTokenRejected(_)) = minted {
        let fresh = service.refetch(*id, &grant.token).await?;
        minted = spapi
            .create_restricted_data_token(&fresh.endpoint, &fresh.token, request)
            .await;
    }
    let (token, lives) = minted.map_err(TokenError::SpApi)?;
    let token = Arc::new(RestrictedDataToken {
        token,
        expires_at: sent_at + TimeDelta::from_std(lives).unwrap_or(TimeDelta::zero()),
    });
    // Under the RDT cache's lock: `invalidate` changes the stamp before it takes it.
    let mut cached = service.inner.restricted.lock();
    if service.inner.cache.stamp(*id) == generation {
        if cached.len() >= MAX_CACHED {
            let now = now();
            cached.retain(|_, token| is_usable_at(token, now));
            if cached.len() >= MAX_CACHED {
                cached.clear();
            }
        }
        cached.insert(key, token.clone());
    }
    drop(cached);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{HttpMethod, ResourcePath, RestrictedResource};

    fn key(id: ConnectionId, order: u32) -> RestrictedKey {
        let request = RestrictedDataRequest {
            restricted_resources: vec![RestrictedResource {
                method: HttpMethod::Get,
                path: ResourcePath::parse(&format!("/orders/v0/orders/{order}/address")).unwrap(),
                data_elements: Vec::new(),
            }],
            target_application: None,
        };
        (id, request)
    }

    fn token(lives: TimeDelta) -> Arc<RestrictedDataToken> {
        Arc::new(RestrictedDataToken {
            token: SecretString::from("Atz.sprdt|t"),
            expires_at: now() + lives,
        })
    }

    /// Guards `prune` and `invalidate`: a request per order would otherwise keep every RDT
    /// (a live secret) in memory for good.
    #[test]
    fn expired_and_changed_connections_rdts_are_dropped() {
        let cache = RestrictedCache::default();
        let (a, b) = (ConnectionId::generate(), ConnectionId::generate());
        cache.lock().insert(key(a, 1), token(TimeDelta::hours(1)));
        cache
            .lock()
            .insert(key(a, 2), token(TimeDelta::seconds(30)));
        cache.lock().insert(key(b, 3), token(TimeDelta::hours(1)));
        cache.prune(now());
        assert_eq!(cache.lock().len(), 2, "less than a minute left: dropped");
        assert!(!cache.lock().contains_key(&key(a, 2)));
        cache.invalidate(a);
        assert_eq!(
            cache.lock().keys().map(|(id, _)| *id).collect::<Vec<_>>(),
            [b]
        );
        cache.invalidate_all();
        assert!(cache.lock().is_empty());
    }
}
