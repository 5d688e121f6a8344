//! The token hand-out trail: which API key was handed which connection's token, how many
//! times, in which minute. Counted in memory on the hot path (no database write per
//! request) and added to the database every few seconds (`TokenSettings::handout_flush`,
//! 5 s). A crash loses at most the counts of the last interval; a failed flush keeps its
//! counts for the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{ApiKeyId, ConnectionId};
use crate::store::{Handouts, Store};

/// The minute is counted in whole minutes since the Unix epoch: cheaper on the hot path
/// than truncating a `DateTime`.
type Key = (ApiKeyId, ConnectionId, i64);

/// Counted into by every token request: foldhash, not SipHash (the keys are ids this
/// service made, counted only once a token was handed out).
type Counts = HashMap<Key, i64, foldhash::fast::RandomState>;

#[derive(Clone)]
pub struct HandoutTrail {
    store: Store,
    counts: Arc<Mutex<Counts>>,
    flush_interval: Duration,
}

impl HandoutTrail {
    pub fn new(store: Store, flush_interval: Duration) -> Self {
        Self {
            store,
            counts: Arc::default(),
            flush_interval,
        }
    }

    /// Counts one token handed to `api_key` for `connection` at `at`.
    pub fn record(&self, api_key: ApiKeyId, connection: ConnectionId, at: DateTime<Utc>) {
        let minute = at.timestamp().div_euclid(60);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((api_key, connection, minute)).or_default() += 1;
    }

    /// Adds what was counted since the last flush to the database.
    pub async fn flush(&self) {
        let taken = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            // Sized as the last interval was, so the hot path does not regrow the map
            // (rehashing every entry) from nothing after each flush.
            let capacity = counts.len();
            std::mem::replace(
                &mut *counts,
                Counts::with_capacity_and_hasher(capacity, Default::default()),
            )
        };
        if taken.is_empty() {
            return;
        }
        let rows: Vec<Handouts> = taken
            .iter()
            .map(|(&(api_key_id, connection_id, minute), &count)| Handouts {
                api_key_id,
                connection_id,
                minute: DateTime::from_timestamp(minute * 60, 0)
                    .expect("a minute of a real instant"),
                count,
            })
            .collect();
        if let Err(err) = self.store.add_handouts(&rows).await {
            tracing::warn!(error = %err, "could not write the token hand-out trail; kept for the next flush");
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            for (key, count) in taken {
                *counts.entry(key).or_default() += count;
            }
        }
    }

    /// Flushes every interval, for good.
    pub async fn flush_periodically(self) {
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush().await;
        }
    }
}
