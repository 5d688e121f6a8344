//! API keys: 401 vs 403, scopes, keys shown once, revocation across replicas.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    ADMIN_KEY, Backend, MASTER_KEYS, TestApp, invalid_fields, not_found, problem, spawn_app,
};

crate::single!(unknown_keys_are_remembered_as_unknown_for_two_seconds);

both_backends!(
    missing_or_unknown_keys_are_401,
    forbidden_comes_before_validation,
    created_keys_are_shown_once_and_listed_without_secret,
    invalid_key_requests_are_named,
    revoked_key_stops_working_on_every_replica_within_5_seconds,
    a_revoked_bootstrap_key_stays_revoked_after_a_restart,
    a_key_asked_what_it_is_names_itself_and_nothing_secret,
);

async fn missing_or_unknown_keys_are_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let no_key = app
        .client
        .get(app.url("/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.headers()["www-authenticate"], "Bearer");
    problem(no_key, StatusCode::UNAUTHORIZED, "unauthorized").await;
    for key in ["crk_unknown-key-0000000000000000000000", "x", ""] {
        problem(
            app.get("/connections", key).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let basic = app
        .client
        .get(app.url("/connections"))
        .header("authorization", format!("Basic {ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    problem(basic, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // The endpoints for orchestrators need no key.
    for path in ["/healthz", "/readyz", "/openapi.yaml"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

/// (Each route's scopes are tabled in `scopes.rs`.) A forbidden caller learns nothing
/// about the body: 403 comes before validation.
async fn forbidden_comes_before_validation(backend: Backend) {
    let app = spawn_app(backend).await;
    let reader = app.api_key(&["connections:read"]).await;
    problem(
        app.post("/connections", &reader, &json!({"region": "bad"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    problem(
        app.post("/connections", &reader, &json!("not an object"))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
}

async fn created_keys_are_shown_once_and_listed_without_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .post(
            "/api-keys",
            ADMIN_KEY,
            &json!({"name": "sync workers", "scopes": ["tokens:read", "connections:read"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let key = created["api_key"].as_str().unwrap();
    assert!(key.starts_with("crk_") && key.len() > 40);
    assert_eq!(
        created["scopes"],
        json!(["tokens:read", "connections:read"])
    );
    assert_eq!(created["prefix"], key[..8]);

    let list: Value = app.get_json("/api-keys").await;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == created["id"])
        .expect("new key listed");
    assert_eq!(listed["name"], "sync workers");
    assert!(listed.get("api_key").is_none());
    assert!(
        !list.to_string().contains(key),
        "the key is never shown again"
    );

    let response = app.get("/connections", key).await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn invalid_key_requests_are_named(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = problem(
        app.post(
            "/api-keys",
            ADMIN_KEY,
            &json!({"name": "", "scopes": ["root"], "extra": 1}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(invalid_fields(&body), ["extra", "name", "scopes"]);
    let body = problem(
        app.post("/api-keys", ADMIN_KEY, &json!({"name": "x", "scopes": []}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(invalid_fields(&body), ["scopes"]);
    for path in [
        "/api-keys/not-an-id",
        &format!("/api-keys/{}", uuid::Uuid::now_v7()),
    ] {
        not_found(app.delete(path, ADMIN_KEY).await).await;
    }
}

async fn revoked_key_stops_working_on_every_replica_within_5_seconds(backend: Backend) {
    let app = spawn_app(backend).await;
    let replica = app.replica().await;
    let created: Value = app
        .post(
            "/api-keys",
            ADMIN_KEY,
            &json!({"name": "doomed", "scopes": ["connections:read"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = created["api_key"].as_str().unwrap();
    // Both replicas know it (the replica looks it up on first use, then from memory).
    assert_eq!(app.get("/connections", key).await.status(), StatusCode::OK);
    assert_eq!(
        replica.get("/connections", key).await.status(),
        StatusCode::OK
    );

    let revoked = app
        .delete(
            &format!("/api-keys/{}", created["id"].as_str().unwrap()),
            ADMIN_KEY,
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/connections", key).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = replica.get("/connections", key).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "revoked key still works on the replica after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list: Value = app.get_json("/api-keys").await;
    assert!(!list.to_string().contains("doomed"));
}

/// Catches: unknown keys not remembered (every guess would cost a query, and fail with
/// 503 rather than 401 while the database is away), remembered one at a time, or
/// remembered for good (a key created on another replica would stay refused).
async fn unknown_keys_are_remembered_as_unknown_for_two_seconds() {
    let fake = crate::fake_amazon::FakeLwa::start().await;
    let (app, proxy) = crate::helpers::spawn_behind_proxy(&fake, |_| {}).await;
    let guesses = [
        "crk_guessed-key-number-one-000000000000",
        "crk_guessed-key-number-two-000000000000",
    ];
    for guess in guesses {
        let response = app.get("/connections", guess).await;
        problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // Without the database, both guesses are still known to be unknown.
    proxy.cut();
    for guess in guesses {
        let response = app.get("/connections", guess).await;
        problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // Two seconds on, the service asks again: the database is away, so it cannot say.
    tokio::time::sleep(connection_registry::api_keys::RELOAD_INTERVAL).await;
    let response = app.get("/connections", guesses[0]).await;
    problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    // Known keys keep working from memory.
    let metrics = app.get("/metrics", ADMIN_KEY).await;
    assert_eq!(metrics.status(), StatusCode::OK);
}

/// Guards `insert_api_key_once`: start-up used to upsert the bootstrap key with
/// `revoked_at = NULL`, so a revoked bootstrap key came back at every restart.
async fn a_revoked_bootstrap_key_stays_revoked_after_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let (other_id, other_admin) = app.api_key_with_id(&["admin"]).await;
    let listed: Value = app
        .get("/api-keys", &other_admin)
        .await
        .json()
        .await
        .unwrap();
    let bootstrap = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["name"] == "bootstrap admin")
        .expect("the bootstrap key is listed");
    let bootstrap_id = bootstrap["id"].as_str().unwrap().to_owned();
    let revoked = app
        .delete(&format!("/api-keys/{bootstrap_id}"), &other_admin)
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let db = app.stop().await;

    // Same settings, bootstrap key included.
    let app = TestApp::start(db, Some(MASTER_KEYS))
        .await
        .expect("starts with a revoked bootstrap key");
    problem(
        app.get("/connections", ADMIN_KEY).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let listed: Value = app
        .get("/api-keys", &other_admin)
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [other_id.as_str()],
        "only the other admin key is active"
    );
    let said =
        crate::logs::lines_containing("REGISTRY_BOOTSTRAP_ADMIN_KEY names a key that was revoked");
    assert_eq!(said.len(), 1, "one start-up error: {said:?}");
    assert!(
        said[0].contains(&bootstrap_id) && said[0].contains("ERROR"),
        "{}",
        said[0]
    );
}

/// Guards `GET /api-keys/current`: each key gets its own id, name and scopes (not
/// another key's), nothing that opens it, and a revoked key gets 401.
async fn a_key_asked_what_it_is_names_itself_and_nothing_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut created = Vec::new();
    for (name, scopes) in [
        ("worker-7", json!(["tokens:read"])),
        ("frontend", json!(["connections:read", "connections:write"])),
    ] {
        let response = app
            .post(
                "/api-keys",
                ADMIN_KEY,
                &json!({"name": name, "scopes": scopes}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        created.push((body, name, scopes));
    }
    for (key, name, scopes) in &created {
        let response = app
            .get("/api-keys/current", key["api_key"].as_str().unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"id": key["id"], "name": name, "scopes": scopes}),
            "exactly the key's id, name and scopes"
        );
    }
    let (worker, _, _) = &created[0];
    let response = app
        .delete(
            &format!("/api-keys/{}", worker["id"].as_str().unwrap()),
            ADMIN_KEY,
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    problem(
        app.get("/api-keys/current", worker["api_key"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}
