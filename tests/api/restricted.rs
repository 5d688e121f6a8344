//! `POST /connections/{id}/restricted-data-token`: checked at the edge, one SP-API call
//! for a burst of identical requests, a fresh token when the connection changes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::fake_amazon::FakeLwa;
use crate::helpers::{ADMIN_KEY, Backend, TestApp, invalid_fields, problem, spawn_with_amazon};
use crate::tokens::connection;

both_backends!(
    identical_requests_share_one_restricted_data_token,
    bad_resources_are_refused_at_the_edge_or_by_amazon,
    many_requests_refused_one_token_cost_one_fresh_token,
    a_request_arriving_as_a_flight_lands_takes_its_token,
);

fn address_of(order: &str, elements: &[&str]) -> Value {
    json!({"restricted_resources": [{
        "method": "GET",
        "path": format!("/orders/v0/orders/{order}/address"),
        "data_elements": elements,
    }]})
}

async fn rdt(app: &TestApp, id: &str, key: &str, body: &Value) -> reqwest::Response {
    app.post(
        &format!("/connections/{id}/restricted-data-token"),
        key,
        body,
    )
    .await
}

async fn rdt_ok(app: &TestApp, id: &str, key: &str, body: &Value) -> (Value, String) {
    let response = rdt(app, id, key, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let cache = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    (response.json().await.unwrap(), cache)
}

/// `n` identical requests at once; the distinct tokens they were answered with.
async fn burst(
    app: &TestApp,
    id: &str,
    key: &str,
    body: &Value,
    n: usize,
) -> std::collections::BTreeSet<String> {
    let asks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(
                app.client
                    .post(app.url(&format!("/connections/{id}/restricted-data-token")))
                    .bearer_auth(key)
                    .json(body)
                    .send(),
            )
        })
        .collect();
    let mut tokens = std::collections::BTreeSet::new();
    for ask in asks {
        let response = ask.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        tokens.insert(body["restricted_data_token"].as_str().unwrap().to_owned());
    }
    tokens
}

/// Guards the gap between the RDT cache and the single flight: a request that misses the
/// cache, then finds no flight because the one under way landed meanwhile, must take
/// the token that flight cached, not start another call to Amazon. Bursts of identical
/// requests, each burst a new order: one call per burst.
async fn a_request_arriving_as_a_flight_lands_takes_its_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = connection(&app, 1).await;
    let worker = app.api_key(&["tokens:read"]).await;
    const BURSTS: usize = 150;
    for round in 0..BURSTS {
        let body = address_of(&format!("903-{round}"), &[]);
        let tokens = burst(&app, &id, &worker, &body, 24).await;
        assert_eq!(
            tokens.len(),
            1,
            "burst {round}: one token for identical requests"
        );
        assert_eq!(
            fake.rdt_calls(),
            round + 1,
            "burst {round}: one call per burst"
        );
    }
}

/// Guards the RDT cache key (connection and request), its single flight, and its
/// invalidation when the connection changes.
async fn identical_requests_share_one_restricted_data_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = connection(&app, 1).await;
    let worker = app.api_key(&["tokens:read"]).await;

    let (first, cache) = rdt_ok(
        &app,
        &id,
        &worker,
        &address_of("902-1", &["shippingAddress", "buyerInfo"]),
    )
    .await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    assert!(
        first["restricted_data_token"]
            .as_str()
            .unwrap()
            .starts_with("Atz.sprdt|")
    );
    let expires_in = first["expires_in"].as_i64().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    assert_eq!(
        fake.last_rdt_request(),
        Some(json!({"restrictedResources": [{"method": "GET",
            "path": "/orders/v0/orders/902-1/address",
            "dataElements": ["buyerInfo", "shippingAddress"]}]})),
        "Amazon's shape, data elements in a fixed order"
    );

    // The same request (elements in another order) is the same token, from memory.
    let (again, cache) = rdt_ok(
        &app,
        &id,
        &worker,
        &address_of("902-1", &["buyerInfo", "shippingAddress"]),
    )
    .await;
    assert_eq!(cache, "connection-registry; hit");
    assert_eq!(
        again["restricted_data_token"],
        first["restricted_data_token"]
    );
    assert_eq!(fake.rdt_calls(), 1);

    // Another order is another token.
    let (other, _) = rdt_ok(&app, &id, &worker, &address_of("902-2", &["buyerInfo"])).await;
    assert_ne!(
        other["restricted_data_token"],
        first["restricted_data_token"]
    );
    assert_eq!(fake.rdt_calls(), 2);

    // A burst of identical new requests: one call.
    let tokens = burst(&app, &id, &worker, &address_of("902-3", &[]), 20).await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(fake.rdt_calls(), 3);

    // A change of the connection drops its RDTs.
    let renamed = app
        .patch(
            &format!("/connections/{id}"),
            ADMIN_KEY,
            &json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let (after, cache) = rdt_ok(
        &app,
        &id,
        &worker,
        &address_of("902-1", &["buyerInfo", "shippingAddress"]),
    )
    .await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    assert_ne!(
        after["restricted_data_token"],
        first["restricted_data_token"]
    );
    assert_eq!(fake.rdt_calls(), 4);
}

