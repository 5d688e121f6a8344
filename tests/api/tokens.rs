//! Tokens: authorize and the token endpoint against a fake LWA, on both backends and
//! across replicas.

use std::time::{Duration, Instant};

use connection_registry::config::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::fake_amazon::{FakeLwa, LwaMode};
use crate::helpers::{
    ADMIN_KEY, Backend, TestApp, connection_body, invalid_fields, not_found, problem,
    refresh_token, spawn_tuned, spawn_with_lwa,
};

crate::single!(
    two_replicas_share_one_lwa_call,
    a_change_on_one_replica_reaches_the_others_at_once,
    cached_tokens_are_served_while_the_database_is_down,
    shutdown_lets_in_flight_requests_finish,
);

both_backends!(
    authorize_exchanges_the_refresh_token_and_caches_the_token,
    token_response_tells_the_worker_where_to_go,
    concurrent_first_requests_make_one_lwa_call,
    cached_tokens_are_served_from_memory_and_a_force_refresh_storm_makes_one_call,
    tokens_nobody_asks_for_are_not_refreshed,
    refused_credentials_set_the_status_and_stop_workers,
    transient_failures_keep_the_status_and_recover,
    unusable_lwa_answers_are_bad_gateway,
    new_credentials_and_delete_drop_the_cached_token,
    token_parameters_and_scopes_are_checked,
    an_unreachable_lwa_is_unavailable,
    a_token_shorter_than_min_ttl_is_replaced,
    a_token_in_use_is_kept_past_the_idle_time,
);

pub(crate) async fn connection(app: &TestApp, n: u32) -> String {
    let created = app.create_connection(&connection_body(n)).await;
    created["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn token(app: &TestApp, id: &str, query: &str) -> reqwest::Response {
    app.get(&format!("/connections/{id}/token{query}"), ADMIN_KEY)
        .await
}

/// A token request as admin, sent in the background (to land while something else
/// happens).
pub(crate) fn token_in_background(
    app: &TestApp,
    id: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    tokio::spawn(
        app.client
            .get(app.url(&format!("/connections/{id}/token")))
            .bearer_auth(ADMIN_KEY)
            .send(),
    )
}

pub(crate) async fn token_ok(app: &TestApp, id: &str, query: &str) -> (Value, String) {
    let response = token(app, id, query).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cache = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    (response.json().await.unwrap(), cache)
}

pub(crate) async fn read(app: &TestApp, id: &str) -> Value {
    app.get_json(&format!("/connections/{id}")).await
}

pub(crate) async fn patch_ok(app: &TestApp, id: &str, body: Value) -> Value {
    let response = app
        .patch(&format!("/connections/{id}"), ADMIN_KEY, &body)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The distinct access tokens of many 200 responses.
pub(crate) async fn distinct_tokens(responses: Vec<reqwest::Response>) -> Vec<String> {
    let mut tokens = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
    }
    tokens.sort();
    tokens.dedup();
    tokens
}

pub(crate) async fn authorize(app: &TestApp, id: &str) -> reqwest::Response {
    app.post(
        &format!("/connections/{id}/authorize"),
        ADMIN_KEY,
        &json!({}),
    )
    .await
}

async fn authorize_exchanges_the_refresh_token_and_caches_the_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(backend, &fake, |config| {
        config.tokens.force_refresh_min_age = chrono::TimeDelta::zero();
    })
    .await;
    let id = connection(&app, 1).await;

    let before = chrono::Utc::now();
    let response = authorize(&app, &id).await;
    let after = chrono::Utc::now();
    assert_eq!(response.status(), StatusCode::OK);
    let authorized: Value = response.json().await.unwrap();
    assert_eq!(authorized["status"], "active");
    let authorized_at = at(&authorized["authorized_at"]);
    assert!(
        before <= authorized_at && authorized_at <= after,
        "{authorized_at} is when it was authorized"
    );
    assert_eq!(authorized["last_error"], Value::Null);
    assert_eq!(fake.calls_for(&refresh_token(1)), 1);

    let (body, cache) = token_ok(&app, &id, "").await;
    assert_eq!(
        cache, "connection-registry; hit",
        "authorize cached the token"
    );
    assert_eq!(
        fake.issued_for(body["access_token"].as_str().unwrap()),
        Some(refresh_token(1))
    );
    assert_eq!(fake.calls(), 1);

    // A refresh is not an authorization: `authorized_at` stays.
    let (refreshed, _) = token_ok(&app, &id, "?force_refresh=true").await;
    assert_ne!(refreshed["access_token"], body["access_token"]);
    assert_eq!(fake.calls(), 2);
    assert_eq!(
        read(&app, &id).await["authorized_at"],
        authorized["authorized_at"]
    );

    // Authorizing again always asks LWA, and says when.
    let reauthorized: Value = authorize(&app, &id).await.json().await.unwrap();
    assert_eq!(fake.calls(), 3);
    assert!(at(&reauthorized["authorized_at"]) > authorized_at);
    let (again, _) = token_ok(&app, &id, "").await;
    assert_ne!(again["access_token"], body["access_token"]);
}

