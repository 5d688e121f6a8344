//! The event record: every change to a connection, an API key or an application's client
//! secret, written in the same transaction as the change (a transactional outbox), with
//! who made it and in which request. Operators read it as the audit trail
//! (`GET /audit-events`).
//!
//! Who and which request come from the request being served: the HTTP layer runs each
//! request inside `within_request`, and the API-key check names the caller. Work the
//! service does on its own (refreshing tokens ahead, a token exchange shared by many
//! callers, which runs in a task of its own) is the `system`'s.

use std::future::Future;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{ApiKeyId, ClientId, ConnectionId, now};
use crate::store::ConnectionRow;

tokio::task_local! {
    static REQUEST: RequestContext;
}

struct RequestContext {
    request_id: String,
    caller: OnceLock<ApiKeyId>,
}

/// Runs `work` as the request `request_id`: events it records name the request, and the
/// caller once `set_caller` names it.
pub async fn within_request<F: Future>(request_id: String, work: F) -> F::Output {
    let context = RequestContext {
        request_id,
        caller: OnceLock::new(),
    };
    REQUEST.scope(context, work).await
}

/// Names the API key the current request is made with.
pub fn set_caller(id: ApiKeyId) {
    let _ = REQUEST.try_with(|context| context.caller.set(id));
}

/// `api_key:<id>` for a request made with an API key, `system` otherwise.
fn actor_and_request() -> (String, Option<String>) {
    REQUEST
        .try_with(|context| {
            let actor = context
                .caller
                .get()
                .map_or_else(|| "system".to_owned(), |id| format!("api_key:{id}"));
            (actor, Some(context.request_id.clone()))
        })
        .unwrap_or_else(|_| ("system".to_owned(), None))
}

/// What an event is about.
#[derive(Debug, Clone)]
pub enum Target {
    Connection(ConnectionId),
    ApiKey(ApiKeyId),
    ClientSecret(ClientId),
    WebhookEndpoint(Uuid),
}

/// One event, ready to be written with its change.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub kind: &'static str,
    pub occurred_at: DateTime<Utc>,
    pub actor: String,
    pub target_type: &'static str,
    pub target_id: String,
    pub connection_id: Option<ConnectionId>,
    pub request_id: Option<String>,
    /// Never a secret.
    pub body: Value,
}

impl NewEvent {
    pub fn new(kind: &'static str, target: Target, body: Value) -> Self {
        let (actor, request_id) = actor_and_request();
        let (target_type, target_id, connection_id) = match target {
            Target::Connection(id) => ("connection", id.to_string(), Some(id)),
            Target::ApiKey(id) => ("api_key", id.to_string(), None),
            Target::ClientSecret(client_id) => ("client_secret", client_id.to_string(), None),
            Target::WebhookEndpoint(id) => ("webhook_endpoint", id.to_string(), None),
        };
        Self {
            id: Uuid::now_v7(),
            kind,
            occurred_at: now(),
            actor,
            target_type,
            target_id,
            connection_id,
            request_id,
            body,
        }
    }
}

/// The events of a connection going from `before` to `after` (`None`: not there):
/// `connection.created`, `connection.deleted`, `connection.updated` naming the fields that
/// changed (secrets by name only; a new stored access token is not a change), and
/// `connection.status_changed` with from, to and the error code Amazon gave.
pub fn connection_events(
    before: Option<&ConnectionRow>,
    after: Option<&ConnectionRow>,
) -> Vec<NewEvent> {
    match (before, after) {
        (None, Some(after)) => {
            let c = &after.connection;
            vec![NewEvent::new(
                "connection.created",
                Target::Connection(c.id),
                json!({
                    "name": c.name,
                    "account_type": c.account_type,
                    "region": c.region,
                    "environment": c.environment,
                    "client_id": c.client_id,
                    "merchant_token": c.merchant_token,
                }),
            )]
        }
        (Some(before), None) => vec![NewEvent::new(
            "connection.deleted",
            Target::Connection(before.connection.id),
            json!({"client_id": before.connection.client_id}),
        )],
        (Some(before), Some(after)) => changes(before, after),
        (None, None) => Vec::new(),
    }
}

fn changes(before: &ConnectionRow, after: &ConnectionRow) -> Vec<NewEvent> {
    let id = after.connection.id;
    let mut events = Vec::new();
    let public = |row: &ConnectionRow| match serde_json::to_value(&row.connection) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (public(before), public(after));
    // Said by the status event, or bookkeeping of a change already named.
    let implied = [
        "status",
        "last_error",
        "updated_at",
        "client_secret_updated_at",
    ];
    let mut fields: Vec<&str> = new
        .iter()
        .filter(|(name, value)| !implied.contains(&name.as_str()) && old.get(*name) != Some(value))
        .map(|(name, _)| name.as_str())
        .filter(|name| *name != "client_secret_hint")
        .collect();
    // A secret is sealed again only when it changes (a rewrap does not come here).
    if before.client_secret != after.client_secret {
        fields.push("client_secret");
    }
    if before.refresh_token != after.refresh_token {
        fields.push("refresh_token");
    }
    fields.sort_unstable();
    fields.dedup();
    if !fields.is_empty() {
        events.push(NewEvent::new(
            "connection.updated",
            Target::Connection(id),
            json!({ "fields": fields }),
        ));
    }
    if before.connection.status != after.connection.status {
        events.push(NewEvent::new(
            "connection.status_changed",
            Target::Connection(id),
            json!({
                "from": before.connection.status,
                "to": after.connection.status,
                "error_code": after.connection.last_error.as_ref().map(|e| e.code.clone()),
            }),
        ));
    }
    events
}
