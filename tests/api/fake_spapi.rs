//! The SP-API side of the fake Amazon: the calls the service makes to test a connection,
//! answering as Amazon's models and error bodies describe (docs/amazon.md). An access
//! token is accepted only if the fake LWA issued it and it was not revoked.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::fake_amazon::{FakeLwa, FakeState};

/// How the fake SP-API answers a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpApiMode {
    #[default]
    Answer,
    /// 403 with empty details: the app lacks the role.
    RoleMissing,
    /// 403 "The access token you provided has expired." for every token.
    ExpireEveryToken,
    /// 403 "The LWA secret token you provided has expired."
    SecretExpired,
    /// 429 with `Retry-After`.
    Throttled { retry_after_secs: u64 },
    /// 503 `InternalFailure`.
    Failing,
    /// 400 whose message repeats the access token it got.
    EchoToken,
}

/// One marketplace the fake seller takes part in: id, name, country, currency, and
/// whether the seller participates.
pub type FakeMarketplace = (&'static str, &'static str, &'static str, &'static str, bool);

#[derive(Default)]
pub(crate) struct SpApiState {
    mode: Mutex<SpApiMode>,
    revoked: Mutex<HashSet<String>>,
    marketplaces: Mutex<Option<Vec<FakeMarketplace>>>,
    calls: AtomicUsize,
    rdt_calls: AtomicUsize,
    rdt_issued: AtomicUsize,
    /// The last createRestrictedDataToken body.
    rdt_bodies: Mutex<Option<Value>>,
    /// Path and query of each call, in order.
    seen: Mutex<Vec<(String, HashMap<String, String>)>>,
}

impl FakeLwa {
    pub fn set_spapi_mode(&self, mode: SpApiMode) {
        *self.state.spapi.mode.lock().unwrap() = mode;
    }

    /// SP-API answers this token as expired from now on.
    pub fn revoke_access_token(&self, token: &str) {
        self.state
            .spapi
            .revoked
            .lock()
            .unwrap()
            .insert(token.to_owned());
    }

    /// The seller's marketplaces (default: Amazon.com only).
    pub fn set_marketplaces(&self, marketplaces: &[FakeMarketplace]) {
        *self.state.spapi.marketplaces.lock().unwrap() = Some(marketplaces.to_vec());
    }

    /// createRestrictedDataToken calls so far.
    pub fn rdt_calls(&self) -> usize {
        self.state.spapi.rdt_calls.load(Ordering::SeqCst)
    }

    /// The body of the last createRestrictedDataToken call.
    pub fn last_rdt_request(&self) -> Option<Value> {
        self.state.spapi.rdt_bodies.lock().unwrap().clone()
    }

    pub fn spapi_calls(&self) -> usize {
        self.state.spapi.calls.load(Ordering::SeqCst)
    }

    /// The path and query of every SP-API call so far.
    pub fn spapi_seen(&self) -> Vec<(String, HashMap<String, String>)> {
        self.state.spapi.seen.lock().unwrap().clone()
    }
}

pub(crate) fn routes() -> Router<Arc<FakeState>> {
    Router::new()
        .route(
            "/sellers/v1/marketplaceParticipations",
            get(|state, headers, query| answer(state, headers, query, Call::Seller)),
        )
        .route(
            "/vendor/orders/v1/purchaseOrders",
            get(|state, headers, query| answer(state, headers, query, Call::Vendor)),
        )
        .route(
            "/tokens/2021-03-01/restrictedDataToken",
            axum::routing::post(restricted_data_token),
        )
        .route(
            "/applications/2023-11-30/clientSecret",
            axum::routing::post(rotate_client_secret),
        )
}

/// The Application Management API's rotation: with a grantless rotation token, a new
/// secret for the token's application, delivered only as a notification; the old one is
/// accepted until `end_grace`.
async fn rotate_client_secret(State(state): State<Arc<FakeState>>, headers: HeaderMap) -> Response {
    state.spapi.calls.fetch_add(1, Ordering::SeqCst);
    state.spapi.seen.lock().unwrap().push((
        "/applications/2023-11-30/clientSecret".to_owned(),
        HashMap::new(),
    ));
    if let Some(refusal) = refused(&state, &headers) {
        return refusal;
    }
    let token = headers["x-amz-access-token"].to_str().unwrap().to_owned();
    if state.issued_for(&token).as_deref()
        != Some("grantless sellingpartnerapi::client_credential:rotation")
    {
        return error(StatusCode::FORBIDDEN, "Unauthorized", DENIED, "");
    }
    if state.rotation_not_enrolled.load(Ordering::SeqCst) {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "Application is not subscribed to APPLICATION_OAUTH_CLIENT_NEW_SECRET notification.",
            "",
        );
    }
    let (client_id, old_secret) = state.grantless_owners.lock().unwrap()[&token].clone();
    let new_secret = crate::logs::secret(format!(
        "amzn1.oa2-cs.v1.{}",
        uuid::Uuid::new_v4().simple().to_string().repeat(2)
    ));
    state.rotated_away.lock().unwrap().push(old_secret);
    let now = chrono::Utc::now();
    let at = |days| {
        (now + chrono::Duration::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    state.notifications.lock().unwrap().push(json!({
        "notificationVersion": "1.0",
        "notificationType": "APPLICATION_OAUTH_CLIENT_NEW_SECRET",
        "payloadVersion": "2023-11-30",
        "eventTime": at(0),
        "payload": {
            "applicationOAuthClientNewSecret": {
                "clientId": client_id,
                "newClientSecret": new_secret,
                "newClientSecretExpiryTime": at(180),
                "oldClientSecretExpiryTime": at(7),
            }
        },
        "notificationMetadata": {
            "applicationId": "amzn1.sp.solution.1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9",
            "subscriptionId": "7d4f1f2e-5a3b-4c6d-8e9f-0a1b2c3d4e5f",
            "publishTime": at(0),
            "notificationId": uuid::Uuid::new_v4().to_string(),
        }
    }));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Clone, Copy)]