fn at(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value
        .as_str()
        .expect("a timestamp")
        .parse()
        .expect("RFC 3339")
}

async fn token_response_tells_the_worker_where_to_go(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_mode(LwaMode::IssueWithStringExpiry);
    let app = spawn_with_lwa(backend, &fake).await;
    let id = connection(&app, 1).await;
    let asked = chrono::Utc::now();
    let response = token(&app, &id, "").await;
    let answered = chrono::Utc::now();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(
        response.headers()["cache-status"],
        "connection-registry; fwd=miss"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["access_token"].as_str().unwrap().starts_with("Atza|"));
    assert_eq!(body["token_type"], "bearer");
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    // expires_at is the same instant as expires_in, as a time.
    let from_now = at(&body["expires_at"]) - chrono::Utc::now();
    assert!(
        (from_now.num_seconds() - expires_in).abs() <= 2,
        "{from_now} vs {expires_in}"
    );
    assert_eq!(
        body["sp_api_endpoint"],
        "https://sellingpartnerapi-eu.amazon.com"
    );
    assert_eq!(body["aws_region"], "eu-west-1");
    assert_eq!(body["region"], "eu");
    assert_eq!(body["environment"], "production");
    assert_eq!(body["merchant_token"], "A1EXAMPLESELLER");
    assert_eq!(body["marketplace_ids"], json!([]));
    // The first token request of a pending connection authorized it.
    let connection = read(&app, &id).await;
    assert_eq!(connection["status"], "active");
    let authorized_at = at(&connection["authorized_at"]);
    assert!(
        asked <= authorized_at && authorized_at <= answered,
        "{authorized_at}"
    );

    let mut sandbox = connection_body(2);
    sandbox["region"] = json!("fe");
    sandbox["environment"] = json!("sandbox");
    let fe = app.create_connection(&sandbox).await;
    let (body, _) = token_ok(&app, fe["id"].as_str().unwrap(), "").await;
    assert_eq!(
        body["sp_api_endpoint"],
        "https://sandbox.sellingpartnerapi-fe.amazon.com"
    );
    assert_eq!(body["aws_region"], "us-west-2");

    // A percent-encoded id is left to the router (`http::token_first` takes only plain
    // ones), which decodes it: the same connection's token, from memory.
    let fe_id = fe["id"].as_str().unwrap();
    let encoded = format!("%{:02X}{}", fe_id.as_bytes()[0], &fe_id[1..]);
    let response = app
        .get(&format!("/connections/{encoded}/token"), ADMIN_KEY)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-status"],
        "connection-registry; hit"
    );
    let again: Value = response.json().await.unwrap();
    assert_eq!(again["access_token"], body["access_token"]);
    assert_eq!(again["sp_api_endpoint"], body["sp_api_endpoint"]);
}

async fn concurrent_first_requests_make_one_lwa_call(backend: Backend) {
    let fake = FakeLwa::start().await;
    // Slow enough that every request arrives while the first exchange is under way.
    fake.set_delay(Duration::from_millis(300));
    let app = spawn_with_lwa(backend, &fake).await;
    let id = connection(&app, 1).await;
    let requests = (0..200).map(|_| token(&app, &id, ""));
    let responses = futures_util::future::join_all(requests).await;
    let tokens = distinct_tokens(responses).await;
    assert_eq!(tokens.len(), 1, "all callers got the same token");
    assert_eq!(fake.calls(), 1, "exactly one LWA call");
}

