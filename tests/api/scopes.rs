//! Who may do what: every route × every kind of caller (no key, a revoked key, and a key
//! of each scope), with the status each must get, and proof that a refused call changed
//! nothing while an allowed one did what it says.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::both_backends;
use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    ADMIN_KEY, APPLICATION_ID, Backend, CLIENT_ID, TestApp, client_secret, connection_body,
    problem, spawn_with_amazon,
};

both_backends!(every_route_answers_each_caller_as_its_scope_allows);

/// The callers, in the order of the columns of `ROUTES`.
const CALLERS: [&str; 6] = [
    "no key",
    "revoked",
    "tokens:read",
    "connections:read",
    "connections:write",
    "admin",
];

/// What a caller gets: the success status of the route, 401 or 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Unauthorized,
    Forbidden,
}
use Expect::{Forbidden as F, Ok as Y, Unauthorized as U};

struct Route {
    method: Method,
    /// `{connection}` and `{api_key}` are replaced by fresh fixtures per call.
    path: &'static str,
    success: StatusCode,
    /// The scope a 403 names.
    scope: &'static str,
    /// Does a successful call change what the admin sees (connections, keys, LWA calls)?
    writes: bool,
    callers: [Expect; 6],
}

#[rustfmt::skip]
fn routes() -> Vec<Route> {
    let route = |method, path, success, scope, writes, callers| Route { method, path, success, scope, writes, callers };
    vec![
        //                                                                              no key revoked tokens c:read c:write admin
        route(Method::GET, "/connections", StatusCode::OK, "connections:read", false, [U, U, F, Y, Y, Y]),
        route(Method::POST, "/connections", StatusCode::CREATED, "connections:write", true, [U, U, F, F, Y, Y]),
        route(Method::GET, "/connections/{connection}", StatusCode::OK, "connections:read", false, [U, U, F, Y, Y, Y]),
        route(Method::PATCH, "/connections/{connection}", StatusCode::OK, "connections:write", true, [U, U, F, F, Y, Y]),
        route(Method::DELETE, "/connections/{connection}", StatusCode::NO_CONTENT, "connections:write", true, [U, U, F, F, Y, Y]),
        route(Method::POST, "/connections/{connection}/authorize", StatusCode::OK, "connections:write", true, [U, U, F, F, Y, Y]),
        route(Method::POST, "/connections/{connection}/test", StatusCode::OK, "connections:write", true, [U, U, F, F, Y, Y]),
        route(Method::GET, "/connections/{connection}/token", StatusCode::OK, "tokens:read", true, [U, U, Y, F, F, Y]),
        route(Method::POST, "/connections/{connection}/restricted-data-token", StatusCode::OK, "tokens:read", true, [U, U, Y, F, F, Y]),
        // Stores a state, which the admin's view does not show (website_auth.rs counts them).
        route(Method::POST, "/connections/{connection}/authorization-url", StatusCode::OK, "connections:write", false, [U, U, F, F, Y, Y]),
        route(Method::PUT, "/client-secrets/{client_id}", StatusCode::OK, "connections:write", true, [U, U, F, F, Y, Y]),
        route(Method::POST, "/client-secrets/{client_id}/rotate", StatusCode::ACCEPTED, "connections:write", true, [U, U, F, F, Y, Y]),
        route(Method::POST, "/notifications/sp-api", StatusCode::OK, "admin", true, [U, U, F, F, F, Y]),
        route(Method::GET, "/audit-events", StatusCode::OK, "admin", false, [U, U, F, F, F, Y]),
        route(Method::GET, "/token-handouts", StatusCode::OK, "admin", false, [U, U, F, F, F, Y]),
        // Endpoints are not in the admin's view above (webhooks.rs counts them).
        route(Method::POST, "/webhook-endpoints", StatusCode::CREATED, "admin", false, [U, U, F, F, F, Y]),
        route(Method::GET, "/webhook-endpoints", StatusCode::OK, "admin", false, [U, U, F, F, F, Y]),
        route(Method::DELETE, "/webhook-endpoints/{webhook}", StatusCode::NO_CONTENT, "admin", false, [U, U, F, F, F, Y]),
        route(Method::GET, "/webhook-endpoints/{webhook}/deliveries", StatusCode::OK, "admin", false, [U, U, F, F, F, Y]),
        // The seller's browser has no key; without Amazon's parameters it is a bad request.
        route(Method::GET, "/oauth/callback", StatusCode::BAD_REQUEST, "", false, [Y, Y, Y, Y, Y, Y]),
        route(Method::GET, "/api-keys", StatusCode::OK, "admin", false, [U, U, F, F, F, Y]),
        route(Method::POST, "/api-keys", StatusCode::CREATED, "admin", true, [U, U, F, F, F, Y]),
        route(Method::DELETE, "/api-keys/{api_key}", StatusCode::NO_CONTENT, "admin", true, [U, U, F, F, F, Y]),
        route(Method::GET, "/api-keys/current", StatusCode::OK, "", false, [U, U, Y, Y, Y, Y]),
        route(Method::GET, "/metrics", StatusCode::OK, "", false, [U, U, Y, Y, Y, Y]),
        route(Method::GET, "/healthz", StatusCode::OK, "", false, [Y, Y, Y, Y, Y, Y]),
        route(Method::GET, "/readyz", StatusCode::OK, "", false, [Y, Y, Y, Y, Y, Y]),
        route(Method::GET, "/openapi.yaml", StatusCode::OK, "", false, [Y, Y, Y, Y, Y, Y]),
    ]
}

