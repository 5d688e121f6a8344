//! Access tokens for sync workers: served from memory, fetched from LWA once however many
//! ask, refreshed ahead of expiry while in use, and dropped everywhere when a connection
//! changes.
//!
//! The hot path (`TokenService::get` with a valid cached token) reads one map under a
//! short lock: no database, no network, no decryption. A miss starts, or joins, the one
//! *flight* for that connection (`flight.rs`): callers in this process share its result,
//! and on Postgres the flight takes a cross-replica lock, so replicas share one LWA call.

mod flight;
mod settings;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::amazon::endpoints::{SpApiEndpoint, SpApiHosts};
use crate::amazon::lwa::{LwaClient, LwaError};
use crate::crypto::{CryptoError, Keyring};
use crate::domain::{
    AccessToken, ConnectionId, ConnectionStatus, Environment, MerchantToken, Region, now,
};
use crate::store::{Change, Store, StoreError};
pub use settings::TokenSettings;

/// Why no token could be handed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("connection not found")]
    NotFound,
    /// The connection's credentials were refused earlier; a person must fix them.
    #[error("connection is {}", .0.as_str())]
    NotAuthorized(ConnectionStatus),
    /// LWA refused the credentials just now (the status has been updated).
    #[error(transparent)]
    Rejected(LwaError),
    /// LWA is failing or answered nonsense; the status is unchanged.
    #[error(transparent)]
    Upstream(LwaError),
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error(transparent)]
    Crypto(CryptoError),
}

impl TokenError {
    /// A short label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::NotAuthorized(_) => "not_authorized",
            Self::Rejected(err) | Self::Upstream(err) => err.code(),
            Self::Store(_) => "store",
            Self::Crypto(_) => "crypto",
        }
    }
}

impl From<StoreError> for TokenError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound,
            other => Self::Store(Arc::new(other)),
        }
    }
}

/// Everything a worker needs to call SP-API for one connection.
#[derive(Debug)]
pub struct Grant {
    pub token: AccessToken,
    pub region: Region,
    pub environment: Environment,
    pub merchant_token: MerchantToken,
    pub marketplace_ids: Vec<String>,
    pub endpoint: SpApiEndpoint,
    /// Unix milliseconds of the last request for it; idle grants are neither refreshed nor kept.
    last_used: AtomicI64,
}

impl Grant {
    fn touch(&self, at: DateTime<Utc>) {
        self.last_used
            .store(at.timestamp_millis(), Ordering::Relaxed);
    }
}

/// Where a grant came from, for `Cache-Status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From this process's memory: the hot path.
    Memory,
    /// After waiting on a flight (the database and perhaps LWA).
    Fetched,
}

/// What a caller will accept.
#[derive(Debug, Clone, Copy)]
struct Need {
    min_remaining_secs: i64,
    /// Only a token fetched at or after this instant (a forced refresh, an authorization).
    fetched_since: Option<DateTime<Utc>>,
    /// Call LWA even if the connection's status says its credentials were refused.
    ignore_status: bool,
}

impl Need {
    fn accepts(&self, token: &AccessToken, now: DateTime<Utc>) -> bool {
        token.remaining_secs(now) >= self.min_remaining_secs
            && self
                .fetched_since
                .is_none_or(|since| token.fetched_at >= since)
    }
}

type Flight = Shared<BoxFuture<'static, Result<Arc<Grant>, TokenError>>>;

#[derive(Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    keyring: Arc<Keyring>,
    lwa: LwaClient,
    hosts: SpApiHosts,
    settings: TokenSettings,
    grants: RwLock<HashMap<ConnectionId, Arc<Grant>>>,
    flights: Mutex<HashMap<ConnectionId, (u64, Flight)>>,
    next_flight: AtomicU64,
    /// Bumped by every invalidation: a flight that began before one must not cache.
    epoch: AtomicU64,
}