async fn cached_tokens_are_served_from_memory_and_a_force_refresh_storm_makes_one_call(
    backend: Backend,
) {
    let fake = FakeLwa::start().await;
    // Long enough that a loaded machine stays well inside it, and the storm below too.
    let min_age = Duration::from_secs(2);
    let app = spawn_tuned(backend, &fake, |config| {
        config.tokens.force_refresh_min_age = chrono::TimeDelta::from_std(min_age).unwrap();
    })
    .await;
    let id = connection(&app, 1).await;
    let (first, _) = token_ok(&app, &id, "").await;
    let fetched = Instant::now();
    // Within the minimum age a forced refresh keeps the token it just got.
    let (kept, _) = token_ok(&app, &id, "?force_refresh=true").await;
    assert_eq!(kept["access_token"], first["access_token"]);
    for _ in 0..50 {
        let (body, cache) = token_ok(&app, &id, "?min_ttl=600").await;
        assert_eq!(body["access_token"], first["access_token"]);
        assert_eq!(cache, "connection-registry; hit");
    }
    assert_eq!(fake.calls(), 1);

    tokio::time::sleep_until(tokio::time::Instant::from_std(
        fetched + min_age + Duration::from_millis(100),
    ))
    .await;
    fake.set_delay(Duration::from_millis(200));
    let storm = (0..20).map(|_| token(&app, &id, "?force_refresh=true"));
    let tokens = distinct_tokens(futures_util::future::join_all(storm).await).await;
    assert_eq!(tokens.len(), 1);
    assert_ne!(tokens[0], first["access_token"].as_str().unwrap());
    assert_eq!(fake.calls(), 2, "twenty forced refreshes, one LWA call");
}

async fn tokens_nobody_asks_for_are_not_refreshed(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_expires_in(6);
    let app = spawn_tuned(backend, &fake, |config| {
        config.tokens.refresh_ahead = chrono::TimeDelta::seconds(4);
        config.tokens.refresh_tick = Duration::from_millis(200);
        config.tokens.idle_after = chrono::TimeDelta::milliseconds(500);
    })
    .await;
    let id = connection(&app, 1).await;
    token_ok(&app, &id, "?min_ttl=1").await;
    // Past the refresh window, with nobody asking: forgotten, not refreshed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fake.calls(), 1, "an idle connection costs no LWA calls");
    let (_, cache) = token_ok(&app, &id, "?min_ttl=1").await;
    assert_eq!(
        cache, "connection-registry; fwd=miss",
        "its token was dropped from memory"
    );
}

