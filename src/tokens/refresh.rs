//! Background work: refreshing tokens in use before they expire, forgetting idle ones,
//! and applying other replicas' changes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{Need, TokenService};
use crate::domain::now;
use crate::store::{Backend, Change, ChangeListener};

/// A fetch never outlives this; invalidations older than it need no bookkeeping.
const LONGEST_FETCH: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

impl TokenService {
    /// Keeps tokens of connections in use fresh, and forgets idle ones.
    pub async fn refresh_ahead_periodically(self) {
        let mut interval = tokio::time::interval(self.inner.settings.refresh_tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.refresh_ahead_once().await;
        }
    }

    async fn refresh_ahead_once(&self) {
        let settings = &self.inner.settings;
        let cache = &self.inner.cache;
        let now = now();
        let idle_since = (now - settings.idle_after).timestamp_millis();
        let grants = cache.snapshot();
        metrics::gauge!("registry_cached_tokens").set(grants.len() as f64);
        cache.prune(now - LONGEST_FETCH);
        self.inner.restricted.prune(now);
        for (id, grant) in grants {
            if grant.last_used.load(Ordering::Relaxed) < idle_since {
                cache.remove(id);
                continue;
            }
            if grant.token.expires_at - now > settings.refresh_ahead {
                continue;
            }
            // Beyond the refresh window, so the new token is not itself due at once.
            let need = Need {
                min_remaining_secs: settings.refresh_ahead.num_seconds() + 1,
                fetched_since: None,
                ignore_status: false,
            };
            // At most `refresh_concurrency` under way: a slow LWA slows the refresher
            // down instead of piling up exchanges.
            let permit = self
                .inner
                .refreshes
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let service = self.clone();
            tokio::spawn(async move {
                if let Err(err) = service.fetch_shared(id, need).await {
                    tracing::warn!(connection_id = %id, error = %err, "refresh ahead of expiry failed");
                }
                drop(permit);
            });
            // Spread the work: due tokens do not all hit LWA in the same instant.
            tokio::time::sleep(settings.refresh_spacing).await;
        }
    }

    /// Postgres only: the listener for other replicas' changes, connected before this
    /// replica serves (a notification sent between serving and listening would be lost).
    pub async fn listen_for_changes(&self) -> Option<ChangeListener> {
        let heartbeat = self.inner.settings.listener_heartbeat;
        let mut listener = self.inner.store.change_listener(heartbeat)?;
        if !listener.connect_before_serving().await {
            tracing::warn!("cannot listen for changes yet; serving anyway and retrying");
        }
        Some(listener)
    }

    /// Applies other replicas' changes to this cache.
    pub async fn follow_changes(self, listener: Option<ChangeListener>) {
        let Some(mut listener) = listener else {
            return;
        };
        loop {
            match listener.next().await {
                Change::Connection(id) => self.invalidate(id),
                Change::MaybeMissed => {
                    tracing::info!("change notifications resumed; re-reading cached connections");
                    self.inner.cache.invalidate_all();
                    self.inner.restricted.invalidate_all();
                    self.inner.restricted_flights.detach_where(|_| true);
                }
            }
        }
    }
}

impl TokenService {
    /// Bounds how long a change can go unseen when its notification is lost: every
    /// `recheck_interval`, one query per few thousand cached connections compares
    /// what each grant reflects (status, token, merchant, marketplaces) with the
    /// database's, and drops what changed or is gone. A failed refresh that only noted
    /// `last_error` changes none of that, so an LWA outage does not empty the cache that
    /// is meant to carry workers through it. While the database cannot be reached,
    /// nothing is dropped.
    pub async fn recheck_cached_periodically(self) {
        if self.inner.store.backend() == Backend::Sqlite {
            return;
        }
        let every = self.inner.settings.recheck_interval;
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(err) = tokio::time::timeout(every, self.recheck_cached()).await {
                tracing::debug!(error = %err, "version re-check timed out");
            }
        }
    }

    async fn recheck_cached(&self) {
        const CHUNK: usize = 5_000;
        let cached = self.inner.cache.snapshot();
        for chunk in cached.chunks(CHUNK) {
            let ids: Vec<_> = chunk.iter().map(|(id, _)| *id).collect();
            let current: HashMap<_, _> = match self.inner.store.token_facts(&ids).await {
                Ok(versions) => versions.into_iter().collect(),
                Err(err) => {
                    tracing::debug!(error = %err, "cannot re-check cached versions");
                    return;
                }
            };
            for (id, grant) in chunk {
                let stale = current.get(id).is_none_or(|facts| !grant.reflects(facts));
                if stale {
                    tracing::info!(connection_id = %id, "a change was missed by notification; dropping the cached token");
                    self.invalidate(*id);
                }
            }
        }
    }
}
