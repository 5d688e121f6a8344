//! Access tokens for sync workers: served from memory, fetched from LWA once however many
//! ask, refreshed ahead of expiry while in use, and dropped everywhere when a connection
//! changes.
//!
//! The hot path (`TokenService::get` with a good cached token) reads one map under a
//! short lock: no database, no network, no decryption. A miss starts, or joins, the one
//! fetch for that connection (the mechanism in `flight.rs`, what a fetch does in
//! `fetch.rs`): callers in this process share its result, and on Postgres the fetch takes
//! a cross-replica lock before it calls LWA, so replicas share one LWA call too.

mod cache;
mod fetch;
mod flight;
mod grantless;
mod refresh;
mod restricted;
mod settings;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeDelta, Utc};

use crate::amazon::endpoints::{SpApiEndpoint, SpApiHosts};
use crate::amazon::lwa::{LwaClient, LwaError};
use crate::amazon::spapi::{SpApiClient, SpApiError};
use crate::crypto::{CryptoError, Keyring};
use crate::domain::{
    AccessToken, ConnectionId, ConnectionStatus, Environment, MerchantToken, Region, now,
};
use crate::store::{Store, StoreError};
use cache::Cache;
pub(crate) use fetch::open_client_secrets;
use flight::Flights;
pub use restricted::RestrictedDataToken;
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
    /// The connection changed twice while its token was being fetched.
    #[error("the connection changed while its token was fetched")]
    ChangedDuringFetch,
    /// SP-API refused or failed a call made for the caller (a restricted data token).
    #[error(transparent)]
    SpApi(SpApiError),
    /// Shared by every caller of one fetch, hence behind an `Arc`.
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
            Self::SpApi(err) => err.code(),
            Self::ChangedDuringFetch | Self::Store(_) => "store",
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
    pub endpoint: Arc<SpApiEndpoint>,
    /// Unix milliseconds of the last request for it; idle grants are neither refreshed
    /// nor kept.
    last_used: AtomicI64,
}

impl Grant {
    /// Whether the row's current facts are what this grant hands out.
    fn reflects(&self, facts: &crate::store::TokenFacts) -> bool {
        let usable = ConnectionStatus::parse(&facts.status).is_ok_and(|s| !s.is_refused());
        usable
            && facts.token_fetched_at == Some(self.token.fetched_at)
            && facts.merchant_token == self.merchant_token.as_str()
            && facts.marketplace_ids == self.marketplace_ids
    }

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
    /// After waiting on a fetch (the database and perhaps LWA).
    Fetched,
    /// From memory with less than the asked-for life left, because the fetch of a fresh
    /// one failed; still valid.
    Stale,
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
    /// Whether a token fetched at `fetched_at` and expiring at `expires_at` will do at
    /// `now`: the one rule, for cached and for stored tokens alike.
    fn accepts(
        &self,
        fetched_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        expires_at - now >= TimeDelta::seconds(self.min_remaining_secs.max(MIN_LIFE_SECS))
            && self.fetched_since.is_none_or(|since| fetched_at >= since)
    }

    fn accepts_token(&self, token: &AccessToken, now: DateTime<Utc>) -> bool {
        self.accepts(token.fetched_at, token.expires_at, now)
    }
}

/// The least life a token is handed out with, whatever `min_ttl` or an outage: one whole
/// second, so `expires_in` is never 0 (a token about to expire is no use to a worker).
const MIN_LIFE_SECS: i64 = 1;

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
    /// How long a fetch's lease lasts: longer than any LWA exchange can take.
    lease: std::time::Duration,
    cache: Cache,
    flights: Flights<ConnectionId, Grant>,
    grantless: grantless::GrantlessCache,
    grantless_flights: Flights<crate::store::GrantlessKey, AccessToken>,
    spapi: SpApiClient,
    restricted: restricted::RestrictedCache,
    restricted_flights: Flights<restricted::RestrictedKey, RestrictedDataToken>,
    /// Permits for refreshes ahead of expiry (`settings.refresh_concurrency`).
    refreshes: Arc<tokio::sync::Semaphore>,
}

impl TokenService {
    pub fn new(
        store: Store,
        keyring: Arc<Keyring>,
        lwa: LwaClient,
        hosts: SpApiHosts,
        spapi: SpApiClient,
        settings: TokenSettings,
    ) -> Self {
        let lease = lwa.longest_exchange() + std::time::Duration::from_secs(5);
        let refreshes = Arc::new(tokio::sync::Semaphore::new(
            settings.refresh_concurrency.max(1),
        ));
        Self {
            inner: Arc::new(Inner {
                store,
                keyring,
                lwa,
                hosts,
                settings,
                lease,
                cache: Cache::default(),
                flights: Flights::default(),
                grantless: grantless::GrantlessCache::default(),
                grantless_flights: Flights::default(),
                spapi,
                restricted: restricted::RestrictedCache::default(),
                restricted_flights: Flights::default(),
                refreshes,
            }),
        }
    }

