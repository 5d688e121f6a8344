//! A fake Amazon: a real HTTP server on loopback speaking Login with Amazon's token
//! endpoint and the SP-API calls the service makes (`fake_spapi.rs`), as docs/amazon.md
//! describes them. It counts calls and can be told to fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LwaMode {
    Issue,
    /// Issue, but with `expires_in` as a string.
    IssueWithStringExpiry,
    InvalidGrant,
    InvalidClient,
    UnauthorizedClient,
    ServerError,
    Throttled {
        retry_after_secs: u64,
    },
    /// HTML instead of JSON, as a broken proxy would send.
    Garbage,
    /// Accepts the request and never answers.
    Hang,
    /// 307 to the URL given to `redirect_to` (a token endpoint elsewhere).
    Redirect,
    /// Sends the refresh token and client secret it received back, with this status, in
    /// the place `Echo` names: what a hostile or broken endpoint might do.
    EchoSecrets {
        status: u16,
        place: Echo,
    },
    /// A valid-looking JSON token answer of 1 MiB.
    Huge,
}

/// Where `EchoSecrets` puts what it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// As the `error` code.
    ErrorField,
    /// In `error_description`.
    Description,
    /// In a body that is not JSON.
    PlainBody,
}

#[derive(Default)]
pub(crate) struct FakeState {
    mode: Mutex<Option<LwaMode>>,
    delay_ms: AtomicU64,
    expires_in: AtomicU64,
    calls: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    issued: AtomicUsize,
    /// access token → the refresh token it was issued for.
    issued_for: Mutex<HashMap<String, String>>,
    /// access token → when it stops working (refresh-token grants only).
    expiry: Mutex<HashMap<String, std::time::Instant>>,
    /// client secret → how many requests carried it.
    client_secrets: Mutex<HashMap<String, usize>>,
    /// Sent back as `refresh_token` instead of the one received (LWA rotating it).
    rotated_refresh_token: Mutex<Option<String>>,
    /// Tells this fake's access tokens apart from another fake's.
    instance: String,
    /// Where `LwaMode::Redirect` points.
    redirect_to: Mutex<String>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    pub(crate) spapi: crate::fake_spapi::SpApiState,
    /// scope → grantless token requests.
    grantless_calls: Mutex<HashMap<String, usize>>,
    /// Client secrets LWA refuses (`invalid_client`) for grantless tokens.
    refused_secrets: Mutex<Vec<String>>,
    /// Refresh tokens LWA refuses (`invalid_grant`), whatever the mode.
    refused_refresh_tokens: Mutex<Vec<String>>,
    /// Website authorization: code → the grant it stands for, until exchanged.
    authorization_codes: Mutex<HashMap<String, CodeGrant>>,
    /// `grant_type=authorization_code` requests.
    code_exchanges: AtomicUsize,
    /// Grantless token → the client id and secret it was issued to.
    pub(crate) grantless_owners: Mutex<HashMap<String, (String, String)>>,
    /// Secrets replaced by a rotation: accepted until `end_grace`.
    pub(crate) rotated_away: Mutex<Vec<String>>,
    /// Notifications Amazon would have sent (to SQS), oldest first.
    pub(crate) notifications: Mutex<Vec<Value>>,
    /// The application is not subscribed to the new-secret notification: rotation is
    /// refused with 400 `InvalidInput`.
    pub(crate) rotation_not_enrolled: std::sync::atomic::AtomicBool,
}

/// What a seller's consent produced: exchanged once, with this redirect URI, for this
/// refresh token.
struct CodeGrant {
    refresh_token: String,
    redirect_uri: String,
}

/// Counts a request as being answered until dropped.
struct InFlight(Arc<FakeState>);