async fn refused_credentials_set_the_status_and_stop_workers(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    // What LWA said reaches the caller and the connection, scrubbed but not lost.
    let cases = [
        (
            LwaMode::InvalidGrant,
            "invalid_grant",
            "refresh_token_invalid",
            "LWA rejected the refresh token (invalid_grant): The request has an invalid \
             grant parameter : refresh_token",
        ),
        (
            LwaMode::InvalidClient,
            "invalid_client",
            "client_credentials_invalid",
            "LWA rejected the client credentials (invalid_client): Client authentication \
             failed",
        ),
        (
            LwaMode::UnauthorizedClient,
            "invalid_client",
            "client_credentials_invalid",
            "LWA rejected the client credentials (unauthorized_client): Not authorized for \
             requested operation",
        ),
    ];
    for (n, (mode, code, status, detail)) in (1..).zip(cases) {
        fake.set_mode(mode);
        let id = connection(&app, n).await;
        let before = chrono::Utc::now();
        let body = problem(
            authorize(&app, &id).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
        )
        .await;
        let after = chrono::Utc::now();
        assert_eq!(body["detail"], detail);
        let connection = read(&app, &id).await;
        assert_eq!(connection["status"], status);
        assert_eq!(connection["last_error"]["code"], code);
        assert_eq!(connection["last_error"]["message"], detail);
        let failed_at = at(&connection["last_error"]["at"]);
        assert!(before <= failed_at && failed_at <= after, "{failed_at}");
        assert_eq!(connection["updated_at"], connection["last_error"]["at"]);

        let calls = fake.calls();
        let body = problem(
            token(&app, &id, "").await,
            StatusCode::CONFLICT,
            "connection_not_authorized",
        )
        .await;
        assert!(body["detail"].as_str().unwrap().contains(status));
        assert_eq!(
            fake.calls(),
            calls,
            "a refused connection is not retried by workers"
        );
    }

    // A worker discovering the refusal itself also gets 409.
    fake.set_mode(LwaMode::InvalidGrant);
    let id = connection(&app, 9).await;
    problem(
        token(&app, &id, "").await,
        StatusCode::CONFLICT,
        "connection_not_authorized",
    )
    .await;
    assert_eq!(read(&app, &id).await["status"], "refresh_token_invalid");

    // New credentials send it back to pending; then it works again.
    fake.set_mode(LwaMode::Issue);
    let patched: Value = app
        .patch(
            &format!("/connections/{id}"),
            ADMIN_KEY,
            &json!({"refresh_token": refresh_token(10)}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(patched["status"], "pending");
    let (body, _) = token_ok(&app, &id, "").await;
    assert_eq!(
        fake.issued_for(body["access_token"].as_str().unwrap()),
        Some(refresh_token(10))
    );
    let connection = read(&app, &id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["last_error"], Value::Null);
}

async fn transient_failures_keep_the_status_and_recover(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(backend, &fake, |config| {
        config.tokens.force_refresh_min_age = chrono::TimeDelta::milliseconds(500);
    })
    .await;
    let id = connection(&app, 1).await;
    let cases = [
        (
            LwaMode::ServerError,
            3,
            "LWA is unavailable: server_error: Internal server error",
        ),
        (
            LwaMode::Throttled {
                retry_after_secs: 1,
            },
            3,
            "LWA is unavailable: HTTP 429 Too Many Requests",
        ),
        (LwaMode::Hang, 3, "LWA is unavailable: timed out"),
    ];
    for (mode, attempts, message) in cases {
        fake.set_mode(mode);
        let before = fake.calls();
        let response = authorize(&app, &id).await;
        // LWA's own Retry-After when it sent one, else the service's 5 s.
        let expected = match mode {
            LwaMode::Throttled { retry_after_secs } => retry_after_secs.to_string(),
            _ => "5".to_owned(),
        };
        assert_eq!(
            response.headers()["retry-after"],
            expected.as_str(),
            "{mode:?}"
        );
        problem(response, StatusCode::SERVICE_UNAVAILABLE, "lwa_unavailable").await;
        assert_eq!(fake.calls() - before, attempts, "{mode:?}: bounded retries");
        let connection = read(&app, &id).await;
        assert_eq!(
            connection["status"], "pending",
            "{mode:?} never changes the status"
        );
        assert_eq!(connection["last_error"]["code"], "lwa_unavailable");
        assert_eq!(connection["last_error"]["message"], message);
        let response = token(&app, &id, "").await;
        assert!(response.headers().contains_key("retry-after"));
        problem(response, StatusCode::SERVICE_UNAVAILABLE, "lwa_unavailable").await;
    }
    // A Retry-After longer than the service waits inside a request is passed on.
    fake.set_mode(LwaMode::Throttled {
        retry_after_secs: 30,
    });
    let before = fake.calls();
    let response = token(&app, &id, "").await;
    assert_eq!(response.headers()["retry-after"], "30");
    assert_eq!(fake.calls() - before, 1);

    fake.set_mode(LwaMode::Issue);
    let (_, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    let connection = read(&app, &id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["last_error"], Value::Null);
    // A failure once a token is cached does not reach workers.
    fake.set_mode(LwaMode::ServerError);
    let (_, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, "connection-registry; hit");

    // Even a worker asking for more life than the cached token has gets it while LWA
    // fails: it is still valid, which beats a 503. Not so for a forced refresh.
    fake.set_mode(LwaMode::Issue);
    fake.set_expires_in(120);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (fresh, cache) = token_ok(&app, &id, "?force_refresh=true").await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    fake.set_mode(LwaMode::ServerError);
    let (stale, cache) = token_ok(&app, &id, "?min_ttl=600").await;
    assert_eq!(cache, "connection-registry; hit; detail=stale");
    assert_eq!(stale["access_token"], fresh["access_token"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    problem(
        token(&app, &id, "?force_refresh=true").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "lwa_unavailable",
    )
    .await;
}

async fn unusable_lwa_answers_are_bad_gateway(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_mode(LwaMode::Garbage);
    let app = spawn_with_lwa(backend, &fake).await;
    let id = connection(&app, 1).await;
    problem(
        authorize(&app, &id).await,
        StatusCode::BAD_GATEWAY,
        "lwa_protocol_error",
    )
    .await;
    assert_eq!(fake.calls(), 1, "nonsense is not retried");
    problem(
        token(&app, &id, "").await,
        StatusCode::BAD_GATEWAY,
        "lwa_protocol_error",
    )
    .await;
    let connection = read(&app, &id).await;
    assert_eq!(connection["status"], "pending");
    assert_eq!(connection["last_error"]["code"], "lwa_protocol_error");
}

async fn new_credentials_and_delete_drop_the_cached_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let id = connection(&app, 1).await;
    token_ok(&app, &id, "").await;
    patch_ok(&app, &id, json!({"refresh_token": refresh_token(2)})).await;
    let (body, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    assert_eq!(
        fake.issued_for(body["access_token"].as_str().unwrap()),
        Some(refresh_token(2))
    );

    let deleted = app.delete(&format!("/connections/{id}"), ADMIN_KEY).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    not_found(token(&app, &id, "").await).await;
    not_found(authorize(&app, &id).await).await;
}

async fn token_parameters_and_scopes_are_checked(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let id = connection(&app, 1).await;
    let body = problem(
        token(&app, &id, "?min_ttl=3001&force_refresh=maybe&extra=1").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(invalid_fields(&body), ["extra", "force_refresh", "min_ttl"]);
    assert_eq!(fake.calls(), 0);
    let (body, _) = token_ok(&app, &id, "?min_ttl=3000&force_refresh=false").await;
    assert!(body["expires_in"].as_i64().unwrap() >= 3000);

    let worker = app.api_key(&["tokens:read"]).await;
    let reader = app.api_key(&["connections:read"]).await;
    let writer = app.api_key(&["connections:write"]).await;
    let path = format!("/connections/{id}/token");
    assert_eq!(app.get(&path, &worker).await.status(), StatusCode::OK);
    problem(
        app.get(&path, &reader).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    problem(
        app.get(&path, &writer).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let authorize_path = format!("/connections/{id}/authorize");
    problem(
        app.post(&authorize_path, &worker, &json!({})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(
        app.post(&authorize_path, &writer, &json!({}))
            .await
            .status(),
        StatusCode::OK
    );
    not_found(
        app.get(
            &format!("/connections/{}/token", uuid::Uuid::now_v7()),
            &worker,
        )
        .await,
    )
    .await;
    assert!(crate::logs::captured_len() > 0, "the log capture works");
}

/// Tunes nothing; named for the replica tests below.
fn as_is(_: &mut Config) {}

async fn two_replicas_share_one_lwa_call() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(300));
    let a = spawn_with_lwa(Backend::Postgres, &fake).await;
    let b = a.replica_tuned(as_is).await;
    let id = connection(&a, 1).await;
    let requests = (0..200).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        token(app, &id, "")
    });
    let tokens = distinct_tokens(futures_util::future::join_all(requests).await).await;
    assert_eq!(tokens.len(), 1, "both replicas hand out the one token");
    assert_eq!(fake.calls(), 1, "two replicas, one LWA call");
}

async fn a_change_on_one_replica_reaches_the_others_at_once() {
    let fake = FakeLwa::start().await;
    let a = spawn_with_lwa(Backend::Postgres, &fake).await;
    let b = a.replica_tuned(as_is).await;
    let id = connection(&a, 1).await;
    let (first, _) = token_ok(&b, &id, "").await;
    assert_eq!(
        fake.issued_for(first["access_token"].as_str().unwrap()),
        Some(refresh_token(1))
    );

    patch_ok(&a, &id, json!({"refresh_token": refresh_token(2)})).await;
    // The notification is sent with the commit A answered after: B hears of it within
    // moments (nothing else would make B drop its token for an hour).
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let (body, _) = token_ok(&b, &id, "").await;
        if fake.issued_for(body["access_token"].as_str().unwrap()) == Some(refresh_token(2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica B still hands out the old token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let deleted = a.delete(&format!("/connections/{id}"), ADMIN_KEY).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_millis(500);
    while token(&b, &id, "").await.status() != StatusCode::NOT_FOUND {
        assert!(
            Instant::now() < deadline,
            "replica B still serves a deleted connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn cached_tokens_are_served_while_the_database_is_down() {
    let fake = FakeLwa::start().await;
    let db = crate::helpers::TestDb::new(Backend::Postgres).await;
    let proxy = crate::proxy::TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let mut settings = crate::helpers::settings(&db, Some(crate::helpers::MASTER_KEYS));
    settings.database_url = Some(db.url_via(proxy.addr));
    settings.lwa_token_url = fake.token_url.clone();
    let app = TestApp::start_tuned(db, settings, as_is)
        .await
        .expect("starts");
    let worker = app.api_key(&["tokens:read"]).await;
    let id = connection(&app, 1).await;
    let cached_id = id.clone();
    let path = format!("/connections/{cached_id}/token");
    assert_eq!(app.get(&path, &worker).await.status(), StatusCode::OK);
    let other = connection(&app, 2).await;

    proxy.cut();
    for _ in 0..20 {
        let response = app.get(&path, &worker).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "cached token served without the database"
        );
    }
    // What needs the database says so, and asks to come back later.
    let response = token(&app, &other, "").await;
    let retry_after = response.headers().contains_key("retry-after");
    problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    assert!(retry_after);
    problem(
        app.post("/connections", ADMIN_KEY, &connection_body(3))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    problem(
        app.client.get(app.url("/readyz")).send().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = app
            .post("/connections", ADMIN_KEY, &connection_body(4))
            .await;
        if response.status() == StatusCode::CREATED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not recover: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(token(&app, &other, "").await.status(), StatusCode::OK);
    assert_eq!(app.get(&path, &worker).await.status(), StatusCode::OK);
}

async fn shutdown_lets_in_flight_requests_finish() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(800));
    let app = spawn_with_lwa(Backend::Sqlite, &fake).await;
    let id = connection(&app, 1).await;
    let in_flight = tokio::spawn(
        app.client
            .get(app.url(&format!("/connections/{id}/token")))
            .bearer_auth(ADMIN_KEY)
            .send(),
    );
    // Let the request reach the server and wait on LWA, then stop the server.
    fake.wait_for_calls(1).await;
    let url = app.url("/healthz");
    let client = app.client.clone();
    app.stop().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        client.get(url).send().await.is_err(),
        "no new requests after shutdown"
    );
}

/// Catches: a transport failure described as something else (the walkthrough's answer).
async fn an_unreachable_lwa_is_unavailable(backend: Backend) {
    // The suite's default LWA URL is a closed port.
    let app = crate::helpers::spawn_app(backend).await;
    let id = connection(&app, 1).await;
    let response = authorize(&app, &id).await;
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE, "lwa_unavailable").await;
    assert_eq!(body["detail"], "LWA is unavailable: could not connect");
    let connection = read(&app, &id).await;
    assert_eq!(connection["status"], "pending");
    assert_eq!(
        connection["last_error"]["message"],
        "LWA is unavailable: could not connect"
    );
}

/// Catches: a stored or cached token accepted although it has less than `min_ttl` left.
async fn a_token_shorter_than_min_ttl_is_replaced(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let id = connection(&app, 1).await;
    fake.set_expires_in(120);
    let (short, _) = token_ok(&app, &id, "").await;
    fake.set_expires_in(3600);
    let (long, cache) = token_ok(&app, &id, "?min_ttl=600").await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    assert_ne!(long["access_token"], short["access_token"]);
    assert!(long["expires_in"].as_i64().unwrap() >= 600);
    assert_eq!(fake.calls(), 2);
    // The replacement is stored too: a replica that asks the same reads it.
    if backend == Backend::Postgres {
        let replica = app.replica().await;
        let (read_back, cache) = token_ok(&replica, &id, "?min_ttl=600").await;
        assert_eq!(cache, "connection-registry; fwd=miss");
        assert_eq!(read_back["access_token"], long["access_token"]);
        assert_eq!(fake.calls(), 2);
    }
}

/// Catches: a request not marking its token as used (a token in constant use would be
/// dropped as idle, and workers would wait on fetches).
async fn a_token_in_use_is_kept_past_the_idle_time(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(backend, &fake, |config| {
        // Generous against a loaded machine: a request every 100 ms must never leave a
        // one-second gap.
        config.tokens.idle_after = chrono::TimeDelta::seconds(1);
        config.tokens.refresh_tick = Duration::from_millis(100);
    })
    .await;
    let id = connection(&app, 1).await;
    token_ok(&app, &id, "").await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let (_, cache) = token_ok(&app, &id, "").await;
        assert_eq!(cache, "connection-registry; hit", "kept while in use");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Left alone past the idle time, it is dropped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    assert_eq!(fake.calls(), 1, "read back from the database, not LWA");
}
