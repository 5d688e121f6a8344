//! `/connections`: create, read, list, change, delete, idempotency.

use chrono::{DateTime, Duration, Utc};
use connection_registry::domain::{ConnectionId, ConnectionStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    ADMIN_KEY, Backend, client_secret, connection_body, not_found, problem, refresh_token,
    spawn_app,
};

both_backends!(
    create_returns_the_resource_without_secrets,
    explicit_secret_expiry_is_not_an_estimate,
    list_pages_through_everything_and_filters,
    patch_changes_fields_and_keeps_the_rest,
    new_credentials_send_the_connection_back_to_pending,
    delete_removes_the_connection,
    unknown_and_malformed_ids_are_404,
    idempotency_key_replays_the_first_result,
    concurrent_requests_with_one_idempotency_key_create_one_connection,
    idempotency_records_expire_after_24_hours,
    idempotency_keys_are_validated_and_a_bad_one_stores_nothing,
);

fn timestamp(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .expect("timestamp")
        .parse()
        .expect("RFC 3339")
}

async fn create_returns_the_resource_without_secrets(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .post("/connections", ADMIN_KEY, &connection_body(1))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(location, format!("/connections/{id}"));

    assert_eq!(created["status"], "pending");
    assert_eq!(created["account_type"], "seller");
    assert_eq!(created["region"], "eu");
    assert_eq!(created["merchant_token"], "A1EXAMPLESELLER");
    assert_eq!(created["marketplace_ids"], json!([]));
    assert_eq!(created["last_error"], Value::Null);
    let secret = client_secret(1);
    assert_eq!(created["client_secret_hint"], secret[secret.len() - 4..]);
    assert_eq!(created["client_secret_expires_at_estimated"], true);
    let expires = timestamp(&created["client_secret_expires_at"]);
    let created_at = timestamp(&created["created_at"]);
    assert_eq!(expires - created_at, Duration::days(180));
    let text = created.to_string();
    assert!(!text.contains(&secret) && !text.contains(&refresh_token(1)));
    assert!(created.get("client_secret").is_none() && created.get("refresh_token").is_none());

    let read: Value = app.get_json(&location).await;
    assert_eq!(read, created, "a read returns what the create returned");
}

async fn explicit_secret_expiry_is_not_an_estimate(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut body = connection_body(1);
    body["client_secret_expires_at"] = json!("2027-03-01T12:00:00+01:00");
    body["account_type"] = json!("vendor");
    body["application_id"] = json!("amzn1.sp.solution.1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9");
    let created = app.create_connection(&body).await;
    assert_eq!(created["client_secret_expires_at_estimated"], false);
    assert_eq!(
        timestamp(&created["client_secret_expires_at"]),
        "2027-03-01T11:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(created["account_type"], "vendor");
    assert_eq!(
        created["application_id"],
        "amzn1.sp.solution.1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
    );
}

async fn list_pages_through_everything_and_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ids = Vec::new();
    for n in 0..7 {
        let mut body = connection_body(n);
        if n % 3 == 0 {
            body["region"] = json!("na");
            body["environment"] = json!("sandbox");
            body["merchant_token"] = json!("A1OTHERSELLER9");
        }
        ids.push(app.create_connection(&body).await["id"].clone());
    }

    let mut seen = Vec::new();
    let mut path = "/connections?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page: Value = app.get_json(&path).await;
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|item| item["id"].clone()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/connections?limit=3&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "pagination must end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every connection once, in creation order");

    let default: Value = app.get_json("/connections").await;
    assert_eq!(default["items"].as_array().unwrap().len(), 7);
    assert_eq!(default["next_cursor"], Value::Null);

    for query in [
        "region=na",
        "environment=sandbox",
        "merchant_token=A1OTHERSELLER9",
        "region=na&environment=sandbox&status=pending",
    ] {
        let page: Value = app.get_json(&format!("/connections?{query}")).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 3, "{query}");
    }
    let active: Value = app.get_json("/connections?status=active").await;
    assert_eq!(active["items"], json!([]));
}

