//! Tokens: `POST /connections/{id}/authorize` for the frontend, and
//! `GET /connections/{id}/token` for sync workers (the hot path), which with `scope`
//! hands out the application's grantless token instead.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::error::ApiError;
use super::extract::{Caller, ConnectionsWrite, Id, QueryFields, TokensRead};
use super::fields::{integer_in, string};
use super::token_body::TokenBody;
use crate::app::AppState;
use crate::domain::{Connection, ConnectionId, GrantlessScope, ParseError, now};
use crate::tokens::Served;

const DEFAULT_MIN_TTL: u64 = 60;
/// A fresh LWA token lives 3600 s; asking for more than this could never be met.
const MAX_MIN_TTL: u64 = 3000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/connections/{id}/authorize", post(authorize))
        .route("/connections/{id}/token", get(token))
}

async fn authorize(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
) -> Result<Json<Connection>, ApiError> {
    state
        .tokens
        .authorize(id)
        .await
        .map_err(ApiError::from_authorization)?;
    Ok(Json(state.connections.get(id).await?))
}

/// Also served ahead of the router (`super::token_first`).
pub(super) async fn token(
    caller: Caller<TokensRead>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
    QueryFields(mut query): QueryFields,
) -> Result<Response, ApiError> {
    let min_ttl = query.optional("min_ttl", integer_in(0..=MAX_MIN_TTL));
    let force_refresh = query.optional("force_refresh", string(boolean));
    let scope = query.optional("scope", string(GrantlessScope::parse));
    query.finish()?;
    let min_ttl = min_ttl.unwrap_or(DEFAULT_MIN_TTL) as i64;
    let force_refresh = force_refresh.unwrap_or(false);
    let (grant, served, asked) = match scope {
        None => {
            let asked = now();
            let (grant, served) = state.tokens.get(id, min_ttl, force_refresh, asked).await?;
            (grant, served, Some(asked))
        }
        Some(scope) => {
            // Reads the connection from the database even when its token is in memory.
            let (grant, served) = state
                .tokens
                .grantless(id, scope, min_ttl, force_refresh)
                .await?;
            (grant, served, None)
        }
    };
    // One clock read for a connection's token served from memory; one that waited on
    // anything (a fetch, the database) is timed from when it came back.
    let now = match (served, asked) {
        (Served::Memory, Some(asked)) => asked,
        _ => now(),
    };
    state.handouts.record(caller.key.id, id, now);
    let body = TokenBody {
        access_token: grant.token.expose(),
        access_token_is_plain: grant.token.is_json_plain(),
        token_type: "bearer",
        expires_at: grant.token.expires_at,
        expires_in: grant.token.remaining_secs(now).max(0),
        sp_api_endpoint: &grant.endpoint.sp_api_endpoint,
        aws_region: grant.endpoint.aws_region,
        region: grant.region,
        environment: grant.environment,
        merchant_token: &grant.merchant_token,
        marketplace_ids: &grant.marketplace_ids,
    };
    Ok(credential_json(body.to_json(), served))
}

/// A response whose body is a credential: nothing on the way may keep it
/// (`Cache-Control: no-store`), and `Cache-Status` (RFC 9211) tells the worker (and the
/// tests) whether it waited on a fetch.
pub(super) fn credential(body: impl Serialize, served: Served) -> Response {
    let json = serde_json::to_vec(&body).expect("a credential body serializes");
    credential_json(json, served)
}

/// A constant, so the hot path does not parse the name on every response.
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

fn credential_json(json: Vec<u8>, served: Served) -> Response {
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CACHE_STATUS,
        HeaderValue::from_static(match served {
            Served::Memory => "connection-registry; hit",
            Served::Fetched => "connection-registry; fwd=miss",
            Served::Stale => "connection-registry; hit; detail=stale",
        }),
    );
    response
}

fn boolean(input: &str) -> Result<bool, ParseError> {
    match input {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ParseError::new("must be `true` or `false`")),
    }
}
