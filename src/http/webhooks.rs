//! Webhook endpoints (admin): `POST /webhook-endpoints` (the signing secret is shown once),
//! `GET /webhook-endpoints`, `DELETE /webhook-endpoints/{id}`, and
//! `GET /webhook-endpoints/{id}/deliveries`.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Admin, Caller, JsonObject};
use super::fields::{Fields, string};
use crate::app::AppState;
use crate::domain::ParseError;
use crate::store::{DeliveryRecord, StoreError};
use crate::webhooks::{EVENT_TYPES, Endpoint, parse_url};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhook-endpoints", get(list).post(create))
        .route("/webhook-endpoints/{id}", delete(remove))
        .route("/webhook-endpoints/{id}/deliveries", get(deliveries))
}

#[derive(Serialize)]
struct Created<'a> {
    #[serde(flatten)]
    endpoint: &'a Endpoint,
    /// `whsec_…`: shown only in this response.
    secret: &'a str,
}

async fn create(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(body);
    let url = f.required("url", string(parse_url));
    let events = f.required("events", event_types);
    let description = f.optional("description", string(description));
    let (url, events) = f.build(|| Some((url?, events?)))?;
    let (endpoint, secret) = state.webhooks.create(url, events, description).await?;
    let mut response = (
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/webhook-endpoints/{}", endpoint.id),
        )],
        Json(Created {
            endpoint: &endpoint,
            secret: secret.expose_secret(),
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn event_types(value: &Value) -> Result<Vec<String>, ParseError> {
    let Value::Array(items) = value else {
        return Err(ParseError::new("must be an array of event types"));
    };
    if items.is_empty() {
        return Err(ParseError::new("must name at least one event type"));
    }
    let mut types = Vec::new();
    for item in items {
        match item.as_str() {
            Some(kind) if EVENT_TYPES.contains(&kind) => types.push(kind.to_owned()),
            _ => {
                return Err(ParseError::new(format!(
                    "must hold only these event types: {}",
                    EVENT_TYPES.join(", ")
                )));
            }
        }
    }
    types.sort();
    types.dedup();
    Ok(types)
}

fn description(input: &str) -> Result<String, ParseError> {
    let valid = input.chars().count() <= 200 && !input.chars().any(char::is_control);
    valid
        .then(|| input.to_owned())
        .ok_or_else(|| ParseError::new("must be at most 200 characters, no control characters"))
}

#[derive(Serialize)]
struct EndpointList {
    items: Vec<Endpoint>,
}

async fn list(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
) -> Result<Json<EndpointList>, ApiError> {
    Ok(Json(EndpointList {
        items: state.webhooks.list().await?,
    }))
}

/// A path id; one that is not a UUID names nothing.
fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::NotFound("webhook endpoint"))
}

fn not_found(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound => ApiError::NotFound("webhook endpoint"),
        other => other.into(),
    }
}

async fn remove(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .webhooks
        .delete(endpoint_id(&raw)?)
        .await
        .map_err(not_found)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct DeliveryList {
    items: Vec<DeliveryRecord>,
}

async fn deliveries(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    let items = state
        .webhooks
        .deliveries(endpoint_id(&raw)?)
        .await
        .map_err(not_found)?;
    Ok(Json(DeliveryList { items }))
}
