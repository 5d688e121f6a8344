//! Prometheus metrics: one process-wide recorder, rendered at `GET /metrics`.
//!
//! Names: `registry_token_requests_total{served}`, `registry_token_failures_total{code}`,
//! `registry_lwa_requests_total{outcome}`, `registry_lwa_request_seconds`,
//! `registry_cached_tokens`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The recorder's handle, installing the recorder on first use.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if a program embedding this crate installed its own recorder.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            handle
        })
        .clone()
}
