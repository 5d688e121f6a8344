//! `/connections`: create, list, read, change and delete connections.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::extract::{Caller, ConnectionsRead, ConnectionsWrite, Id, JsonObject, QueryFields};
use super::fields::{Fields, integer_in, string, timestamp};
use super::json_out;
use crate::app::AppState;
use crate::connections::IdempotencyKey;
use crate::domain::{
    AccountType, ApplicationId, ClientId, ClientSecret, Connection, ConnectionId, ConnectionName,
    ConnectionPatch, ConnectionStatus, Environment, MerchantToken, NewConnection, ParseError,
    RefreshToken, Region, parse_period,
};
use crate::store::ConnectionFilter;

const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/connections", post(create).get(list))
        .route("/connections/{id}", get(show).patch(update).delete(remove))
}

async fn create(
    caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key(&headers, &caller, &body)?;
    let new = parse_new_connection(body)?;
    let created = state.connections.create(new, idempotency).await?;
    let location = format!("/connections/{}", created.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created.body),
    )
        .into_response())
}

async fn list(
    _caller: Caller<ConnectionsRead>,
    State(state): State<AppState>,
    QueryFields(mut query): QueryFields,
) -> Result<Response, ApiError> {
    let limit = query.optional("limit", integer_in(1..=MAX_PAGE_SIZE));
    let filter = ConnectionFilter {
        after: query.optional("cursor", string(decode_cursor)),
        status: query.optional("status", string(ConnectionStatus::parse)),
        region: query.optional("region", string(Region::parse)),
        environment: query.optional("environment", string(Environment::parse)),
        merchant_token: query.optional("merchant_token", string(MerchantToken::parse)),
        client_secret_expires_before: query
            .optional("client_secret_expires_within", string(parse_period))
            .map(|period| crate::domain::now() + period),
    };
    query.finish()?;
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE) as u32;
    let page = state.connections.list(filter, limit).await?;
    let next_cursor = page.next.map(encode_cursor);
    let body = json_out::connection_page(&page.items, next_cursor.as_deref());
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn show(
    _caller: Caller<ConnectionsRead>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
) -> Result<Json<Connection>, ApiError> {
    Ok(Json(state.connections.get(id).await?))
}

async fn update(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
    JsonObject(body): JsonObject,
) -> Result<Json<Connection>, ApiError> {
    let patch = parse_patch(body)?;
    Ok(Json(state.connections.update(id, patch).await?))
}

async fn remove(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
) -> Result<StatusCode, ApiError> {
    state.connections.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn parse_new_connection(body: Map<String, Value>) -> Result<NewConnection, ApiError> {
    let mut f = Fields::new(body);
    let name = f.optional("name", string(ConnectionName::parse));
    let account_type = f.optional("account_type", string(AccountType::parse));
    let region = f.required("region", string(Region::parse));
    let environment = f.required("environment", string(Environment::parse));
    let client_id = f.required("client_id", string(ClientId::parse));
    let client_secret = f.required("client_secret", string(ClientSecret::parse));
    let client_secret_expires_at = f.optional("client_secret_expires_at", string(timestamp));
    let refresh_token = f.required("refresh_token", string(RefreshToken::parse));
    let merchant_token = f.required("merchant_token", string(MerchantToken::parse));
    let application_id = f.optional("application_id", string(ApplicationId::parse));
    f.build(|| {
        Some(NewConnection {
            name,
            account_type: account_type.unwrap_or_default(),
            region: region?,
            environment: environment?,
            client_id: client_id?,
            client_secret: client_secret?,
            client_secret_expires_at,
            refresh_token: refresh_token?,
            merchant_token: merchant_token?,
            application_id,
        })
    })
}

fn parse_patch(body: Map<String, Value>) -> Result<ConnectionPatch, ApiError> {
    let mut f = Fields::new(body);
    let patch = ConnectionPatch {
        name: f.clearable("name", string(ConnectionName::parse)),
        account_type: f.replaceable("account_type", string(AccountType::parse)),
        region: f.replaceable("region", string(Region::parse)),
        environment: f.replaceable("environment", string(Environment::parse)),
        client_id: f.replaceable("client_id", string(ClientId::parse)),
        client_secret: f.replaceable("client_secret", string(ClientSecret::parse)),
        client_secret_expires_at: f.clearable("client_secret_expires_at", string(timestamp)),
        refresh_token: f.replaceable("refresh_token", string(RefreshToken::parse)),
        merchant_token: f.replaceable("merchant_token", string(MerchantToken::parse)),
        application_id: f.clearable("application_id", string(ApplicationId::parse)),
    };
    f.build(|| Some(patch))
}

/// `Idempotency-Key`, scoped to the caller's API key, with a hash of the request body.
fn idempotency_key<S>(
    headers: &HeaderMap,
    caller: &Caller<S>,
    body: &Map<String, Value>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= 255)
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 printable ASCII characters",
            )
        })?;
    // serde_json's maps are sorted, so equal bodies serialize, and hash, equally.
    let canonical = serde_json::to_vec(body).expect("a JSON map serializes");
    Ok(Some(IdempotencyKey {
        api_key_id: caller.key.id,
        key: key.to_owned(),
        request_hash: URL_SAFE_NO_PAD.encode(Sha256::digest(canonical)),
    }))
}

fn encode_cursor(id: ConnectionId) -> String {
    URL_SAFE_NO_PAD.encode(id.as_uuid().as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<ConnectionId, ParseError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| uuid::Uuid::from_slice(&bytes).ok())
        .map(ConnectionId::from)
        .ok_or_else(|| ParseError::new("is not a cursor this service returned"))
}
