//! What the service did, for operators (admin): `GET /audit-events`, every change newest
//! first, and `GET /token-handouts`, who was handed which connection's tokens. Reads are
//! not audited.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::error::ApiError;
use super::extract::{Admin, Caller, QueryFields};
use super::fields::{integer_in, string, timestamp};
use crate::app::AppState;
use crate::domain::{ApiKeyId, ConnectionId, ParseError};
use crate::store::{EventFilter, Handouts, StoredEvent};

const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/audit-events", get(audit_events))
        .route("/token-handouts", get(token_handouts))
}

#[derive(Serialize)]
struct EventPage {
    items: Vec<StoredEvent>,
    next_cursor: Option<String>,
}

async fn audit_events(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
    QueryFields(mut query): QueryFields,
) -> Result<Json<EventPage>, ApiError> {
    let limit = query.optional("limit", integer_in(1..=MAX_PAGE_SIZE));
    let filter = EventFilter {
        connection_id: query.optional("connection_id", string(ConnectionId::parse)),
        actor: query.optional("actor", string(actor)),
        kind: query.optional("type", string(event_type)),
        since: query.optional("since", string(timestamp)),
        until: query.optional("until", string(timestamp)),
        before: query.optional("cursor", string(cursor)),
    };
    query.finish()?;
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE) as u32;
    let mut items = state.store.list_events(&filter, limit + 1).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|event| event.id.to_string())
    } else {
        None
    };
    Ok(Json(EventPage { items, next_cursor }))
}

/// `system`, or `api_key:<id>` (a bare key id is taken as that).
fn actor(input: &str) -> Result<String, ParseError> {
    if input == "system" {
        return Ok(input.to_owned());
    }
    let id = input.strip_prefix("api_key:").unwrap_or(input);
    ApiKeyId::parse(id)
        .map(|id| format!("api_key:{id}"))
        .map_err(|_| ParseError::new("must be `system` or an API key id"))
}

fn event_type(input: &str) -> Result<String, ParseError> {
    let valid = (1..=64).contains(&input.len())
        && input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_');
    valid
        .then(|| input.to_owned())
        .ok_or_else(|| ParseError::new("must be an event type like `connection.status_changed`"))
}

fn cursor(input: &str) -> Result<uuid::Uuid, ParseError> {
    uuid::Uuid::try_parse(input)
        .map_err(|_| ParseError::new("is not a cursor this service returned"))
}

#[derive(Serialize)]
struct HandoutPage {
    items: Vec<Handouts>,
}

async fn token_handouts(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
    QueryFields(mut query): QueryFields,
) -> Result<Json<HandoutPage>, ApiError> {
    let limit = query.optional("limit", integer_in(1..=MAX_PAGE_SIZE));
    let connection_id = query.optional("connection_id", string(ConnectionId::parse));
    let api_key_id = query.optional("api_key_id", string(ApiKeyId::parse));
    query.finish()?;
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE) as u32;
    let items = state
        .store
        .list_handouts(connection_id, api_key_id, limit)
        .await?;
    Ok(Json(HandoutPage { items }))
}
