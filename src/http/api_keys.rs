//! `/api-keys`: admins create, list and revoke API keys; any key may ask what it is
//! (`/api-keys/current`).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::error::ApiError;
use super::extract::{Admin, AnyKey, Caller, Id, JsonObject};
use super::fields::{Fields, string};
use crate::app::AppState;
use crate::domain::{ApiKey, ApiKeyId, ApiKeyName, ParseError, Scope};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api-keys", post(create).get(list))
        .route("/api-keys/current", get(current))
        .route("/api-keys/{id}", delete(revoke))
}

/// What the caller's own key is: a worker checks at start-up that its key is known and
/// holds `tokens:read`, without asking for a token (which may cost an LWA call). A
/// known key is answered from memory; one not yet loaded is looked up once, as on any
/// route.
#[derive(Serialize)]
struct CurrentKey<'a> {
    id: ApiKeyId,
    name: &'a ApiKeyName,
    scopes: &'a [Scope],
}

async fn current(caller: Caller<AnyKey>) -> Response {
    let key = &caller.key;
    Json(CurrentKey {
        id: key.id,
        name: &key.name,
        scopes: &key.scopes,
    })
    .into_response()
}

/// The only response that ever carries a key's plaintext.
#[derive(Serialize)]
struct CreatedKey<'a> {
    #[serde(flatten)]
    key: &'a ApiKey,
    /// Shown once; only its hash is stored.
    api_key: &'a str,
}

async fn create(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(body);
    let name = f.required("name", string(ApiKeyName::parse));
    let scopes = f.required("scopes", scope_list);
    let (name, scopes) = f.build(|| Some((name?, scopes?)))?;
    let created = state.api_keys.create(name, scopes).await?;
    let body = CreatedKey {
        key: &created.key,
        api_key: created.token.expose(),
    };
    let location = format!("/api-keys/{}", created.key.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

#[derive(Serialize)]
struct KeyList {
    items: Vec<ApiKey>,
}

async fn list(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList {
        items: state.api_keys.list().await?,
    }))
}

async fn revoke(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
    Id(id): Id<ApiKeyId>,
) -> Result<StatusCode, ApiError> {
    state.api_keys.revoke(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A non-empty array of distinct scope names.
fn scope_list(value: &Value) -> Result<Vec<Scope>, ParseError> {
    let Value::Array(items) = value else {
        return Err(ParseError::new("must be an array of scopes"));
    };
    if items.is_empty() {
        return Err(ParseError::new("must name at least one scope"));
    }
    let mut scopes = Vec::with_capacity(items.len());
    for item in items {
        let scope = string(Scope::parse)(item)?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}