impl TokenService {
    pub fn new(
        store: Store,
        keyring: Arc<Keyring>,
        lwa: LwaClient,
        hosts: SpApiHosts,
        settings: TokenSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                keyring,
                lwa,
                hosts,
                settings,
                grants: RwLock::default(),
                flights: Mutex::default(),
                next_flight: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            }),
        }
    }

    /// A token with at least `min_ttl_secs` left. `force_refresh` replaces the cached
    /// token unless it was fetched within `settings.force_refresh_min_age`.
    pub async fn get(
        &self,
        id: ConnectionId,
        min_ttl_secs: i64,
        force_refresh: bool,
    ) -> Result<(Arc<Grant>, Served), TokenError> {
        let now = now();
        let fetched_since = force_refresh.then(|| now - self.inner.settings.force_refresh_min_age);
        let need = Need {
            min_remaining_secs: min_ttl_secs,
            fetched_since,
            ignore_status: false,
        };
        if let Some(grant) = self
            .cached(id)
            .filter(|grant| need.accepts(&grant.token, now))
        {
            grant.touch(now);
            metrics::counter!("registry_token_requests_total", "served" => "memory").increment(1);
            return Ok((grant, Served::Memory));
        }
        match self.fly(id, need).await {
            Ok(grant) => {
                grant.touch(now);
                metrics::counter!("registry_token_requests_total", "served" => "fetched")
                    .increment(1);
                Ok((grant, Served::Fetched))
            }
            Err(err) => {
                metrics::counter!("registry_token_failures_total", "code" => err.code())
                    .increment(1);
                Err(err)
            }
        }
    }

    /// Exchanges the refresh token with LWA now, whatever the cache or status says.
    pub async fn authorize(&self, id: ConnectionId) -> Result<Arc<Grant>, TokenError> {
        let need = Need {
            min_remaining_secs: 0,
            fetched_since: Some(now()),
            ignore_status: true,
        };
        self.fly(id, need).await
    }

    /// Drops this connection's token here and, through the database, on every replica.
    pub async fn invalidate(&self, id: ConnectionId) {
        self.forget(id);
        if let Err(err) = self.inner.store.announce_change(id).await {
            // Other replicas notice within their re-read, at the latest at expiry.
            tracing::warn!(connection_id = %id, error = %err, "could not announce a change");
        }
    }

    /// Drops this connection's token in this process only.
    pub fn forget(&self, id: ConnectionId) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.write_grants().remove(&id);
    }

    fn forget_all(&self) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.write_grants().clear();
    }

    fn cached(&self, id: ConnectionId) -> Option<Arc<Grant>> {
        self.read_grants().get(&id).cloned()
    }

    /// Starts the flight for `id`, or joins the one under way. A joined flight may have
    /// served a weaker need (a token with less life, or the cached one): then one more
    /// flight is flown for this caller.
    async fn fly(&self, id: ConnectionId, need: Need) -> Result<Arc<Grant>, TokenError> {
        let mut weaker = None;
        for round in 0..2 {
            match self.flight(id, need).await {
                Ok(grant) if need.accepts(&grant.token, now()) => return Ok(grant),
                Ok(grant) => weaker = Some(grant),
                // Joined a flight that would not call LWA for a refused connection.
                Err(TokenError::NotAuthorized(_)) if need.ignore_status && round == 0 => {}
                Err(err) => return Err(err),
            }
        }
        // Two flights and still not what was asked: hand out what there is, if it works.
        match weaker {
            Some(grant) if grant.token.remaining_secs(now()) > 0 => Ok(grant),
            _ => Err(TokenError::Upstream(LwaError::Unavailable {
                reason: "no token with enough life could be fetched".into(),
                retry_after: None,
            })),
        }
    }

    fn flight(&self, id: ConnectionId, need: Need) -> Flight {
        let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, flight)) = flights.get(&id) {
            return flight.clone();
        }
        let number = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
        let service = self.clone();
        // Spawned, so a caller that gives up does not cancel the others' fetch.
        let task = tokio::spawn(async move {
            let result = flight::run(&service, id, need).await;
            let mut flights = service
                .inner
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if flights.get(&id).is_some_and(|(n, _)| *n == number) {
                flights.remove(&id);
            }
            result
        });
        let flight = async move {
            task.await.unwrap_or_else(|err| {
                Err(TokenError::Upstream(LwaError::Protocol(format!(
                    "token fetch failed: {err}"
                ))))
            })
        }
        .boxed()
        .shared();
        flights.insert(id, (number, flight.clone()));
        flight
    }

    /// Keeps tokens of connections in use fresh, and forgets idle ones.
    pub async fn refresh_ahead_periodically(self) {
        let settings = self.inner.settings.clone();
        let mut interval = tokio::time::interval(settings.refresh_tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.refresh_ahead_once().await;
        }
    }

    async fn refresh_ahead_once(&self) {
        let settings = &self.inner.settings;
        let now = now();
        let idle_since = now - settings.idle_after;
        let grants: Vec<(ConnectionId, Arc<Grant>)> = self
            .read_grants()
            .iter()
            .map(|(id, grant)| (*id, grant.clone()))
            .collect();
        metrics::gauge!("registry_cached_tokens").set(grants.len() as f64);
        for (id, grant) in grants {
            if grant.last_used.load(Ordering::Relaxed) < idle_since.timestamp_millis() {
                self.write_grants().remove(&id);
                continue;
            }
            if grant.token.remaining_secs(now) > settings.refresh_ahead.num_seconds() {
                continue;
            }
            // Beyond the refresh window, so the new token is not itself due at once.
            let need = Need {
                min_remaining_secs: settings.refresh_ahead.num_seconds() + 1,
                fetched_since: None,
                ignore_status: false,
            };
            let service = self.clone();
            tokio::spawn(async move {
                if let Err(err) = service.fly(id, need).await {
                    tracing::warn!(connection_id = %id, error = %err, "refresh ahead of expiry failed");
                }
            });
            // Spread the work: due tokens do not all hit LWA in the same instant.
            tokio::time::sleep(settings.refresh_spacing).await;
        }
    }

    /// Applies other replicas' changes to this cache (Postgres only).
    pub async fn follow_changes(self) {
        let Some(mut listener) = self.inner.store.change_listener() else {
            return;
        };
        loop {
            match listener.next().await {
                Change::Connection(id) => self.forget(id),
                Change::MaybeMissed => {
                    tracing::info!("change notifications resumed; re-reading cached connections");
                    self.forget_all();
                }
            }
        }
    }

    fn read_grants(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ConnectionId, Arc<Grant>>> {
        self.inner.grants.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_grants(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ConnectionId, Arc<Grant>>> {
        self.inner.grants.write().unwrap_or_else(|p| p.into_inner())
    }
}
