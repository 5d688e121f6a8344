//! Webhooks over HTTP: a receiver started by the test gets correctly signed events
//! (Standard Webhooks), again after it first failed; endpoints are admin's and
//! validated; a change that does not commit sends nothing; expiring client secrets are
//! announced 14 and 3 days ahead, once each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::both_backends;
use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    ADMIN_KEY, Backend, TestApp, connection_body, invalid_fields, problem, refresh_token,
    spawn_with_lwa,
};

both_backends!(
    a_refused_refresh_token_reaches_the_receiver_signed_and_again_after_a_failure,
    a_change_that_does_not_commit_sends_nothing,
    endpoints_are_validated_and_deleting_one_stops_its_deliveries,
    expiring_client_secrets_are_announced_once_at_14_and_3_days,
);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: String,
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer, in order; then 200.
    answers: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    async fn start(answers: &[u16]) -> (Self, String) {
        let receiver = Self::default();
        *receiver.answers.lock().unwrap() = answers.to_vec();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, format!("http://{addr}/hook"))
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived; fails after 10 s.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..200 {
            if self.received().len() >= n {
                return self.received();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the receiver got {} of {n} requests in 10 s",
            self.received().len()
        );
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    receiver.received.lock().unwrap().push(Received {
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    });
    let mut answers = receiver.answers.lock().unwrap();
    let status = if answers.is_empty() {
        200
    } else {
        answers.remove(0)
    };
    AxumStatus::from_u16(status).unwrap()
}

