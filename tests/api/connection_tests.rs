//! `POST /connections/{id}/test`: one SP-API call with the connection's token, over HTTP
//! to the fake Amazon, and what Amazon's answer does to the connection.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::fake_amazon::FakeLwa;
use crate::fake_spapi::SpApiMode;
use crate::helpers::{ADMIN_KEY, Backend, TestApp, connection_body, problem, spawn_with_amazon};
use crate::tokens::{connection, read, token, token_ok};

both_backends!(
    a_seller_test_reports_and_stores_the_marketplaces,
    a_vendor_test_makes_the_vendor_call,
    a_rejected_token_is_replaced_once,
    refusals_say_what_to_do_and_an_expired_secret_stops_workers,
    a_failing_or_throttling_amazon_leaves_the_status,
    many_tests_of_one_connection_at_once_all_report,
);

async fn test(app: &TestApp, id: &str) -> reqwest::Response {
    app.post(&format!("/connections/{id}/test"), ADMIN_KEY, &json!({}))
        .await
}

/// Guards the whole success path: the participations call made with the cached token
/// (no extra LWA call), names from Amazon, participating ids stored, `last_tested_at`,
/// `active`, and a warning for a marketplace of another region.
async fn a_seller_test_reports_and_stores_the_marketplaces(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_marketplaces(&[
        ("ATVPDKIKX0DER", "Amazon.com", "US", "USD", true),
        ("A2EUQ1WTGCTBG2", "Amazon.ca", "CA", "CAD", false),
        ("A1PA6795UKMFR9", "Amazon.de", "DE", "EUR", true),
    ]);
    let app = spawn_with_amazon(backend, &fake).await;
    let mut body = connection_body(1);
    body["region"] = json!("na");
    let id = app.create_connection(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (issued, _) = token_ok(&app, &id, "").await;
    assert_eq!(fake.calls(), 1);

    let before = chrono::Utc::now();
    let answer = test(&app, &id).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let report: Value = answer.json().await.unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(
        report["marketplaces"],
        json!([
            {"id": "ATVPDKIKX0DER", "name": "Amazon.com", "country_code": "US",
             "default_currency_code": "USD", "is_participating": true},
            {"id": "A2EUQ1WTGCTBG2", "name": "Amazon.ca", "country_code": "CA",
             "default_currency_code": "CAD", "is_participating": false},
            {"id": "A1PA6795UKMFR9", "name": "Amazon.de", "country_code": "DE",
             "default_currency_code": "EUR", "is_participating": true},
        ])
    );
    assert_eq!(
        report["warnings"],
        json!([
            "marketplace A1PA6795UKMFR9 (Amazon.de) belongs to region eu, not to this \
             connection's region na"
        ])
    );
    assert!(report["latency_ms"].as_u64().is_some());
    assert_eq!(fake.calls(), 1, "the cached token was used");
    assert_eq!(fake.spapi_calls(), 1);
    assert_eq!(
        fake.spapi_seen()[0].0,
        "/sellers/v1/marketplaceParticipations"
    );

    let stored = read(&app, &id).await;
    assert_eq!(
        stored["marketplace_ids"],
        json!(["ATVPDKIKX0DER", "A1PA6795UKMFR9"]),
        "the participating ones, as ids"
    );
    assert_eq!(stored["status"], "active");
    assert_eq!(stored["last_error"], Value::Null);
    let tested_at: chrono::DateTime<chrono::Utc> =
        stored["last_tested_at"].as_str().unwrap().parse().unwrap();
    assert!(tested_at >= before, "{tested_at}");
    // Workers see the marketplaces too, with the same token.
    let (worker, _) = token_ok(&app, &id, "").await;
    assert_eq!(worker["marketplace_ids"], stored["marketplace_ids"]);
    assert_eq!(worker["access_token"], issued["access_token"]);
}

/// Guards the vendor branch: a vendor has no participations call; the fake checks the
/// purchase-order query's window.
async fn a_vendor_test_makes_the_vendor_call(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let mut body = connection_body(1);
    body["account_type"] = json!("vendor");
    let id = app.create_connection(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = test(&app, &id).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let report: Value = answer.json().await.unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["marketplaces"], json!([]));
    let seen = fake.spapi_seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "/vendor/orders/v1/purchaseOrders");
    assert_eq!(seen[0].1["limit"], "1");
    assert_eq!(read(&app, &id).await["status"], "active");

    // A vendor role missing is said so, naming the vendor call.
    fake.set_spapi_mode(SpApiMode::RoleMissing);
    let refused = problem(
        test(&app, &id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "role_missing",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .starts_with("SP-API refused GET /vendor/orders/v1/purchaseOrders without details"),
        "{refused}"
    );
}

/// Guards the one retry with a fresh token (`TokenService::refetch`): an access token
/// SP-API calls expired is replaced once; when the fresh one is refused too, the answer
/// is 422 `access_token_rejected`.
async fn a_rejected_token_is_replaced_once(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = connection(&app, 1).await;
    let (first, _) = token_ok(&app, &id, "").await;
    fake.revoke_access_token(first["access_token"].as_str().unwrap());

    let answer = test(&app, &id).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(fake.calls(), 2, "one fresh token from LWA");
    assert_eq!(fake.spapi_calls(), 2, "the refused call and its one retry");
    let (now_served, _) = token_ok(&app, &id, "").await;
    assert_ne!(
        now_served["access_token"], first["access_token"],
        "the fresh one is cached"
    );

    // Every token refused: one fresh token, one retry, then 422.
    fake.set_spapi_mode(SpApiMode::ExpireEveryToken);
    let (lwa_calls, spapi_calls) = (fake.calls(), fake.spapi_calls());
    let refused = problem(
        test(&app, &id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "access_token_rejected",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("twice, the second time with a freshly issued access token"),
        "{refused}"
    );
    assert_eq!(fake.calls(), lwa_calls + 1);
    assert_eq!(fake.spapi_calls(), spapi_calls + 2);
    let stored = read(&app, &id).await;
    assert_eq!(stored["last_error"]["code"], "access_token_rejected");
    assert_eq!(
        stored["status"], "active",
        "a token problem is not a credentials problem"
    );
}

/// Guards each refusal's code, detail and effect: role missing and an expired secret are
/// 422s that say what to do; an expired secret sets `client_secret_expired`, after which
/// workers get 409.
async fn refusals_say_what_to_do_and_an_expired_secret_stops_workers(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = connection(&app, 1).await;
    token_ok(&app, &id, "").await;

    fake.set_spapi_mode(SpApiMode::RoleMissing);
    let refused = problem(
        test(&app, &id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "role_missing",
    )
    .await;
    assert_eq!(
        refused["detail"],
        "SP-API refused GET /sellers/v1/marketplaceParticipations without details: the app \
         most likely lacks the role this call needs (or the connection's region is wrong). \
         Give the app the role in Developer Central, then authorize it again in Seller Central"
    );
    let stored = read(&app, &id).await;
    assert_eq!(
        stored["status"], "active",
        "a missing role leaves the status"
    );
    assert_eq!(stored["last_error"]["code"], "role_missing");
    assert_eq!(stored["last_error"]["message"], refused["detail"]);
    assert_eq!(stored["last_tested_at"], Value::Null);

    fake.set_spapi_mode(SpApiMode::SecretExpired);
    let refused = problem(
        test(&app, &id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "client_secret_expired",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("Generate a new client secret in Developer Central"),
        "{refused}"
    );
    assert_eq!(read(&app, &id).await["status"], "client_secret_expired");
    let calls = fake.calls();
    let stopped = problem(
        token(&app, &id, "").await,
        StatusCode::CONFLICT,
        "connection_not_authorized",
    )
    .await;
    assert!(
        stopped["detail"]
            .as_str()
            .unwrap()
            .contains("client_secret_expired")
    );
    assert_eq!(
        fake.calls(),
        calls,
        "workers are stopped without asking LWA"
    );

    // New credentials start over.
    let patched = app
        .patch(
            &format!("/connections/{id}"),
            ADMIN_KEY,
            &json!({"client_secret": crate::helpers::client_secret(2)}),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    fake.set_spapi_mode(SpApiMode::Answer);
    assert_eq!(test(&app, &id).await.status(), StatusCode::OK);
    assert_eq!(read(&app, &id).await["status"], "active");
}

/// Guards the transient branch: throttling is 503 with Amazon's `Retry-After`, failing
/// is 503, neither moves the status; and what SP-API says back is scrubbed of the token.
async fn a_failing_or_throttling_amazon_leaves_the_status(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = connection(&app, 1).await;
    assert_eq!(test(&app, &id).await.status(), StatusCode::OK);

    fake.set_spapi_mode(SpApiMode::Throttled {
        retry_after_secs: 7,
    });
    let throttled = test(&app, &id).await;
    assert_eq!(throttled.headers()["retry-after"], "7");
    problem(
        throttled,
        StatusCode::SERVICE_UNAVAILABLE,
        "spapi_throttled",
    )
    .await;

    fake.set_spapi_mode(SpApiMode::Failing);
    let failing = test(&app, &id).await;
    assert_eq!(failing.headers()["retry-after"], "5");
    let failing = problem(
        failing,
        StatusCode::SERVICE_UNAVAILABLE,
        "spapi_unavailable",
    )
    .await;
    assert!(
        failing["detail"]
            .as_str()
            .unwrap()
            .contains("InternalFailure")
    );

    let stored = read(&app, &id).await;
    assert_eq!(stored["status"], "active");
    assert_eq!(stored["last_error"]["code"], "spapi_unavailable");

    fake.set_spapi_mode(SpApiMode::EchoToken);
    let (served, _) = token_ok(&app, &id, "").await;
    let token_text = served["access_token"].as_str().unwrap().to_owned();
    let echoed = test(&app, &id).await;
    assert_eq!(echoed.status(), StatusCode::BAD_GATEWAY);
    let echoed = echoed.text().await.unwrap();
    let stored = read(&app, &id).await.to_string();
    let tail = &token_text[token_text.len() - 24..];
    assert!(!echoed.contains(tail), "{echoed}");
    assert!(!stored.contains(tail), "{stored}");
    assert!(
        echoed.contains("spapi_invalid_input") && echoed.contains("[redacted]"),
        "{echoed}"
    );
}

/// Catches: a test's findings written with the bounded optimistic retry and a lost race
/// answered 409 `conflict`: many tests of one connection at once (a double-click, a
/// retrying frontend) each try to record, and the losers of every round used to fail
/// although their test had run (found by `amazon_faults.rs`).
async fn many_tests_of_one_connection_at_once_all_report(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = connection(&app, 1).await;
    token_ok(&app, &id, "").await;
    let tests = (0..24).map(|_| test(&app, &id));
    for answer in futures_util::future::join_all(tests).await {
        assert_eq!(answer.status(), StatusCode::OK);
        let report: Value = answer.json().await.unwrap();
        assert_eq!(report["ok"], true);
    }
    let stored = read(&app, &id).await;
    assert!(stored["last_tested_at"].is_string(), "{stored}");
    assert_eq!(stored["status"], "active");
}