async fn patch_changes_fields_and_keeps_the_rest(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_connection(&connection_body(1)).await;
    let path = format!("/connections/{}", created["id"].as_str().unwrap());

    let response = app
        .patch(
            &path,
            ADMIN_KEY,
            &json!({"name": "Renamed", "account_type": "vendor", "client_secret_expires_at": "2027-01-02T03:04:05Z"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["name"], "Renamed");
    assert_eq!(patched["account_type"], "vendor");
    assert_eq!(patched["client_secret_expires_at_estimated"], false);
    assert_eq!(patched["region"], created["region"]);
    assert_eq!(patched["client_secret_hint"], created["client_secret_hint"]);
    assert!(timestamp(&patched["updated_at"]) > timestamp(&created["updated_at"]));
    assert_eq!(patched["created_at"], created["created_at"]);

    // null clears what may be cleared, and returns the expiry to the estimate.
    let cleared: Value = app
        .patch(
            &path,
            ADMIN_KEY,
            &json!({"name": null, "client_secret_expires_at": null}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["name"], Value::Null);
    assert_eq!(cleared["client_secret_expires_at_estimated"], true);
    assert_eq!(
        cleared["client_secret_expires_at"],
        created["client_secret_expires_at"]
    );

    let read: Value = app.get_json(&path).await;
    assert_eq!(read, cleared);

    // A PATCH that changes nothing writes nothing, not even updated_at.
    for nothing in [json!({}), json!({"name": null, "region": "eu"})] {
        let same: Value = app
            .patch(&path, ADMIN_KEY, &nothing)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(same, cleared, "{nothing}");
    }
}

async fn new_credentials_send_the_connection_back_to_pending(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_connection(&connection_body(1)).await;
    let id = ConnectionId::parse(created["id"].as_str().unwrap()).unwrap();
    let path = format!("/connections/{id}");
    let store = app.db.store().await;

    let mark_active = async || {
        let mut row = store.get_connection(id).await.unwrap();
        row.connection.status = ConnectionStatus::Active;
        row.version += 1;
        store.update_connection(&row, &[]).await.unwrap();
    };

    // Re-sending the same credentials, or changing non-credentials, keeps the status.
    mark_active().await;
    let same = app
        .patch(
            &path,
            ADMIN_KEY,
            &json!({"client_secret": client_secret(1), "refresh_token": refresh_token(1), "region": "eu", "name": "x"}),
        )
        .await;
    let same: Value = same.json().await.unwrap();
    assert_eq!(same["status"], "active");
    assert_eq!(
        same["client_secret_updated_at"],
        created["client_secret_updated_at"]
    );

    for change in [
        json!({"client_secret": client_secret(2)}),
        json!({"refresh_token": refresh_token(2)}),
        json!({"client_id": "amzn1.application-oa2-client.ffffffffffffffffffffffffffffffff"}),
        json!({"region": "fe"}),
        json!({"environment": "sandbox"}),
    ] {
        mark_active().await;
        let patched: Value = app
            .patch(&path, ADMIN_KEY, &change)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(patched["status"], "pending", "after {change}");
    }
    let read: Value = app.get_json(&path).await;
    let secret = client_secret(2);
    assert_eq!(read["client_secret_hint"], secret[secret.len() - 4..]);
    assert!(
        timestamp(&read["client_secret_updated_at"])
            > timestamp(&created["client_secret_updated_at"])
    );
}

async fn delete_removes_the_connection(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_connection(&connection_body(1)).await;
    let path = format!("/connections/{}", created["id"].as_str().unwrap());
    let response = app.delete(&path, ADMIN_KEY).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    not_found(app.get(&path, ADMIN_KEY).await).await;
    not_found(app.delete(&path, ADMIN_KEY).await).await;
    not_found(app.patch(&path, ADMIN_KEY, &json!({"name": "x"})).await).await;
    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"], json!([]));
}

async fn unknown_and_malformed_ids_are_404(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in [
        format!("/connections/{}", uuid::Uuid::now_v7()),
        "/connections/not-a-uuid".to_owned(),
        "/connections/%FF".to_owned(),
    ] {
        not_found(app.get(&path, ADMIN_KEY).await).await;
        not_found(app.delete(&path, ADMIN_KEY).await).await;
    }
    not_found(app.get("/nowhere", ADMIN_KEY).await).await;
    problem(
        app.request(reqwest::Method::PUT, "/connections", ADMIN_KEY, None)
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

async fn idempotency_key_replays_the_first_result(backend: Backend) {
    let app = spawn_app(backend).await;
    let send = |key: &'static str, body: Value| {
        let request = app
            .client
            .post(app.url("/connections"))
            .bearer_auth(ADMIN_KEY)
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let first = send("order-1", connection_body(1)).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();

    let again = send("order-1", connection_body(1)).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["location"], first_location);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);

    problem(
        send("order-1", connection_body(2)).await,
        StatusCode::CONFLICT,
        "idempotency_key_reused",
    )
    .await;

    let other: Value = send("order-2", connection_body(1))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(other["id"], first["id"]);

    // Keys belong to the caller: another API key's "order-1" is its own.
    let writer = app.api_key(&["connections:write"]).await;
    let theirs = app
        .client
        .post(app.url("/connections"))
        .bearer_auth(&writer)
        .header("Idempotency-Key", "order-1")
        .json(&connection_body(1))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::CREATED);
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["id"], first["id"]);

    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
}

async fn concurrent_requests_with_one_idempotency_key_create_one_connection(backend: Backend) {
    let app = spawn_app(backend).await;
    let requests = (0..10).map(|_| {
        app.client
            .post(app.url("/connections"))
            .bearer_auth(ADMIN_KEY)
            .header("Idempotency-Key", "same-key")
            .json(&connection_body(1))
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut ids = Vec::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        ids.push(body["id"].clone());
    }
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "every request answered with the one connection"
    );
    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

/// Catches: records kept (or dropped) on the wrong side of their 24 hours.
async fn idempotency_records_expire_after_24_hours(backend: Backend) {
    let app = spawn_app(backend).await;
    let send = |body: Value| {
        let request = app
            .client
            .post(app.url("/connections"))
            .bearer_auth(ADMIN_KEY)
            .header("Idempotency-Key", "order-1")
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let first: Value = send(connection_body(1)).await.json().await.unwrap();
    let backdate = |by: Duration| {
        app.db.execute_at(
            "UPDATE idempotency_keys SET created_at = $1",
            timestamp(&first["created_at"]) - by,
        )
    };

    // Just inside 24 hours: still the first answer, and still refusing another body.
    backdate(Duration::hours(24) - Duration::minutes(1)).await;
    let replay: Value = send(connection_body(1)).await.json().await.unwrap();
    assert_eq!(replay["id"], first["id"]);
    problem(
        send(connection_body(2)).await,
        StatusCode::CONFLICT,
        "idempotency_key_reused",
    )
    .await;

    // Past 24 hours the key is free: the same request creates anew.
    backdate(Duration::hours(24) + Duration::seconds(1)).await;
    let response = send(connection_body(1)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let second: Value = response.json().await.unwrap();
    assert_ne!(second["id"], first["id"]);
    // ... and from then on it answers with the new connection.
    let replay: Value = send(connection_body(1)).await.json().await.unwrap();
    assert_eq!(replay["id"], second["id"]);
    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
}

/// Catches: an empty, overlong or non-text `Idempotency-Key` accepted (or an acceptable
/// one refused).
async fn idempotency_keys_are_validated_and_a_bad_one_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let send = |key: reqwest::header::HeaderValue| {
        let request = app
            .client
            .post(app.url("/connections"))
            .bearer_auth(ADMIN_KEY)
            .header("Idempotency-Key", key)
            .json(&connection_body(1));
        async move { request.send().await.unwrap() }
    };
    let bad = [
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    ];
    for key in bad {
        let body = problem(
            send(key.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "Idempotency-Key", "{key:?}");
        assert_eq!(body["errors"].as_array().unwrap().len(), 1);
    }
    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"], json!([]), "a refused request stored nothing");

    let longest = reqwest::header::HeaderValue::from_str(&"k".repeat(255)).unwrap();
    let first = send(longest.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again: Value = send(longest).await.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
}
