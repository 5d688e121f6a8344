//! An application's client secret across its connections: `PUT /client-secrets/{client_id}`
//! and `POST /client-secrets/{client_id}/rotate` (connections:write), and
//! `POST /notifications/sp-api` (admin), where an operator's queue consumer forwards
//! Amazon's notifications.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{ApiError, FieldError};
use super::extract::{Admin, Caller, ConnectionsWrite, JsonObject};
use super::fields::{Fields, string, timestamp};
use crate::app::AppState;
use crate::client_secrets::{Changed, NewSecret, NotificationOutcome};
use crate::domain::{
    ClientId, ClientSecret, NEW_SECRET, NotificationId, ParseError, SECRET_EXPIRY, SecretNotice,
    SpApiNotification,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/client-secrets/{client_id}", put(replace))
        .route("/client-secrets/{client_id}/rotate", post(rotate))
        .route("/notifications/sp-api", post(notification))
}

/// A client id in the path; a malformed one names no application: 404.
fn client_id(raw: &str) -> Result<ClientId, ApiError> {
    ClientId::parse(raw).map_err(|_| ApiError::NotFound("client id"))
}

#[derive(Serialize)]
struct ChangedBody<'a> {
    client_id: &'a str,
    /// Connections using the client id.
    connections: usize,
    /// Of those, the ones that changed.
    changed: usize,
}

async fn replace(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    Path(raw): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let client_id = client_id(&raw)?;
    let mut f = Fields::new(body);
    let secret = f.required("client_secret", string(ClientSecret::parse));
    let expires_at = f.optional("expires_at", string(timestamp));
    let new = f.build(|| Some(NewSecret::by_hand(secret?, expires_at)))?;
    if !new.secret.is_documented_format() {
        tracing::warn!("client secret is not in Amazon's documented format; accepted anyway");
    }
    let Changed {
        connections,
        changed,
    } = state.secrets.replace(&client_id, &new).await?;
    Ok(Json(
        serde_json::to_value(ChangedBody {
            client_id: client_id.as_str(),
            connections,
            changed,
        })
        .expect("serializes"),
    ))
}

async fn rotate(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let client_id = client_id(&raw)?;
    state.secrets.rotate(&client_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "client_id": client_id.as_str(),
            "status": "requested",
            "detail": "Amazon sends the new secret only as an APPLICATION_OAUTH_CLIENT_NEW_SECRET \
                       notification: forward it to POST /notifications/sp-api",
        })),
    ))
}

#[derive(Serialize)]
struct NotificationBody<'a> {
    notification_id: &'a str,
    /// `applied`, `ignored` (no connection uses the client id) or `duplicate`.
    outcome: &'static str,
    /// Connections changed.
    connections: usize,
}

async fn notification(
    _caller: Caller<Admin>,
    State(state): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let notification = parse_notification(&body)?;
    let outcome = state.secrets.apply(&notification).await?;
    let (label, connections) = match outcome {
        NotificationOutcome::Applied(changed) => ("applied", changed.changed),
        NotificationOutcome::Ignored => ("ignored", 0),
        NotificationOutcome::Duplicate => ("duplicate", 0),
    };
    Ok(Json(
        serde_json::to_value(NotificationBody {
            notification_id: notification.id.as_str(),
            outcome: label,
            connections,
        })
        .expect("serializes"),
    ))
}

/// Reads fields by their path in a nested object, collecting every problem so one 422
/// names them all (`payload.applicationOAuthClientNewSecret.clientId`).
struct Nested<'a> {
    root: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Nested<'a> {
    fn get(&mut self, path: &[&str]) -> Option<&'a Value> {
        let mut value: Option<&'a Value> = None;
        let mut object = Some(self.root);
        for (n, key) in path.iter().enumerate() {
            let Some(map) = object else {
                self.reject(&path[..n], "must be an object");
                return None;
            };
            value = map.get(*key).filter(|value| !value.is_null());
            let Some(found) = value else {
                self.reject(path, "is required");
                return None;
            };
            object = found.as_object();
        }
        value
    }

    fn parse<T>(
        &mut self,
        path: &[&str],
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Option<T> {
        match self.get(path)? {
            Value::String(text) => parse(text).map_err(|err| self.reject(path, err.0)).ok(),
            _ => {
                self.reject(path, "must be a string");
                None
            }
        }
    }

    fn reject(&mut self, path: &[&str], message: impl Into<String>) {
        self.errors.push(FieldError {
            field: path.join("."),
            message: message.into(),
        });
    }
}

