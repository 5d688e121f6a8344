//! SP-API on a connection's behalf: `POST /connections/{id}/test` for the frontend, and
//! `POST /connections/{id}/restricted-data-token` for workers.

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;

use super::error::ApiError;
use super::extract::{Caller, ConnectionsWrite, Id, JsonObject, TokensRead};
use super::fields::{Fields, string};
use super::tokens::credential;
use crate::app::AppState;
use crate::connection_test::TestReport;
use crate::domain::{
    ApplicationId, ConnectionId, DataElement, HttpMethod, MAX_RESOURCES, ParseError, ResourcePath,
    RestrictedDataRequest, RestrictedResource, now,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/connections/{id}/test", post(test))
        .route(
            "/connections/{id}/restricted-data-token",
            post(restricted_data_token),
        )
}

async fn test(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
) -> Result<Json<TestReport>, ApiError> {
    Ok(Json(state.tester.test(id).await?))
}

#[derive(Serialize)]
struct RestrictedDataTokenBody<'a> {
    restricted_data_token: &'a str,
    expires_at: DateTime<Utc>,
    expires_in: i64,
}

async fn restricted_data_token(
    _caller: Caller<TokensRead>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(body);
    let resources = f.required("restricted_resources", restricted_resources);
    let target = f.optional("target_application", string(ApplicationId::parse));
    let request = f.build(|| {
        Some(RestrictedDataRequest {
            restricted_resources: resources?,
            target_application: target,
        })
    })?;
    let (rdt, served) = state.tokens.restricted_data_token(id, request).await?;
    let body = RestrictedDataTokenBody {
        restricted_data_token: rdt.token.expose_secret(),
        expires_at: rdt.expires_at,
        expires_in: (rdt.expires_at - now()).num_seconds().max(0),
    };
    Ok(credential(body, served))
}

/// 1 to 50 `{method, path, data_elements?}` objects; data elements are kept sorted and
/// unique, so equal requests are equal.
fn restricted_resources(value: &Value) -> Result<Vec<RestrictedResource>, ParseError> {
    let Value::Array(items) = value else {
        return Err(ParseError::new("must be an array of resources"));
    };
    if items.is_empty() || items.len() > MAX_RESOURCES {
        return Err(ParseError::new(format!(
            "must hold 1 to {MAX_RESOURCES} resources"
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(n, item)| resource(item).map_err(|err| ParseError::new(format!("item {n}: {err}"))))
        .collect()
}

fn resource(item: &Value) -> Result<RestrictedResource, ParseError> {
    let Value::Object(fields) = item else {
        return Err(ParseError::new("must be an object with method and path"));
    };
    let known = ["method", "path", "data_elements"];
    if let Some(unknown) = fields.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(ParseError::new(format!("`{unknown}` is not a known field")));
    }
    let text = |name: &str| match fields.get(name) {
        Some(Value::String(text)) => Ok(text.as_str()),
        _ => Err(ParseError::new(format!("`{name}` must be a string"))),
    };
    let method = HttpMethod::parse(text("method")?)
        .map_err(|err| ParseError::new(format!("`method` {err}")))?;
    let path = ResourcePath::parse(text("path")?)
        .map_err(|err| ParseError::new(format!("`path` {err}")))?;
    let mut data_elements = match fields.get("data_elements") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(elements)) => elements
            .iter()
            .map(|element| match element {
                Value::String(name) => DataElement::parse(name),
                _ => Err(ParseError::new("must be a string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| ParseError::new(format!("`data_elements` {err}")))?,
        Some(_) => return Err(ParseError::new("`data_elements` must be an array")),
    };
    data_elements.sort();
    data_elements.dedup();
    Ok(RestrictedResource {
        method,
        path,
        data_elements,
    })
}