impl InFlight {
    fn new(state: &Arc<FakeState>) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub struct FakeLwa {
    pub token_url: String,
    /// The SP-API base URL this fake also serves (`REGISTRY_SPAPI_URL`).
    pub spapi_url: String,
    pub(crate) state: Arc<FakeState>,
}

impl FakeLwa {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState {
            instance: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            ..FakeState::default()
        });
        state.expires_in.store(3600, Ordering::SeqCst);
        let app = Router::new()
            .route("/auth/o2/token", post(token))
            .merge(crate::fake_spapi::routes())
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            token_url: format!("http://{addr}/auth/o2/token"),
            spapi_url: format!("http://{addr}"),
            state,
        }
    }

    pub fn set_mode(&self, mode: LwaMode) {
        *self.state.mode.lock().unwrap() = Some(mode);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// `LwaMode::Redirect` answers 307 to this URL.
    pub fn redirect_to(&self, url: &str) {
        *self.state.redirect_to.lock().unwrap() = url.to_owned();
        self.set_mode(LwaMode::Redirect);
    }

    pub fn set_expires_in(&self, seconds: u64) {
        self.state.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// From now on, grantless requests with this client secret are refused as
    /// `invalid_client` (a wrong secret for the client id).
    pub fn refuse_client_secret(&self, secret: &str) {
        self.state
            .refused_secrets
            .lock()
            .unwrap()
            .push(secret.to_owned());
    }

    /// Grantless token requests (`grant_type=client_credentials`) for `scope`.
    pub fn grantless_calls(&self, scope: &str) -> usize {
        self.state
            .grantless_calls
            .lock()
            .unwrap()
            .get(scope)
            .copied()
            .unwrap_or(0)
    }

    /// The most token requests this fake was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Starts counting `max_in_flight` afresh from the requests under way now.
    pub fn reset_max_in_flight(&self) {
        let now = self.state.in_flight.load(Ordering::SeqCst);
        self.state.max_in_flight.store(now, Ordering::SeqCst);
    }

    /// Token requests received, whatever the answer.
    pub fn calls(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    pub fn calls_for(&self, refresh_token: &str) -> usize {
        self.state
            .calls
            .lock()
            .unwrap()
            .get(refresh_token)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `n` token requests have arrived; fails the test after 10 s.
    pub async fn wait_for_calls(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.calls() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "LWA never got request {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Requests that carried this client secret.
    pub fn calls_with_client_secret(&self, client_secret: &str) -> usize {
        self.state
            .client_secrets
            .lock()
            .unwrap()
            .get(client_secret)
            .copied()
            .unwrap_or(0)
    }

    /// From now on, this refresh token is refused with `invalid_grant`.
    pub fn refuse_refresh_token(&self, token: &str) {
        self.state
            .refused_refresh_tokens
            .lock()
            .unwrap()
            .push(token.to_owned());
    }

    /// From now on, successful answers carry this refresh token instead of echoing the
    /// one received.
    pub fn rotate_refresh_token(&self, new: &str) {
        *self.state.rotated_refresh_token.lock().unwrap() = Some(crate::logs::secret(new));
    }

    /// A seller consenting on Amazon's site: returns the `spapi_oauth_code` Amazon would
    /// put in the redirect, good once for `refresh_token` if sent with `redirect_uri`.
    pub fn consent(&self, refresh_token: &str, redirect_uri: &str) -> String {
        let code = format!("ANcode{}", uuid::Uuid::new_v4().simple());
        self.state.authorization_codes.lock().unwrap().insert(
            code.clone(),
            CodeGrant {
                refresh_token: crate::logs::secret(refresh_token),
                redirect_uri: redirect_uri.to_owned(),
            },
        );
        crate::logs::secret(code)
    }

    /// The notifications Amazon sent since the last call (an operator's queue consumer
    /// would forward them).
    pub fn take_notifications(&self) -> Vec<Value> {
        std::mem::take(&mut *self.state.notifications.lock().unwrap())
    }

    /// Seven days pass: LWA refuses the secrets rotations replaced.
    pub fn end_grace(&self) {
        let retired = self.state.rotated_away.lock().unwrap().clone();
        self.state.refused_secrets.lock().unwrap().extend(retired);
    }

    /// From now on the application is not enrolled for rotation (no subscription to the
    /// new-secret notification).
    pub fn refuse_rotation(&self) {
        self.state
            .rotation_not_enrolled
            .store(true, Ordering::SeqCst);
    }

    /// `grant_type=authorization_code` requests received.
    pub fn code_exchanges(&self) -> usize {
        self.state.code_exchanges.load(Ordering::SeqCst)
    }

    /// When an access token issued for a refresh token stops working, by this process's
    /// clock.
    pub fn expiry_of(&self, access_token: &str) -> Option<std::time::Instant> {
        self.state.expiry.lock().unwrap().get(access_token).copied()
    }

    /// The refresh token an access token was issued for.
    pub fn issued_for(&self, access_token: &str) -> Option<String> {
        self.state.issued_for(access_token)
    }
}

impl FakeState {
    pub(crate) fn issued_for(&self, access_token: &str) -> Option<String> {
        self.issued_for.lock().unwrap().get(access_token).cloned()
    }
}

/// The scopes LWA grants grantless tokens for.
const GRANTLESS_SCOPES: [&str; 2] = [
    "sellingpartnerapi::notifications",
    "sellingpartnerapi::client_credential:rotation",
];

/// `grant_type=client_credentials`: a token for the scope, no refresh token.
fn grantless(state: &FakeState, params: &HashMap<String, String>) -> Response {
    let scope = params.get("scope").cloned().unwrap_or_default();
    if !GRANTLESS_SCOPES.contains(&scope.as_str()) {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "The request has an invalid parameter : scope",
        );
    }
    let client_ok = params
        .get("client_id")
        .is_some_and(|v| v.starts_with("amzn1.application-oa2-client."))
        && params.get("client_secret").is_some_and(|v| !v.is_empty())
        && !params.contains_key("refresh_token");
    if !client_ok {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter",
        );
    }
    *state
        .grantless_calls
        .lock()
        .unwrap()
        .entry(scope.clone())
        .or_default() += 1;
    let secret = params.get("client_secret").cloned().unwrap_or_default();
    if state.refused_secrets.lock().unwrap().contains(&secret) {
        return lwa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    match state.mode.lock().unwrap().unwrap_or(LwaMode::Issue) {
        LwaMode::InvalidClient => {
            return lwa_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed",
            );
        }
        LwaMode::ServerError => {
            return lwa_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Internal server error",
            );
        }
        _ => {}
    }
    let n = state.issued.fetch_add(1, Ordering::SeqCst);
    let access_token = crate::logs::secret(format!(
        "Atza|IwEBIgrantless{}-{n:06}-{}",
        state.instance,
        "g".repeat(360)
    ));
    state
        .issued_for
        .lock()
        .unwrap()
        .insert(access_token.clone(), format!("grantless {scope}"));
    state.grantless_owners.lock().unwrap().insert(
        access_token.clone(),
        (params["client_id"].clone(), secret.clone()),
    );
    axum::Json(json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": state.expires_in.load(Ordering::SeqCst),
    }))
    .into_response()
}