/// Amazon's envelope (`notificationType`, `eventTime`,
/// `notificationMetadata.notificationId`, `payload`) with one of the two client-secret
/// payloads.
fn parse_notification(body: &Map<String, Value>) -> Result<SpApiNotification, ApiError> {
    let mut n = Nested {
        root: body,
        errors: Vec::new(),
    };
    let id = n.parse(
        &["notificationMetadata", "notificationId"],
        NotificationId::parse,
    );
    let event_time = n.parse(&["eventTime"], timestamp);
    let kind = n.parse(&["notificationType"], |kind| match kind {
        NEW_SECRET | SECRET_EXPIRY => Ok(kind.to_owned()),
        _ => Err(ParseError::new(format!(
            "must be {NEW_SECRET} or {SECRET_EXPIRY}; forward only these to this service"
        ))),
    });
    let parsed = match kind.as_deref() {
        Some(NEW_SECRET) => {
            let at = |field| ["payload", "applicationOAuthClientNewSecret", field];
            let client_id = n.parse(&at("clientId"), ClientId::parse);
            let secret = n.parse(&at("newClientSecret"), ClientSecret::parse);
            let expires_at = n.parse(&at("newClientSecretExpiryTime"), timestamp);
            let old_expires_at = n.parse(&at("oldClientSecretExpiryTime"), timestamp);
            match (client_id, secret, expires_at, old_expires_at) {
                (Some(client_id), Some(secret), Some(expires_at), Some(old_expires_at)) => Some((
                    client_id,
                    SecretNotice::NewSecret {
                        secret,
                        expires_at,
                        old_expires_at,
                    },
                )),
                _ => None,
            }
        }
        Some(_) => {
            let at = |field| ["payload", "applicationOAuthClientSecretExpiry", field];
            let client_id = n.parse(&at("clientId"), ClientId::parse);
            let expires_at: Option<DateTime<Utc>> =
                n.parse(&at("clientSecretExpiryTime"), timestamp);
            client_id
                .zip(expires_at)
                .map(|(client_id, expires_at)| (client_id, SecretNotice::Expiry { expires_at }))
        }
        None => None,
    };
    match (id, event_time, parsed) {
        (Some(id), Some(event_time), Some((client_id, notice))) if n.errors.is_empty() => {
            Ok(SpApiNotification {
                id,
                event_time,
                client_id,
                notice,
            })
        }
        _ => Err(ApiError::Validation(n.errors)),
    }
}

/// The notification parser over generated JSON: any document is either a notification or
/// a 422, never a panic; one with every field well-formed parses.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::parse_notification;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::String),
            Just(json!("APPLICATION_OAUTH_CLIENT_NEW_SECRET")),
            Just(json!("2027-01-01T00:00:00Z")),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("notificationType".to_owned()),
                        Just("eventTime".to_owned()),
                        Just("payload".to_owned()),
                        Just("notificationMetadata".to_owned()),
                        Just("notificationId".to_owned()),
                        Just("applicationOAuthClientNewSecret".to_owned()),
                        Just("clientId".to_owned()),
                        "[a-zA-Z]{1,12}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_document_is_a_notification_or_a_refusal(document in json_value()) {
            let map = match document {
                Value::Object(map) => map,
                other => Map::from_iter([("payload".to_owned(), other)]),
            };
            let _ = parse_notification(&map);
        }

        #[test]
        fn a_well_formed_expiry_notice_parses(id in "[!-~]{1,128}", hex in "[0-9a-f]{32}") {
            let notice = json!({
                "notificationType": "APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY",
                "eventTime": "2026-11-28T10:00:00.000Z",
                "notificationMetadata": {"notificationId": id},
                "payload": {"applicationOAuthClientSecretExpiry": {
                    "clientId": format!("amzn1.application-oa2-client.{hex}"),
                    "clientSecretExpiryTime": "2027-02-01T00:00:00Z",
                }},
            });
            let Value::Object(map) = notice else { unreachable!() };
            let parsed = parse_notification(&map).map_err(|err| format!("{err:?}"));
            prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        }
    }
}
