//! How the token service paces itself.

use std::time::Duration;

use chrono::TimeDelta;

#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Tokens of connections in use are refreshed once they have less than this left.
    pub refresh_ahead: TimeDelta,
    /// How often the refresher looks.
    pub refresh_tick: Duration,
    /// Pause between two refreshes, so due tokens do not hit LWA at once.
    pub refresh_spacing: Duration,
    /// Most refreshes ahead of expiry under way at once; when LWA is slow, the refresher
    /// waits instead of piling up exchanges.
    pub refresh_concurrency: usize,
    /// A cached token nobody asked for in this long is dropped, and no longer refreshed.
    pub idle_after: TimeDelta,
    /// `force_refresh` keeps a token fetched this recently (many workers reporting one bad
    /// token cause one LWA call).
    pub force_refresh_min_age: TimeDelta,
    /// Longest a fetch waits for another replica's LWA exchange of the same connection
    /// before answering `token_fetch_in_progress`; below the request time limit, so the
    /// caller hears why.
    pub lease_wait: Duration,
    /// How often each replica compares what its cached tokens reflect of their connections
    /// with the database's (Postgres), so a change whose notification was lost is seen
    /// within about this long.
    pub recheck_interval: Duration,
    /// After this long without a notification, the change listener checks its link
    /// (and gives it as long to answer).
    pub listener_heartbeat: Duration,
    /// How often the token hand-out counts are written (`crate::handouts`): what a crash
    /// can lose.
    pub handout_flush: Duration,
}

impl TokenSettings {
    /// Keeps `lease_wait` within three quarters of the request time limit.
    pub fn within_request_timeout(mut self, request_timeout: Duration) -> Self {
        self.lease_wait = self.lease_wait.min(request_timeout * 3 / 4);
        self
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            // LWA tokens live 3600 s; workers ask for 60 s by default.
            refresh_ahead: TimeDelta::minutes(5),
            refresh_tick: Duration::from_secs(15),
            refresh_spacing: Duration::from_millis(50),
            refresh_concurrency: 4,
            idle_after: TimeDelta::minutes(15),
            force_refresh_min_age: TimeDelta::seconds(5),
            lease_wait: Duration::from_secs(45),
            recheck_interval: Duration::from_secs(5),
            listener_heartbeat: Duration::from_secs(5),
            handout_flush: Duration::from_secs(5),
        }
    }
}
