//! Single flight: at most one fetch per connection under way in this process, its result
//! shared by every caller that asks meanwhile.
//!
//! Only the mechanism lives here; what a fetch does is `fetch.rs`'s business. A fetch is
//! spawned, so a caller that gives up does not cancel it for the others, and it leaves
//! the table when it ends, even by panicking.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use super::TokenError;
use crate::amazon::lwa::LwaError;

/// The outcome of one fetch, as every caller that joined it sees it.
pub(super) type Flight<V> = Shared<BoxFuture<'static, Result<Arc<V>, TokenError>>>;

/// Each fetch under way by its key, with its number.
type UnderWay<K, V> = HashMap<K, (u64, Flight<V>)>;

/// The fetches under way, one per key (a connection, or an application and a scope) at
/// most, each bringing back a `V`.
pub(super) struct Flights<K, V> {
    /// Each fetch with its number, so an ending fetch removes itself and not a successor.
    under_way: Arc<Mutex<UnderWay<K, V>>>,
    numbers: Arc<AtomicU64>,
}

impl<K, V> Clone for Flights<K, V> {
    fn clone(&self) -> Self {
        Self {
            under_way: self.under_way.clone(),
            numbers: self.numbers.clone(),
        }
    }
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            under_way: Arc::default(),
            numbers: Arc::default(),
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn lock(&self) -> MutexGuard<'_, UnderWay<K, V>> {
        self.under_way.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fetch under way for `id`, or a new one running `start()`.
    pub fn join_or_start<F>(&self, id: K, start: impl FnOnce() -> F) -> Flight<V>
    where
        F: Future<Output = Result<Arc<V>, TokenError>> + Send + 'static,
    {
        let mut under_way = self.lock();
        if let Some((_, flight)) = under_way.get(&id) {
            metrics::counter!("registry_single_flight_total", "role" => "joined").increment(1);
            return flight.clone();
        }
        metrics::counter!("registry_single_flight_total", "role" => "started").increment(1);
        let number = self.numbers.fetch_add(1, Ordering::Relaxed);
        let landing = Landing {
            flights: self.clone(),
            id: id.clone(),
            number,
        };
        let fetch = start();
        let task = tokio::spawn(async move {
            let result = fetch.await;
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

    /// Later callers start a new fetch instead of joining the one under way (after an
    /// invalidation, that one may bring back what the old credentials gave).
    pub fn detach(&self, id: &K) {
        self.lock().remove(id);
    }

    /// `detach` for every key `which` picks.
    pub fn detach_where(&self, which: impl Fn(&K) -> bool) {
        self.lock().retain(|key, _| !which(key));
    }
}

/// Removes a finished fetch from `Flights`, even if it panicked.
struct Landing<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    flights: Flights<K, V>,
    id: K,
    number: u64,
}

impl<K, V> Drop for Landing<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn drop(&mut self) {
        let mut under_way = self.flights.lock();
        if under_way
            .get(&self.id)
            .is_some_and(|(n, _)| *n == self.number)
        {
            under_way.remove(&self.id);
        }
    }
}