/// `grant_type=authorization_code`: a code from `consent`, once, with its redirect URI.
fn authorization_code(state: &FakeState, params: &HashMap<String, String>) -> Response {
    state.code_exchanges.fetch_add(1, Ordering::SeqCst);
    let client_ok = params
        .get("client_id")
        .is_some_and(|v| v.starts_with("amzn1.application-oa2-client."))
        && params.get("client_secret").is_some_and(|v| !v.is_empty())
        && params.contains_key("code")
        && params.contains_key("redirect_uri");
    if !client_ok {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter",
        );
    }
    let secret = params.get("client_secret").cloned().unwrap_or_default();
    if state.refused_secrets.lock().unwrap().contains(&secret)
        || state.mode.lock().unwrap().unwrap_or(LwaMode::Issue) == LwaMode::InvalidClient
    {
        return lwa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    if state.mode.lock().unwrap().unwrap_or(LwaMode::Issue) == LwaMode::ServerError {
        return lwa_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "Internal server error",
        );
    }
    // A code is used up by its first exchange, whatever the outcome.
    let grant = state
        .authorization_codes
        .lock()
        .unwrap()
        .remove(&params["code"]);
    let Some(grant) = grant.filter(|grant| grant.redirect_uri == params["redirect_uri"]) else {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The request has an invalid grant parameter : code",
        );
    };
    let n = state.issued.fetch_add(1, Ordering::SeqCst);
    let access_token = crate::logs::secret(format!(
        "Atza|IwEBIcode{}-{n:06}-{}",
        state.instance,
        "c".repeat(360)
    ));
    state
        .issued_for
        .lock()
        .unwrap()
        .insert(access_token.clone(), grant.refresh_token.clone());
    axum::Json(json!({
        "access_token": access_token,
        "refresh_token": grant.refresh_token,
        "token_type": "bearer",
        "expires_in": state.expires_in.load(Ordering::SeqCst),
    }))
    .into_response()
}

