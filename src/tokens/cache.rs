//! The grants held in memory, and the bookkeeping that stops a fetch begun before an
//! invalidation from caching what it fetched.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};

use super::Grant;
use crate::domain::{ConnectionId, now};

/// What a fetch notes when it begins; it may cache its result only if, when it ends, no
/// invalidation of that connection (or of everything) came in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    connection: u64,
    everything: u64,
}

#[derive(Default)]
pub(super) struct Cache {
    entries: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    /// Looked up by every token request: foldhash, not SipHash (the ids are this
    /// service's own, not a caller's choice).
    grants: HashMap<ConnectionId, Arc<Grant>, foldhash::fast::RandomState>,
    /// Grants dropped because change notifications may have been missed (the listener
    /// reconnected), not because their connection changed: no longer served as they are,
    /// but still the last resort while the database cannot be read to confirm them, as
    /// any cached token is during an outage.
    unconfirmed: HashMap<ConnectionId, Arc<Grant>>,
    /// The invalidation count of each recently invalidated connection, and when.
    invalidated: HashMap<ConnectionId, (u64, DateTime<Utc>)>,
    everything_invalidated: u64,
    invalidations: u64,
}

impl Entries {
    fn stamp(&self, id: ConnectionId) -> Stamp {
        Stamp {
            connection: self.invalidated.get(&id).map_or(0, |(count, _)| *count),
            everything: self.everything_invalidated,
        }
    }
}

impl Cache {
    pub fn get(&self, id: ConnectionId) -> Option<Arc<Grant>> {
        self.read().grants.get(&id).cloned()
    }

    pub fn stamp(&self, id: ConnectionId) -> Stamp {
        self.read().stamp(id)
    }

    /// Caches `grant` unless `id` was invalidated since `stamp`. A grant replacing another
    /// keeps its last use: refreshing a token is not using it.
    pub fn store(&self, id: ConnectionId, grant: &Arc<Grant>, stamp: Stamp) {
        let mut entries = self.write();
        if entries.stamp(id) != stamp {
            return;
        }
        if let Some(old) = entries.grants.get(&id) {
            let last_used = old.last_used.load(Ordering::Relaxed);
            grant.last_used.store(last_used, Ordering::Relaxed);
        }
        entries.unconfirmed.remove(&id);
        entries.grants.insert(id, grant.clone());
    }

    /// A grant dropped by `invalidate_all` and not replaced or invalidated since.
    pub fn unconfirmed(&self, id: ConnectionId) -> Option<Arc<Grant>> {
        self.read().unconfirmed.get(&id).cloned()
    }

    /// Drops the grant; fetches under way may still cache theirs.
    pub fn remove(&self, id: ConnectionId) {
        let mut entries = self.write();
        entries.grants.remove(&id);
        entries.unconfirmed.remove(&id);
    }

    /// Drops the grant, and whatever fetches under way bring back.
    pub fn invalidate(&self, id: ConnectionId) {
        let mut entries = self.write();
        entries.invalidations += 1;
        let count = entries.invalidations;
        entries.invalidated.insert(id, (count, now()));
        entries.grants.remove(&id);
        entries.unconfirmed.remove(&id);
    }

    /// Drops every grant, and whatever fetches under way bring back; the grants are kept
    /// as `unconfirmed`.
    pub fn invalidate_all(&self) {
        let mut entries = self.write();
        entries.invalidations += 1;
        entries.everything_invalidated = entries.invalidations;
        let dropped: Vec<_> = entries.grants.drain().collect();
        entries.unconfirmed.extend(dropped);
    }

    pub fn snapshot(&self) -> Vec<(ConnectionId, Arc<Grant>)> {
        self.read()
            .grants
            .iter()
            .map(|(id, grant)| (*id, grant.clone()))
            .collect()
    }

    /// Forgets invalidations older than any fetch can be (a fetch is bounded by the
    /// request time limit), so the bookkeeping does not grow without bound.
    pub fn prune(&self, before: DateTime<Utc>) {
        let mut entries = self.write();
        entries.invalidated.retain(|_, (_, at)| *at >= before);
        let now = now();
        entries
            .unconfirmed
            .retain(|_, grant| grant.token.expires_at > now);
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicI64;

    use secrecy::SecretString;

    use super::*;
    use crate::amazon::endpoints::SpApiHosts;
    use crate::domain::{AccessToken, Environment, MerchantToken, Region};

    fn grant(last_used: i64) -> Arc<Grant> {
        let now = now();
        Arc::new(Grant {
            token: AccessToken::new(
                SecretString::from("Atza|t"),
                now,
                now + chrono::TimeDelta::hours(1),
            ),
            region: Region::Eu,
            environment: Environment::Production,
            merchant_token: MerchantToken::parse("A1EXAMPLESELLER").unwrap(),
            marketplace_ids: Vec::new(),
            endpoint: SpApiHosts::default().endpoint(Region::Eu, Environment::Production),
            last_used: AtomicI64::new(last_used),
        })
    }

    #[test]
    fn a_fetch_begun_before_an_invalidation_does_not_cache() {
        let cache = Cache::default();
        let (a, b) = (ConnectionId::generate(), ConnectionId::generate());
        let stamp_a = cache.stamp(a);
        let stamp_b = cache.stamp(b);
        cache.invalidate(a);
        cache.store(a, &grant(0), stamp_a);
        cache.store(b, &grant(0), stamp_b);
        assert!(cache.get(a).is_none(), "invalidated while fetching");
        assert!(
            cache.get(b).is_some(),
            "another connection's invalidation does not matter"
        );

        let stamp_b = cache.stamp(b);
        cache.invalidate_all();
        cache.store(b, &grant(0), stamp_b);
        assert!(cache.get(b).is_none());
        cache.store(a, &grant(0), cache.stamp(a));
        assert!(cache.get(a).is_some(), "a fetch begun after it caches");
    }

    #[test]
    fn a_replacing_grant_keeps_the_last_use_and_remove_keeps_fetches_valid() {
        let cache = Cache::default();
        let id = ConnectionId::generate();
        cache.store(id, &grant(1_000), cache.stamp(id));
        let stamp = cache.stamp(id);
        cache.remove(id);
        cache.store(id, &grant(5_000), stamp);
        assert_eq!(
            cache.get(id).unwrap().last_used.load(Ordering::Relaxed),
            5_000
        );
        cache.store(id, &grant(9_000), cache.stamp(id));
        let refreshed = cache.get(id).unwrap();
        assert_eq!(
            refreshed.last_used.load(Ordering::Relaxed),
            5_000,
            "refreshing is not using"
        );
    }

    #[test]
    fn prune_forgets_old_invalidations_only() {
        let cache = Cache::default();
        let id = ConnectionId::generate();
        cache.invalidate(id);
        let stamp = cache.stamp(id);
        cache.prune(now() - chrono::TimeDelta::minutes(5));
        assert_eq!(cache.stamp(id), stamp);
        cache.prune(now() + chrono::TimeDelta::seconds(1));
        assert_ne!(cache.stamp(id), stamp);
    }
}
