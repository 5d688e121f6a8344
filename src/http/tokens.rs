//! Tokens: `POST /connections/{id}/authorize` for the frontend, and
//! `GET /connections/{id}/token` for sync workers (the hot path).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::connections::connection_id;
use super::error::ApiError;
use super::extract::{Caller, ConnectionsWrite, PathId, QueryFields, TokensRead};
use super::fields::{integer_in, string};
use crate::amazon::lwa::LwaError;
use crate::app::AppState;
use crate::domain::{Connection, Environment, MerchantToken, ParseError, Region, now};
use crate::store::StoreError;
use crate::tokens::{Served, TokenError};

const DEFAULT_MIN_TTL: u64 = 60;
/// A fresh LWA token lives 3600 s; asking for more than this could never be met.
const MAX_MIN_TTL: u64 = 3000;
/// When LWA gave no `Retry-After`.
const DEFAULT_RETRY_AFTER_SECS: u64 = 5;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/connections/{id}/authorize", post(authorize))
        .route("/connections/{id}/token", get(token))
}

async fn authorize(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Connection>, ApiError> {
    let id = connection_id(&id)?;
    state.tokens.authorize(id).await.map_err(|err| match err {
        TokenError::Rejected(lwa) => ApiError::Refused {
            code: lwa.code(),
            detail: lwa.to_string(),
        },
        other => token_error(other),
    })?;
    Ok(Json(state.connections.get(id).await?))
}

#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_at: DateTime<Utc>,
    expires_in: i64,
    sp_api_endpoint: &'a str,
    aws_region: &'static str,
    region: Region,
    environment: Environment,
    merchant_token: &'a MerchantToken,
    marketplace_ids: &'a [String],
}

async fn token(
    _caller: Caller<TokensRead>,
    State(state): State<AppState>,
    PathId(id): PathId,
    QueryFields(mut query): QueryFields,
) -> Result<Response, ApiError> {
    let id = connection_id(&id)?;
    let min_ttl = query.optional("min_ttl", integer_in(0..=MAX_MIN_TTL));
    let force_refresh = query.optional("force_refresh", string(boolean));
    query.finish()?;
    let min_ttl = min_ttl.unwrap_or(DEFAULT_MIN_TTL) as i64;
    let (grant, served) = state
        .tokens
        .get(id, min_ttl, force_refresh.unwrap_or(false))
        .await
        .map_err(token_error)?;
    let body = TokenBody {
        access_token: grant.token.expose(),
        token_type: "bearer",
        expires_at: grant.token.expires_at,
        expires_in: grant.token.remaining_secs(now()).max(0),
        sp_api_endpoint: &grant.endpoint.sp_api_endpoint,
        aws_region: grant.endpoint.aws_region,
        region: grant.region,
        environment: grant.environment,
        merchant_token: &grant.merchant_token,
        marketplace_ids: &grant.marketplace_ids,
    };
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    // The body is a credential: nothing on the way may keep it.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // RFC 9211: tells a worker (and the tests) whether it waited on a fetch.
    headers.insert(
        "cache-status",
        HeaderValue::from_static(match served {
            Served::Memory => "connection-registry; hit",
            Served::Fetched => "connection-registry; fwd=miss",
            Served::Stale => "connection-registry; hit; detail=stale",
        }),
    );
    Ok(response)
}

fn boolean(input: &str) -> Result<bool, ParseError> {
    match input {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ParseError::new("must be `true` or `false`")),
    }
}

/// How a token failure reads to a worker: stop (409), retry later (503), or not found.
fn token_error(err: TokenError) -> ApiError {
    match err {
        TokenError::NotFound => ApiError::NotFound("connection"),
        TokenError::NotAuthorized(status) => not_authorized(status.as_str()),
        TokenError::Rejected(lwa) => not_authorized(match lwa {
            LwaError::InvalidGrant(_) => "refresh_token_invalid",
            _ => "client_credentials_invalid",
        }),
        TokenError::Upstream(lwa) => {
            let (status, retry_after) = match &lwa {
                LwaError::Unavailable { retry_after, .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    retry_after.map(|wait| wait.as_secs()),
                ),
                _ => (StatusCode::BAD_GATEWAY, None),
            };
            ApiError::RetryLater {
                status,
                code: lwa.code(),
                detail: lwa.to_string(),
                retry_after_secs: retry_after.unwrap_or(DEFAULT_RETRY_AFTER_SECS).max(1),
            }
        }
        // Shared by every caller of one flight, hence by reference.
        TokenError::Store(err) => match &*err {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::DatabaseUnavailable
            }
            // The connection changed twice while its token was being fetched.
            StoreError::Conflict => ApiError::RetryLater {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "concurrent_update",
                detail: "the connection changed while its token was fetched; retry".into(),
                retry_after_secs: 1,
            },
            // Another replica's LWA exchange for this connection is taking long.
            StoreError::Busy => ApiError::RetryLater {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "token_fetch_in_progress",
                detail: "another replica is still fetching this connection's token; retry".into(),
                retry_after_secs: DEFAULT_RETRY_AFTER_SECS,
            },
            _ => ApiError::Internal(anyhow::anyhow!("storage failed: {err}")),
        },
        TokenError::Crypto(err) => err.into(),
    }
}

fn not_authorized(status: &str) -> ApiError {
    ApiError::Conflict {
        code: "connection_not_authorized",
        detail: format!(
            "the connection's status is `{status}`: Amazon refused its credentials; stop and \
             alert, a person must re-authorize or fix the connection"
        ),
    }
}