/// Guards the edge checks (nothing reaches Amazon) and the mapping of Amazon's refusal.
async fn bad_resources_are_refused_at_the_edge_or_by_amazon(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = connection(&app, 1).await;
    let resource = |method: &str, path: &str| json!({"method": method, "path": path});
    let too_many: Vec<Value> = (0..51)
        .map(|n| resource("GET", &format!("/orders/v0/orders/{n}")))
        .collect();
    let cases = [
        json!({"restricted_resources": []}),
        json!({"restricted_resources": too_many}),
        json!({"restricted_resources": [resource("HEAD", "/orders/v0/orders/1")]}),
        json!({"restricted_resources": [resource("GET", "orders/v0/orders/1")]}),
        json!({"restricted_resources": [resource("GET", "//evil.example/steal")]}),
        json!({"restricted_resources": [{"method": "GET", "path": "/o", "data_elements": ["email"]}]}),
        json!({"restricted_resources": [{"method": "GET", "path": "/o", "verb": "x"}]}),
        json!({"restricted_resources": "GET /orders"}),
        json!({}),
    ];
    for body in cases {
        let refused = problem(
            rdt(&app, &id, ADMIN_KEY, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(invalid_fields(&refused), ["restricted_resources"], "{body}");
    }
    let refused = problem(
        rdt(
            &app,
            &id,
            ADMIN_KEY,
            &json!({"restricted_resources": [resource("GET", "/o")], "target_application": "x"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(invalid_fields(&refused), ["target_application"]);
    assert_eq!(fake.rdt_calls(), 0, "nothing invalid reached Amazon");
    assert_eq!(fake.calls(), 0, "nor LWA");

    let refused = problem(
        rdt(
            &app,
            &id,
            ADMIN_KEY,
            &address_of("forbidden-1", &["buyerInfo"]),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "spapi_invalid_input",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("Application does not have access to one or more requested data elements"),
        "{refused}"
    );
    assert_eq!(fake.rdt_calls(), 1);
}

/// Guards `TokenService::refetch` sharing: each caller whose RDT call SP-API refused
/// (expired access token) started an LWA exchange of its own.
async fn many_requests_refused_one_token_cost_one_fresh_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = connection(&app, 1).await;
    let (first, _) = crate::tokens::token_ok(&app, &id, "").await;
    fake.revoke_access_token(first["access_token"].as_str().unwrap());
    let lwa_calls = fake.calls();
    let asks: Vec<_> = (0..10)
        .map(|n| {
            tokio::spawn(
                app.client
                    .post(app.url(&format!("/connections/{id}/restricted-data-token")))
                    .bearer_auth(ADMIN_KEY)
                    .json(&address_of(&format!("903-{n}"), &[]))
                    .send(),
            )
        })
        .collect();
    for ask in asks {
        assert_eq!(ask.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(fake.calls(), lwa_calls + 1, "one fresh token for all ten");
}