/// Registers an endpoint; returns its id and signing secret (registered as a secret).
async fn endpoint(app: &TestApp, url: &str, events: &[&str]) -> (String, String) {
    let response = app
        .post(
            "/webhook-endpoints",
            ADMIN_KEY,
            &json!({"url": url, "events": events, "description": "sync alerts"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let secret = crate::logs::secret(body["secret"].as_str().unwrap());
    (body["id"].as_str().unwrap().to_owned(), secret)
}

/// Checks a delivery as a receiver following Standard Webhooks would, computing the
/// signature independently; returns the body.
fn verified(received: &Received, secret: &str) -> Value {
    let header = |name: &str| received.headers[name].to_str().unwrap().to_owned();
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", received.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header("webhook-signature"), expected);
    let sent_at: i64 = timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent_at).abs() < 60);
    assert_eq!(header("content-type"), "application/json");
    serde_json::from_str(&received.body).unwrap()
}

/// Guards delivery: only the subscribed type, signed, the event's id as `webhook-id`
/// on every attempt, retried after a 500, and the attempts shown to the admin.
async fn a_refused_refresh_token_reaches_the_receiver_signed_and_again_after_a_failure(
    backend: Backend,
) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let (receiver, url) = Receiver::start(&[500]).await;
    let (endpoint_id, secret) = endpoint(&app, &url, &["connection.status_changed"]).await;
    let id = app.create_connection(&connection_body(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.refuse_refresh_token(&refresh_token(1));
    let response = app
        .get(&format!("/connections/{id}/token"), ADMIN_KEY)
        .await;
    problem(response, StatusCode::CONFLICT, "connection_not_authorized").await;

    let received = receiver.wait_for(2).await;
    let first = verified(&received[0], &secret);
    let second = verified(&received[1], &secret);
    assert_eq!(first, second, "the same event, sent again");
    assert_eq!(
        received[0].headers["webhook-id"],
        received[1].headers["webhook-id"]
    );
    assert_eq!(first["type"], "connection.status_changed");
    assert_eq!(first["data"]["connection_id"], id.as_str());
    assert_eq!(first["data"]["target_type"], "connection");
    assert_eq!(
        first["data"]["details"],
        json!({"from": "pending", "to": "refresh_token_invalid", "error_code": "invalid_grant"})
    );
    assert_eq!(
        first["data"]["event_id"],
        received[0].headers["webhook-id"].to_str().unwrap()
    );

    let deliveries = app
        .get_json(&format!("/webhook-endpoints/{endpoint_id}/deliveries"))
        .await;
    let items = deliveries["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        1,
        "connection.created was not subscribed: {items:?}"
    );
    assert_eq!(items[0]["status"], "delivered");
    assert_eq!(items[0]["attempts"], 2);
    assert_eq!(items[0]["last_status"], 200);
    assert_eq!(items[0]["event_type"], "connection.status_changed");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        receiver.received().len(),
        2,
        "delivered once it was accepted"
    );
}

/// Guards the outbox: an update that loses its version check writes neither its event
/// nor a delivery; a refused request writes nothing.
async fn a_change_that_does_not_commit_sends_nothing(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let (receiver, url) = Receiver::start(&[]).await;
    endpoint(&app, &url, &["connection.updated", "connection.created"]).await;
    let id = app.create_connection(&connection_body(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    receiver.wait_for(1).await;
    let store = app.db.store().await;
    let connection_id = connection_registry::domain::ConnectionId::parse(&id).unwrap();
    let stale = store.get_connection(connection_id).await.unwrap();
    let response = app
        .patch(
            &format!("/connections/{id}"),
            ADMIN_KEY,
            &json!({"name": "new"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    receiver.wait_for(2).await;
    let events_before = event_count(&app).await;

    // A write on the version read before the PATCH: refused, with its event.
    let mut lost = stale.clone();
    lost.version += 1;
    let event = connection_registry::events::NewEvent::new(
        "connection.updated",
        connection_registry::events::Target::Connection(connection_id),
        json!({"fields": ["name"]}),
    );
    let err = store.update_connection(&lost, &[event]).await.unwrap_err();
    assert!(
        matches!(err, connection_registry::store::StoreError::Conflict),
        "{err}"
    );
    let response = app
        .patch(
            &format!("/connections/{id}"),
            ADMIN_KEY,
            &json!({"region": "mars"}),
        )
        .await;
    problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(event_count(&app).await, events_before);
    assert_eq!(receiver.received().len(), 2);
}

/// Guards the endpoints API: validation naming each field, the secret shown once, and a
/// deleted endpoint getting nothing more.
async fn endpoints_are_validated_and_deleting_one_stops_its_deliveries(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let response = app
        .post(
            "/webhook-endpoints",
            ADMIN_KEY,
            &json!({"url": "http://hooks.example.com/", "events": ["connection.eaten"], "x": 1}),
        )
        .await;
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(invalid_fields(&body), ["events", "url", "x"]);
    let writer = app.api_key(&["connections:write"]).await;
    let response = app.get("/webhook-endpoints", &writer).await;
    problem(response, StatusCode::FORBIDDEN, "forbidden").await;

    // A receiver that is down: deliveries wait, then the endpoint is deleted.
    let (receiver, url) = Receiver::start(&[503, 503, 503, 503, 503, 503, 503, 503]).await;
    // The receiver authenticates us by a token in its URL: kept for delivery, kept out
    // of the audit trail.
    let url = format!("{url}?auth=receiver-token-7f3a");
    let (id, secret) = endpoint(&app, &url, &["connection.created"]).await;
    let created = app
        .get_json("/audit-events?type=webhook_endpoint.created")
        .await;
    assert_eq!(created["items"][0]["target_id"], id.as_str());
    let recorded = created["items"][0]["body"]["url"].as_str().unwrap();
    assert!(recorded.ends_with("/hook"), "{recorded}");
    let listed = app.get_json("/webhook-endpoints").await;
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert_eq!(listed["items"][0]["events"], json!(["connection.created"]));
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is shown once"
    );
    app.create_connection(&connection_body(1)).await;
    receiver.wait_for(1).await;
    let response = app
        .delete(&format!("/webhook-endpoints/{id}"), ADMIN_KEY)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let after_delete = receiver.received().len();
    app.create_connection(&connection_body(2)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        receiver.received().len(),
        after_delete,
        "nothing after the delete"
    );
    let deliveries = app
        .get_json(&format!("/webhook-endpoints/{id}/deliveries"))
        .await;
    let items = deliveries["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["status"], "failed");
    assert_eq!(items[0]["last_error"], "the endpoint was deleted");
    assert_eq!(app.get_json("/webhook-endpoints").await["items"], json!([]));
    let again = app
        .delete(&format!("/webhook-endpoints/{id}"), ADMIN_KEY)
        .await;
    problem(again, StatusCode::NOT_FOUND, "not_found").await;
    let unknown = app
        .get("/webhook-endpoints/nope/deliveries", ADMIN_KEY)
        .await;
    problem(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

/// Guards the expiry announcements: one at 14 days, one at 3 (a secret already inside 3
/// days gets only that one), none twice, none for a secret far off.
async fn expiring_client_secrets_are_announced_once_at_14_and_3_days(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let (receiver, url) = Receiver::start(&[]).await;
    let (_, secret) = endpoint(&app, &url, &["connection.client_secret_expiring"]).await;
    let mut ids = Vec::new();
    for (n, days) in [(1, 10), (2, 2), (3, 60)] {
        let mut body = connection_body(n);
        let at = chrono::Utc::now() + chrono::Duration::days(days);
        body["client_secret_expires_at"] =
            json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        ids.push(
            app.create_connection(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let received = receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), 2, "each warning once");
    let mut warned: Vec<(String, i64)> = received
        .iter()
        .map(|r| {
            let body = verified(r, &secret);
            assert_eq!(body["type"], "connection.client_secret_expiring");
            (
                body["data"]["connection_id"].as_str().unwrap().to_owned(),
                body["data"]["details"]["days_ahead"].as_i64().unwrap(),
            )
        })
        .collect();
    warned.sort();
    let mut expected = vec![(ids[0].clone(), 14), (ids[1].clone(), 3)];
    expected.sort();
    assert_eq!(warned, expected);
}

async fn event_count(app: &TestApp) -> usize {
    app.get_json("/audit-events?limit=500").await["items"]
        .as_array()
        .unwrap()
        .len()
}