fn lwa_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn token(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    // Form-encoded is documented; Amazon's own SDKs send JSON, so both are accepted.
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let params: HashMap<String, String> = if is_json {
        serde_json::from_slice::<HashMap<String, Value>>(&body)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
            .collect()
    } else {
        serde_urlencoded::from_bytes(&body).unwrap_or_default()
    };
    state.total.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::new(&state);
    let refresh_token = params.get("refresh_token").cloned().unwrap_or_default();
    *state
        .calls
        .lock()
        .unwrap()
        .entry(refresh_token.clone())
        .or_default() += 1;
    if let Some(client_secret) = params.get("client_secret") {
        *state
            .client_secrets
            .lock()
            .unwrap()
            .entry(client_secret.clone())
            .or_default() += 1;
    }

    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => return grantless(&state, &params),
        Some("authorization_code") => return authorization_code(&state, &params),
        _ => {}
    }
    let complete = params.get("grant_type").map(String::as_str) == Some("refresh_token")
        && params
            .get("client_id")
            .is_some_and(|v| v.starts_with("amzn1.application-oa2-client."))
        && params.get("client_secret").is_some_and(|v| !v.is_empty())
        && refresh_token.starts_with("Atzr|");
    if !complete {
        return lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter",
        );
    }
    let refused = state
        .refused_refresh_tokens
        .lock()
        .unwrap()
        .contains(&refresh_token);
    let secret_refused = params
        .get("client_secret")
        .is_some_and(|secret| state.refused_secrets.lock().unwrap().contains(secret));
    let mode = match state.mode.lock().unwrap().unwrap_or(LwaMode::Issue) {
        _ if secret_refused => LwaMode::InvalidClient,
        _ if refused => LwaMode::InvalidGrant,
        mode => mode,
    };
    match mode {
        LwaMode::Issue | LwaMode::IssueWithStringExpiry => {
            let n = state.issued.fetch_add(1, Ordering::SeqCst);
            // About as long as Amazon's (~400 characters), unique to this fake and call.
            let access_token = crate::logs::secret(format!(
                "Atza|IwEBI{}-{n:06}-{}",
                state.instance,
                "x".repeat(370)
            ));
            state
                .issued_for
                .lock()
                .unwrap()
                .insert(access_token.clone(), refresh_token.clone());
            let expires_in = state.expires_in.load(Ordering::SeqCst);
            state.expiry.lock().unwrap().insert(
                access_token.clone(),
                std::time::Instant::now() + Duration::from_secs(expires_in),
            );
            let expires_in = if mode == LwaMode::IssueWithStringExpiry {
                json!(expires_in.to_string())
            } else {
                json!(expires_in)
            };
            let refresh_token = state
                .rotated_refresh_token
                .lock()
                .unwrap()
                .clone()
                .unwrap_or(refresh_token);
            axum::Json(json!({
                "access_token": access_token,
                "refresh_token": refresh_token,
                "token_type": "bearer",
                "expires_in": expires_in,
            }))
            .into_response()
        }
        LwaMode::InvalidGrant => lwa_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The request has an invalid grant parameter : refresh_token",
        ),
        LwaMode::InvalidClient => lwa_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        ),
        LwaMode::UnauthorizedClient => lwa_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "Not authorized for requested operation",
        ),
        LwaMode::ServerError => lwa_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "Internal server error",
        ),
        LwaMode::Throttled { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_secs.to_string())],
            "Rate exceeded",
        )
            .into_response(),
        LwaMode::Garbage => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>Service Temporarily Unavailable</body></html>",
        )
            .into_response(),
        LwaMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        LwaMode::Redirect => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, state.redirect_to.lock().unwrap().clone())],
        )
            .into_response(),
        LwaMode::EchoSecrets { status, place } => {
            let status = StatusCode::from_u16(status).unwrap();
            let client_secret = params.get("client_secret").cloned().unwrap_or_default();
            let both = format!("{refresh_token} {client_secret}");
            match place {
                Echo::ErrorField => lwa_error(status, &both, "something went wrong"),
                Echo::Description => lwa_error(
                    status,
                    "invalid_request",
                    &format!(
                        "cannot use refresh_token={refresh_token}&client_secret={client_secret}"
                    ),
                ),
                Echo::PlainBody => (status, format!("upstream said: {both}")).into_response(),
            }
        }
        LwaMode::Huge => axum::Json(json!({
            "access_token": format!("Atza|{}", "h".repeat(1024 * 1024)),
            "token_type": "bearer",
            "expires_in": 3600,
        }))
        .into_response(),
    }
}
