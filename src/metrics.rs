//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics`.
//!
//! Counters and histograms are recorded where things happen (README, "Operating", lists
//! them); gauges that need the database are read every `GAUGE_INTERVAL` by
//! `gauges_periodically`, never per scrape. No label holds a connection id or a key.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The recorder's handle, installing the recorder on first use.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms as Prometheus histograms (buckets, in seconds), for alert rules
            // on quantiles across replicas.
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if a program embedding this crate installed its own recorder.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            handle
        })
        .clone()
}

/// How often histogram observations are folded into their buckets. The recorder keeps
/// each observation (8 bytes) until then; before this ran on its own, only a scrape of
/// `/metrics` did it, and a server nobody scraped grew by 8 bytes a request (on the
/// benchmark's memory sequence: 1,663 bytes per cached connection without this, 993
/// with it).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds histogram observations in every `UPKEEP_INTERVAL`, for good.
pub async fn upkeep_periodically(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// How often the database-backed gauges are read.
pub const GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// Keeps `registry_connections{status}`, `registry_client_secret_soonest_expiry_seconds`,
/// `registry_webhook_oldest_pending_seconds` and the pool gauges current, for good.
pub async fn gauges_periodically(store: crate::store::Store) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut statuses_seen: Vec<String> = Vec::new();
    loop {
        tick.tick().await;
        let gauges = match store.gauges().await {
            Ok(gauges) => gauges,
            Err(err) => {
                tracing::debug!(error = %err, "could not read the gauges");
                continue;
            }
        };
        // A status no connection has any more reads 0, not its last count.
        for status in &statuses_seen {
            if !gauges
                .connections_by_status
                .iter()
                .any(|(s, _)| s == status)
            {
                metrics::gauge!("registry_connections", "status" => status.clone()).set(0.0);
            }
        }
        for (status, count) in &gauges.connections_by_status {
            metrics::gauge!("registry_connections", "status" => status.clone()).set(*count as f64);
            if !statuses_seen.contains(status) {
                statuses_seen.push(status.clone());
            }
        }
        let now = crate::domain::now();
        let seconds_until = |at: Option<chrono::DateTime<chrono::Utc>>| {
            at.map_or(f64::NAN, |at| (at - now).num_milliseconds() as f64 / 1000.0)
        };
        metrics::gauge!("registry_client_secret_soonest_expiry_seconds")
            .set(seconds_until(gauges.soonest_secret_expiry));
        metrics::gauge!("registry_webhook_oldest_pending_seconds").set(
            gauges
                .oldest_pending_delivery
                .map_or(0.0, |at| (now - at).num_milliseconds() as f64 / 1000.0),
        );
        metrics::gauge!("registry_db_connections", "state" => "in_use")
            .set(gauges.pool_size as f64 - gauges.pool_idle as f64);
        metrics::gauge!("registry_db_connections", "state" => "idle").set(gauges.pool_idle as f64);
    }
}