    /// A token with at least `min_ttl_secs` left. `force_refresh` replaces the cached
    /// token unless it was fetched within `settings.force_refresh_min_age`. When a fresh
    /// token cannot be had (LWA or the database failing), a cached token that is still
    /// valid is served rather than an error. `now` is when the request asked (read once
    /// by the caller, which times its answer with it).
    pub async fn get(
        &self,
        id: ConnectionId,
        min_ttl_secs: i64,
        force_refresh: bool,
        now: DateTime<Utc>,
    ) -> Result<(Arc<Grant>, Served), TokenError> {
        let fetched_since = force_refresh.then(|| now - self.inner.settings.force_refresh_min_age);
        let need = Need {
            min_remaining_secs: min_ttl_secs,
            fetched_since,
            ignore_status: false,
        };
        let cached = self.inner.cache.get(id);
        if let Some(grant) = cached.filter(|grant| need.accepts_token(&grant.token, now)) {
            grant.touch(now);
            count_served(Served::Memory);
            return Ok((grant, Served::Memory));
        }
        let (grant, served) = match self.fetch_shared(id, need).await {
            Ok(grant) => (grant, Served::Fetched),
            Err(
                err @ (TokenError::Upstream(_)
                | TokenError::ChangedDuringFetch
                | TokenError::Store(_)),
            ) => {
                // Only what the cache holds now: a change of the connection during the
                // fetch dropped the grant read before it, which may stem from the old
                // credentials. A worker that reported the token as rejected (a forced
                // refresh) gains nothing from it either.
                // With the database unreadable, a grant dropped only because notifications
                // may have been missed is as good as any cached one during an outage.
                let unreadable = matches!(err, TokenError::Store(_));
                let usable = self
                    .inner
                    .cache
                    .get(id)
                    .or_else(|| {
                        unreadable
                            .then(|| self.inner.cache.unconfirmed(id))
                            .flatten()
                    })
                    .filter(|grant| {
                        !force_refresh
                            && grant.token.remaining_secs(crate::domain::now()) >= MIN_LIFE_SECS
                    });
                match usable {
                    Some(grant) => (grant, Served::Stale),
                    None => {
                        metrics::counter!("registry_token_failures_total", "code" => err.code())
                            .increment(1);
                        return Err(err);
                    }
                }
            }
            Err(err) => {
                metrics::counter!("registry_token_failures_total", "code" => err.code())
                    .increment(1);
                return Err(err);
            }
        };
        grant.touch(now);
        count_served(served);
        Ok((grant, served))
    }

    /// Exchanges the refresh token with LWA now, whatever the cache or status says.
    pub async fn authorize(&self, id: ConnectionId) -> Result<Arc<Grant>, TokenError> {
        let need = Need {
            min_remaining_secs: 0,
            fetched_since: Some(now()),
            ignore_status: true,
        };
        // Its own fetch: one under way for workers would not call LWA for a refused
        // connection. Workers arriving now join this one instead.
        self.inner.flights.detach(&id);
        self.fetch_shared(id, need).await
    }

    /// A token fetched after `refused`, which SP-API has just refused: from LWA unless
    /// another fetch brings a newer one. Many callers refused the same token share one
    /// exchange.
    pub async fn refetch(
        &self,
        id: ConnectionId,
        refused: &AccessToken,
    ) -> Result<Arc<Grant>, TokenError> {
        let need = Need {
            min_remaining_secs: 0,
            fetched_since: Some(refused.fetched_at + TimeDelta::microseconds(1)),
            ignore_status: false,
        };
        self.fetch_shared(id, need).await
    }

    /// Drops this connection's token from this process, and stops fetches under way from
    /// caching theirs. (The store tells the other replicas when the change commits.)
    pub fn invalidate(&self, id: ConnectionId) {
        // The stamp first: an RDT fetch checks it under the RDT cache's lock, taken next.
        self.inner.cache.invalidate(id);
        self.inner.restricted.invalidate(id);
        self.inner.flights.detach(&id);
        self.inner
            .restricted_flights
            .detach_where(|(of, _)| *of == id);
    }

    /// Joins or starts the fetch for `id`. A joined fetch may have served a weaker need
    /// (less life left, or a cached token for a forced refresh): then one more fetch is
    /// made for this caller.
    async fn fetch_shared(&self, id: ConnectionId, need: Need) -> Result<Arc<Grant>, TokenError> {
        for round in 0..2 {
            let flight = self
                .inner
                .flights
                .join_or_start(id, || fetch::fetch_and_cache(self.clone(), id, need));
            match flight.await {
                Ok(grant) if need.accepts_token(&grant.token, now()) => return Ok(grant),
                Ok(_) => {}
                // Joined a fetch that would not call LWA for a refused connection.
                Err(TokenError::NotAuthorized(_)) if need.ignore_status && round == 0 => {}
                Err(err) => return Err(err),
            }
        }
        Err(TokenError::Upstream(LwaError::Unavailable {
            reason: "no token with the asked-for life could be fetched".into(),
            retry_after: None,
        }))
    }
}

fn count_served(served: Served) {
    // Registered once: looking a labelled counter up in the recorder costs more than the
    // rest of the hot path.
    static COUNTERS: OnceLock<[metrics::Counter; 3]> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        crate::metrics::handle();
        ["memory", "fetched", "stale"]
            .map(|label| metrics::counter!("registry_token_requests_total", "served" => label))
    });
    let index = match served {
        Served::Memory => 0,
        Served::Fetched => 1,
        Served::Stale => 2,
    };
    counters[index].increment(1);
}
