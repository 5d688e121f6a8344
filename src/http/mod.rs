//! The HTTP API: one router per resource, merged here under shared layers.

mod api_keys;
mod audit;
mod client_secrets;
mod connections;
pub mod error;
mod extract;
mod fields;
mod health;
mod json_out;
mod oauth;
mod serve;
mod spapi;
mod token_body;
mod token_first;
mod tokens;
mod webhooks;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::handler::Handler;
use axum::http::{HeaderName, Request};
use axum::response::IntoResponse;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::app::AppState;
pub use error::ApiError;
pub use extract::BODY_LIMIT;
pub use serve::{ConnectionLimits, serve};
pub use token_first::Api;
use token_first::RouteTemplate;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API: the router, and the token route served ahead of it
/// (`token_first`), both under the same layers.
pub fn api(state: AppState) -> Api {
    // No request may hold a connection longer than this; by default above the longest
    // LWA exchange (three attempts with their timeouts and backoff).
    let request_timeout = state.request_timeout;
    // Outermost first: a request passes these top to bottom, its response bottom to top.
    let layers = ServiceBuilder::new()
        // Before anything else, so every log line and every response carries the id:
        // the caller's, if it is a sane token, else a new one.
        .layer(axum::middleware::from_fn(drop_insane_request_id))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                // One line per request, with its status and latency.
                .on_response(
                    tower_http::trace::DefaultOnResponse::new()
                        .level(tracing::Level::INFO)
                        .latency_unit(tower_http::LatencyUnit::Millis),
                ),
        )
        // Events the request causes name it, and its caller.
        .layer(axum::middleware::from_fn(within_request))
        .layer(axum::middleware::from_fn(record_http_metrics))
        // Inside the trace, so a timed-out request is logged with its 503.
        .layer(axum::middleware::from_fn(move |request, next| {
            time_limit(request_timeout, request, next)
        }))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let token = BoxCloneSyncService::new(
        layers
            .clone()
            .service(tokens::token.with_state(state.clone()))
            .map_response(IntoResponse::into_response),
    );
    let router = Router::new()
        .merge(health::router())
        .merge(connections::router())
        .merge(api_keys::router())
        .merge(tokens::router())
        .merge(spapi::router())
        .merge(oauth::router())
        .merge(client_secrets::router())
        .merge(audit::router())
        .merge(webhooks::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(layers);
    Api::new(token, router)
}

/// The route template a request was matched to, by the router or ahead of it.
fn route_template<B>(request: &Request<B>) -> Option<&str> {
    let extensions = request.extensions();
    extensions
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .or_else(|| extensions.get::<RouteTemplate>().map(|route| route.0))
}

/// The span of one request: the path, never the query string or headers, so no secret
/// can reach a log.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let route = route_template(request).unwrap_or("");
    // The fields are only worked out when the span is recorded (not at all below INFO).
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        path = %request.uri().path(),
        request_id,
        connection_id = connection_id(route, request.uri().path()),
        // Filled in once the API key is checked.
        api_key_id = tracing::field::Empty,
    )
}

/// The connection a request is about, as its own field for log queries.
fn connection_id<'a>(route: &str, path: &'a str) -> &'a str {
    route
        .starts_with("/connections/{id}")
        .then(|| path.split('/').nth(2))
        .flatten()
        .unwrap_or("")
}

/// Answers `request_timeout` (503, problem+json) when a request outlives `limit`.
async fn time_limit(
    limit: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// A caller's `X-Request-Id` is kept only if it is 1–128 letters, digits, `-`, `_`, `.`
/// or `:`; anything else (too long, spaces, a log-forging newline) is replaced by a new
/// id.
async fn drop_insane_request_id(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let sane = request.headers().get(&REQUEST_ID).is_none_or(|value| {
        let bytes = value.as_bytes();
        (1..=128).contains(&bytes.len())
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    if !sane {
        request.headers_mut().remove(&REQUEST_ID);
    }
    next.run(request).await
}

/// Runs the request as an event context (`crate::events`).
async fn within_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    crate::events::within_request(request_id, next.run(request)).await
}

/// `registry_http_requests_total{method, route, status}` and
/// `registry_http_request_duration_seconds{method, route}`: the route template, never the
/// path (it holds ids).
async fn record_http_metrics(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = route_template(&request).unwrap_or("unmatched").to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(
        "registry_http_request_duration_seconds",
        "method" => method.clone(),
        "route" => route.clone()
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "registry_http_requests_total",
        "method" => method,
        "route" => route,
        "status" => status
    )
    .increment(1);
    response
}