/// Everything a call could change, as the admin sees it: connections, API keys and the
/// LWA and SP-API calls made.
async fn state(app: &TestApp, fake: &FakeLwa) -> (Value, Value, usize, usize) {
    (
        app.get_json("/connections?limit=200").await,
        app.get_json("/api-keys").await,
        fake.calls(),
        fake.spapi_calls(),
    )
}

async fn every_route_answers_each_caller_as_its_scope_allows(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let mut keys = Vec::new();
    for caller in CALLERS {
        keys.push(match caller {
            "no key" => None,
            "revoked" => {
                let (id, key) = app.api_key_with_id(&["admin"]).await;
                let response = app.delete(&format!("/api-keys/{id}"), ADMIN_KEY).await;
                assert_eq!(response.status(), StatusCode::NO_CONTENT);
                Some(key)
            }
            scope => Some(app.api_key(&[scope]).await),
        });
    }

    for (n, route) in (100..).zip(routes()) {
        for ((caller, key), expect) in CALLERS.iter().zip(&keys).zip(route.callers) {
            let mut fixture = connection_body(n);
            fixture["application_id"] = json!(APPLICATION_ID);
            let connection = app.create_connection(&fixture).await;
            let (doomed_key_id, _) = app.api_key_with_id(&["connections:read"]).await;
            let path = route
                .path
                .replace("{connection}", connection["id"].as_str().unwrap())
                .replace("{api_key}", &doomed_key_id)
                .replace("{client_id}", CLIENT_ID)
                .replace("{webhook}", &webhook_fixture(&app).await);
            let body = match (&route.method, route.path) {
                (&Method::POST, "/connections") => Some(connection_body(n + 1000)),
                (&Method::POST, "/api-keys") => {
                    Some(json!({"name": "new", "scopes": ["tokens:read"]}))
                }
                (&Method::PATCH, _) => Some(json!({"name": "renamed"})),
                (&Method::PUT, _) => Some(json!({"client_secret": client_secret(n + 5000)})),
                (&Method::POST, "/webhook-endpoints") => Some(json!({
                    "url": "http://127.0.0.1:9/never",
                    "events": ["connection.client_secret_expiring"],
                })),
                (&Method::POST, "/notifications/sp-api") => Some(json!({
                    "notificationType": "APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY",
                    "eventTime": chrono::Utc::now().to_rfc3339(),
                    "notificationMetadata": {"notificationId": format!("scopes-{n}-{caller}")},
                    "payload": {"applicationOAuthClientSecretExpiry": {
                        "clientId": CLIENT_ID,
                        "clientSecretExpiryTime": "2027-02-01T00:00:00Z",
                    }},
                })),
                (&Method::POST, "/connections/{connection}/restricted-data-token") => Some(json!(
                    {"restricted_resources": [{"method": "GET", "path": "/orders/v0/orders/1/address"}]}
                )),
                (&Method::POST, _) => Some(json!({})),
                _ => None,
            };
            let before = state(&app, &fake).await;
            let mut request = app.client.request(route.method.clone(), app.url(&path));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let cell = format!("{caller} {} {}", route.method, route.path);
            match expect {
                Y => assert_eq!(response.status(), route.success, "{cell}"),
                U => {
                    assert_eq!(
                        response.headers().get("www-authenticate").unwrap(),
                        "Bearer",
                        "{cell}"
                    );
                    problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
                }
                F => {
                    let body = problem(response, StatusCode::FORBIDDEN, "forbidden").await;
                    assert_eq!(
                        body["detail"],
                        format!("this API key lacks the `{}` scope", route.scope),
                        "{cell}"
                    );
                }
            }
            let after = state(&app, &fake).await;
            if expect == Y && route.writes {
                assert_ne!(before, after, "{cell} did what it says");
            } else {
                assert_eq!(before, after, "{cell} changed nothing");
            }
        }
    }
}

/// A fresh webhook endpoint (on loopback, never reached: no secret here expires within 14
/// days, so the event it takes never happens).
async fn webhook_fixture(app: &TestApp) -> String {
    let response = app
        .post(
            "/webhook-endpoints",
            ADMIN_KEY,
            &json!({"url": "http://127.0.0.1:9/never", "events": ["connection.client_secret_expiring"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    crate::logs::secret(body["secret"].as_str().unwrap());
    body["id"].as_str().unwrap().to_owned()
}