enum Call {
    Seller,
    Vendor,
}

fn error(status: StatusCode, code: &str, message: &str, details: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": message, "details": details}]})),
    )
        .into_response();
    if status == StatusCode::FORBIDDEN {
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", "AccessDeniedException".parse().unwrap());
    }
    response
}

const DENIED: &str = "Access to requested resource is denied.";

async fn answer(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    call: Call,
) -> Response {
    let spapi = &state.spapi;
    spapi.calls.fetch_add(1, Ordering::SeqCst);
    let path = match call {
        Call::Seller => "/sellers/v1/marketplaceParticipations",
        Call::Vendor => "/vendor/orders/v1/purchaseOrders",
    };
    spapi
        .seen
        .lock()
        .unwrap()
        .push((path.to_owned(), query.clone()));
    if let Some(refusal) = refused(&state, &headers) {
        return refusal;
    }
    match call {
        Call::Seller => {
            let marketplaces = spapi
                .marketplaces
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| vec![("ATVPDKIKX0DER", "Amazon.com", "US", "USD", true)]);
            let payload: Vec<Value> = marketplaces
                .into_iter()
                .map(|(id, name, country, currency, participating)| {
                    json!({
                        "marketplace": {
                            "id": id,
                            "name": name,
                            "countryCode": country,
                            "defaultCurrencyCode": currency,
                            "defaultLanguageCode": "en_US",
                            "domainName": format!("www.{}", name.to_lowercase()),
                        },
                        "participation": {
                            "isParticipating": participating,
                            "hasSuspendedListings": false,
                        },
                        "storeName": "BestSellerStore",
                    })
                })
                .collect();
            axum::Json(json!({"payload": payload})).into_response()
        }
        Call::Vendor => {
            let windowed = ["limit", "createdAfter", "createdBefore"]
                .iter()
                .all(|name| query.contains_key(*name));
            if !windowed {
                return error(StatusCode::BAD_REQUEST, "InvalidInput", "bad query", "");
            }
            axum::Json(json!({"payload": {"pagination": {}, "orders": []}})).into_response()
        }
    }
}

/// The refusal of a call refused before it is looked at: a missing, unknown or revoked
/// token, no user agent, or the mode's error.
fn refused(state: &FakeState, headers: &HeaderMap) -> Option<Response> {
    let spapi = &state.spapi;
    let Some(token) = headers
        .get("x-amz-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            DENIED,
            "Access token is missing in the request header.",
        ));
    };
    if state.issued_for(&token).is_none() {
        return Some(error(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            DENIED,
            "The access token you provided is revoked, malformed or invalid.",
        ));
    }
    if spapi.revoked.lock().unwrap().contains(&token) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            DENIED,
            "The access token you provided has expired.",
        ));
    }
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !user_agent.starts_with("connection-registry/") {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "missing user agent",
            "",
        ));
    }
    let refusal = match *spapi.mode.lock().unwrap() {
        SpApiMode::Answer => return None,
        SpApiMode::RoleMissing => error(StatusCode::FORBIDDEN, "Unauthorized", DENIED, ""),
        SpApiMode::ExpireEveryToken => error(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            DENIED,
            "The access token you provided has expired.",
        ),
        SpApiMode::SecretExpired => error(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            DENIED,
            "The LWA secret token you provided has expired.",
        ),
        SpApiMode::Throttled { retry_after_secs } => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "QuotaExceeded",
                "You exceeded your quota for the requested resource.",
                "",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs.into());
            response
        }
        SpApiMode::Failing => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "InternalFailure",
            "We encountered an internal error. Please try again.",
            "",
        ),
        SpApiMode::EchoToken => error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            &format!("token {token} is not allowed here"),
            &token,
        ),
    };
    Some(refusal)
}

/// `createRestrictedDataToken`: 1 to 50 resources with a method and a path starting with
/// `/`; a path containing `forbidden` is refused as Amazon refuses resources the app may
/// not reach.
async fn restricted_data_token(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let spapi = &state.spapi;
    spapi.calls.fetch_add(1, Ordering::SeqCst);
    spapi.rdt_calls.fetch_add(1, Ordering::SeqCst);
    spapi.seen.lock().unwrap().push((
        "/tokens/2021-03-01/restrictedDataToken".to_owned(),
        HashMap::new(),
    ));
    *spapi.rdt_bodies.lock().unwrap() = Some(body.clone());
    if let Some(refusal) = refused(&state, &headers) {
        return refusal;
    }
    let resources = body["restrictedResources"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let well_formed = (1..=50).contains(&resources.len())
        && resources.iter().all(|r| {
            ["GET", "PUT", "POST", "DELETE"].contains(&r["method"].as_str().unwrap_or(""))
                && r["path"].as_str().is_some_and(|p| p.starts_with('/'))
        });
    if !well_formed {
        return error(StatusCode::BAD_REQUEST, "InvalidInput", "Invalid Input", "");
    }
    if resources
        .iter()
        .any(|r| r["path"].as_str().unwrap_or("").contains("forbidden"))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            "Application does not have access to one or more requested data elements",
            "",
        );
    }
    let n = spapi.rdt_issued.fetch_add(1, Ordering::SeqCst);
    let rdt = crate::logs::secret(format!("Atz.sprdt|IwEBIrdt-{n:06}-{}", "r".repeat(300)));
    axum::Json(json!({"restrictedDataToken": rdt, "expiresIn": 3600})).into_response()
}
