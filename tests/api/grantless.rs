//! Grantless tokens (`GET /connections/{id}/token?scope=…`): one per application and
//! scope, shared by every connection of the application, stored for restarts and other
//! replicas, fetched once however many ask.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_amazon::{FakeLwa, LwaMode};
use crate::helpers::{
    Backend, TestApp, connection_body, invalid_fields, problem, refresh_token, spawn_tuned,
    spawn_with_lwa,
};
use crate::tokens::{connection, token};
use crate::{both_backends, single};

both_backends!(
    grantless_tokens_are_per_application_and_scope_and_survive_a_restart,
    another_secret_for_the_application_is_not_handed_its_token,
);
single!(
    replicas_share_one_grantless_exchange,
    refused_client_credentials_stop_grantless_tokens,
);

const NOTIFICATIONS: &str = "sellingpartnerapi::notifications";
const ROTATION: &str = "sellingpartnerapi::client_credential:rotation";

async fn grantless(app: &TestApp, id: &str, scope: &str) -> (Value, String) {
    let response = token(app, id, &format!("?scope={scope}")).await;
    assert_eq!(response.status(), StatusCode::OK, "{scope}");
    let cache = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    (response.json().await.unwrap(), cache)
}

/// Guards the grantless cache key (client id and scope) and its storage: one token per
/// application and scope, not per connection; another scope or application is another
/// token; a restarted server reads the stored one.
async fn grantless_tokens_are_per_application_and_scope_and_survive_a_restart(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let first = connection(&app, 1).await;
    // Another connection of the same application: same client id, same secret.
    let mut sibling = connection_body(2);
    sibling["client_secret"] = json!(crate::helpers::client_secret(1));
    let second = app.create_connection(&sibling).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut other_app = connection_body(3);
    other_app["client_id"] = json!("amzn1.application-oa2-client.fedcba9876543210fedcba9876543210");
    let third = app.create_connection(&other_app).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (one, cache) = grantless(&app, &first, NOTIFICATIONS).await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    assert_eq!(one["token_type"], "bearer");
    assert_eq!(one["merchant_token"], "A1EXAMPLESELLER");
    assert!(one["expires_in"].as_i64().unwrap() > 3500);
    let (shared, cache) = grantless(&app, &second, NOTIFICATIONS).await;
    assert_eq!(cache, "connection-registry; hit");
    assert_eq!(
        shared["access_token"], one["access_token"],
        "one per application"
    );
    assert_eq!(fake.grantless_calls(NOTIFICATIONS), 1);

    let (rotation, _) = grantless(&app, &first, ROTATION).await;
    assert_ne!(
        rotation["access_token"], one["access_token"],
        "one per scope"
    );
    let (elsewhere, _) = grantless(&app, &third, NOTIFICATIONS).await;
    assert_ne!(
        elsewhere["access_token"], one["access_token"],
        "one per application"
    );
    assert_eq!(fake.grantless_calls(NOTIFICATIONS), 2);
    assert_eq!(fake.grantless_calls(ROTATION), 1);
    assert_eq!(
        fake.calls_for(&refresh_token(1)),
        0,
        "no refresh token was exchanged"
    );

    let refused = problem(
        token(&app, &first, "?scope=sellingpartnerapi::migration").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(invalid_fields(&refused), ["scope"]);

    let db = app.stop().await;
    let mut settings = crate::helpers::settings(&db, Some(crate::helpers::MASTER_KEYS));
    settings.lwa_token_url = fake.token_url.clone();
    let app = TestApp::start_with(db, settings).await.expect("restarts");
    let (again, cache) = grantless(&app, &second, NOTIFICATIONS).await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    assert_eq!(
        again["access_token"], one["access_token"],
        "read back, sealed"
    );
    assert_eq!(fake.grantless_calls(NOTIFICATIONS), 2);
}

/// Guards the grantless lease (`Store::lease_grantless`) and single flight: two replicas,
/// ten requests each at once, one LWA call.
async fn replicas_share_one_grantless_exchange() {
    let fake = FakeLwa::start().await;
    let a = spawn_tuned(Backend::Postgres, &fake, |_| {}).await;
    let b = a.replica().await;
    let id = connection(&a, 1).await;
    fake.set_delay(Duration::from_millis(300));
    let mut asks = Vec::new();
    for app in [&a, &b] {
        for _ in 0..10 {
            let request = app
                .client
                .get(app.url(&format!("/connections/{id}/token?scope={NOTIFICATIONS}")))
                .bearer_auth(crate::helpers::ADMIN_KEY)
                .send();
            asks.push(tokio::spawn(request));
        }
    }
    let mut tokens = Vec::new();
    for ask in asks {
        let response = ask.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "every caller got the one token");
    assert_eq!(fake.grantless_calls(NOTIFICATIONS), 1);
}

/// Guards the refusal branch: LWA refusing the client credentials is a 409 that says so,
/// and nothing is cached.
async fn refused_client_credentials_stop_grantless_tokens() {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(Backend::Sqlite, &fake).await;
    let id = connection(&app, 1).await;
    fake.set_mode(LwaMode::InvalidClient);
    let refused = problem(
        token(&app, &id, &format!("?scope={NOTIFICATIONS}")).await,
        StatusCode::CONFLICT,
        "connection_not_authorized",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("client_credentials_invalid"),
        "{refused}"
    );
    fake.set_mode(LwaMode::Issue);
    let (_, cache) = grantless(&app, &id, NOTIFICATIONS).await;
    assert_eq!(
        cache, "connection-registry; fwd=miss",
        "the refusal was not cached"
    );
    assert_eq!(fake.grantless_calls(NOTIFICATIONS), 2);
}

/// Guards the secret's fingerprint in the grantless key: a connection naming an
/// application's client id with another secret was handed that application's token from
/// memory (or from the stored row), never asking LWA.
async fn another_secret_for_the_application_is_not_handed_its_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let owner = connection(&app, 1).await;
    let (shared, _) = grantless(&app, &owner, NOTIFICATIONS).await;

    let mut impostor = connection_body(2);
    let wrong_secret = crate::helpers::client_secret(99);
    impostor["client_secret"] = json!(wrong_secret);
    fake.refuse_client_secret(&wrong_secret);
    let impostor = app.create_connection(&impostor).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = token(&app, &impostor, &format!("?scope={NOTIFICATIONS}")).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let body = refused.text().await.unwrap();
    assert!(
        !body.contains(shared["access_token"].as_str().unwrap()),
        "{body}"
    );
    assert_eq!(
        fake.grantless_calls(NOTIFICATIONS),
        2,
        "its own fetch, refused by LWA"
    );
    // The application's own connections still share theirs.
    let (again, cache) = grantless(&app, &owner, NOTIFICATIONS).await;
    assert_eq!(cache, "connection-registry; hit");
    assert_eq!(again["access_token"], shared["access_token"]);
}
