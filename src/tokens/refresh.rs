//! Background work: refreshing tokens in use before they expire, forgetting idle ones,
//! and applying other replicas' changes.

use std::sync::atomic::Ordering;

use super::{Need, TokenService};
use crate::domain::now;
use crate::store::Change;

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
            let service = self.clone();
            tokio::spawn(async move {
                if let Err(err) = service.fetch_shared(id, need).await {
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
                Change::Connection(id) => self.invalidate(id),
                Change::MaybeMissed => {
                    tracing::info!("change notifications resumed; re-reading cached connections");
                    self.inner.cache.invalidate_all();
                }
            }
        }
    }
}
