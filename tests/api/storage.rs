//! The store itself, on both backends: the outcomes handlers rely on.

use connection_registry::crypto::Sealed;
use connection_registry::domain::{ConnectionId, ConnectionStatus, LastError, Region, now};
use connection_registry::store::{ConnectionFilter, StoreError, StoredToken};
use serde_json::Value;

use crate::both_backends;
use crate::helpers::{Backend, connection_body, spawn_app};

both_backends!(
    a_stale_update_is_a_conflict_and_a_missing_row_not_found,
    every_column_round_trips,
    list_filters_combine_with_the_cursor,
    readiness_reflects_the_database,
);
crate::single!(readiness_fails_while_the_database_is_away_and_recovers);

async fn a_stale_update_is_a_conflict_and_a_missing_row_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_connection(&connection_body(1)).await;
    let id = ConnectionId::parse(created["id"].as_str().unwrap()).unwrap();
    let store = app.db.store().await;

    let read_once = store.get_connection(id).await.unwrap();
    let mut first = read_once.clone();
    first.version += 1;
    store.update_connection(&first, &[]).await.unwrap();
    let mut stale = read_once;
    stale.version += 1;
    assert!(matches!(
        store.update_connection(&stale, &[]).await,
        Err(StoreError::Conflict)
    ));

    store.delete_connection(id, &[]).await.unwrap();
    assert!(matches!(
        store.get_connection(id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.update_connection(&first, &[]).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_connection(id, &[]).await,
        Err(StoreError::NotFound)
    ));
}

async fn every_column_round_trips(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_connection(&connection_body(1)).await;
    let id = ConnectionId::parse(created["id"].as_str().unwrap()).unwrap();
    let store = app.db.store().await;

    let mut row = store.get_connection(id).await.unwrap();
    let at = now();
    row.connection.status = ConnectionStatus::ClientSecretExpired;
    row.connection.marketplace_ids = vec!["A1PA6795UKMFR9".into(), "A1F83G8C2ARO7P".into()];
    row.connection.last_error = Some(LastError {
        code: "server_error".into(),
        message: "LWA answered 500".into(),
        at,
    });
    row.connection.authorized_at = Some(at);
    row.connection.last_tested_at = Some(at);
    row.access_token = Some(StoredToken {
        sealed: Sealed::from_stored("v1:k1:c2VhbGVk".into()),
        fetched_at: at,
        expires_at: at + chrono::TimeDelta::hours(1),
    });
    row.version += 1;
    store.update_connection(&row, &[]).await.unwrap();

    let read = store.get_connection(id).await.unwrap();
    assert_eq!(read.version, row.version);
    assert_eq!(read.access_token, row.access_token);
    assert_eq!(read.client_secret, row.client_secret);
    let as_json = |c: &connection_registry::domain::Connection| serde_json::to_value(c).unwrap();
    assert_eq!(as_json(&read.connection), as_json(&row.connection));
    let api: Value = app
        .get(&format!("/connections/{id}"), crate::helpers::ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(api["status"], "client_secret_expired");
    assert_eq!(api["last_error"]["code"], "server_error");
    assert_eq!(api["marketplace_ids"][1], "A1F83G8C2ARO7P");
}

async fn list_filters_combine_with_the_cursor(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut fe_ids = Vec::new();
    for n in 0..6 {
        let mut body = connection_body(n);
        if n % 2 == 0 {
            body["region"] = "fe".into();
        }
        let created = app.create_connection(&body).await;
        if n % 2 == 0 {
            fe_ids.push(ConnectionId::parse(created["id"].as_str().unwrap()).unwrap());
        }
    }
    let store = app.db.store().await;
    let filter = ConnectionFilter {
        region: Some(Region::Fe),
        after: Some(fe_ids[0]),
        ..ConnectionFilter::default()
    };
    let rows = store.list_connections(&filter, 10).await.unwrap();
    let ids: Vec<_> = rows.iter().map(|row| row.connection.id).collect();
    assert_eq!(ids, fe_ids[1..]);
    let first = store
        .list_connections(&ConnectionFilter::default(), 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
}

async fn readiness_reflects_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ready"}));
}

/// Catches: a `/readyz` that answers without asking the database.
async fn readiness_fails_while_the_database_is_away_and_recovers() {
    let fake = crate::fake_amazon::FakeLwa::start().await;
    let (app, proxy) = crate::helpers::spawn_behind_proxy(&fake, |_| {}).await;
    let readyz = || app.client.get(app.url("/readyz")).send();
    assert_eq!(readyz().await.unwrap().status(), reqwest::StatusCode::OK);

    proxy.cut();
    let response = readyz().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "5");
    crate::helpers::problem(
        response,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    // Alive all the same.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    proxy.restore();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while readyz().await.unwrap().status() != reqwest::StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
