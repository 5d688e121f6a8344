//! What workers get when Amazon or the database fails: a refusal stops every replica at
//! once even when a token was cached, a still-valid token is served stale (and only then),
//! and the slow paths answer 503 with their own code.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::Value;

use crate::fake_amazon::{FakeLwa, LwaMode};
use crate::helpers::{
    Backend, TestApp, TestDb, patient_lwa, problem, settings, spawn_behind_proxy, spawn_tuned,
};
use crate::tokens::{authorize, connection, patch_ok, read, token, token_in_background, token_ok};
use crate::{both_backends, single};

both_backends!(
    a_refusal_drops_the_cached_token,
    a_token_inside_min_ttl_is_served_stale_while_lwa_fails_but_never_expired,
    a_request_over_the_time_limit_is_answered_503,
    a_token_from_before_a_credentials_change_is_never_served_stale,
);
single!(
    a_failed_refresh_does_not_empty_the_cache_through_the_version_check,
    a_refusal_on_one_replica_stops_the_others_at_once,
    a_token_inside_min_ttl_is_served_stale_while_the_database_is_down,
    a_slow_exchange_on_another_replica_is_token_fetch_in_progress,
);

const STALE: &str = "connection-registry; hit; detail=stale";

fn no_force_refresh_age(config: &mut connection_registry::config::Config) {
    config.tokens.force_refresh_min_age = chrono::TimeDelta::zero();
    // The refresher stays out of the way: these tests decide when LWA is asked.
    config.tokens.refresh_tick = Duration::from_secs(3600);
}

async fn not_authorized(response: reqwest::Response, status: &str) {
    let body = problem(response, StatusCode::CONFLICT, "connection_not_authorized").await;
    assert!(body["detail"].as_str().unwrap().contains(status), "{body}");
}

/// Catches: the local cache kept after LWA refuses the credentials (workers would go on
/// getting the cached token of a revoked authorization).
async fn a_refusal_drops_the_cached_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(backend, &fake, no_force_refresh_age).await;
    for (n, mode, status) in [
        (1, LwaMode::InvalidGrant, "refresh_token_invalid"),
        (2, LwaMode::InvalidClient, "client_credentials_invalid"),
    ] {
        fake.set_mode(LwaMode::Issue);
        let id = connection(&app, n).await;
        token_ok(&app, &id, "").await;
        let (_, cache) = token_ok(&app, &id, "").await;
        assert_eq!(cache, "connection-registry; hit");

        fake.set_mode(mode);
        not_authorized(token(&app, &id, "?force_refresh=true").await, status).await;
        let calls = fake.calls();
        for query in ["", "?min_ttl=0"] {
            not_authorized(token(&app, &id, query).await, status).await;
        }
        assert_eq!(fake.calls(), calls, "workers do not retry a refusal");
        assert_eq!(read(&app, &id).await["status"], status);
    }
}

/// Catches: no change announced to the other replicas after a refusal (they would serve
/// their cached token for up to an hour).
async fn a_refusal_on_one_replica_stops_the_others_at_once() {
    let fake = FakeLwa::start().await;
    let a = spawn_tuned(Backend::Postgres, &fake, no_force_refresh_age).await;
    let b = a.replica_tuned(no_force_refresh_age).await;
    let id = connection(&a, 1).await;
    let (from_a, _) = token_ok(&a, &id, "").await;
    let (from_b, cache) = token_ok(&b, &id, "").await;
    assert_eq!(cache, "connection-registry; fwd=miss");
    assert_eq!(
        from_b["access_token"], from_a["access_token"],
        "B read A's token"
    );
    for app in [&a, &b] {
        let (_, cache) = token_ok(app, &id, "").await;
        assert_eq!(cache, "connection-registry; hit");
    }

    fake.set_mode(LwaMode::InvalidGrant);
    not_authorized(
        token(&a, &id, "?force_refresh=true").await,
        "refresh_token_invalid",
    )
    .await;
    // The notification travels with the commit that A answered after: B knows within
    // moments, not at its next refresh.
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let response = token(&b, &id, "").await;
        if response.status() == StatusCode::CONFLICT {
            not_authorized(response, "refresh_token_invalid").await;
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            Instant::now() < deadline,
            "replica B still serves its cached token after A's refusal"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    not_authorized(token(&a, &id, "").await, "refresh_token_invalid").await;
    assert_eq!(fake.calls(), 2, "B never called LWA");
}

/// Asserts a stale answer: 200, marked stale, the cached token with its real life left.
async fn assert_stale(response: reqwest::Response, cached: &Value, max_life: i64) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-status"], STALE);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["access_token"], cached["access_token"]);
    let expires_in = body["expires_in"].as_i64().unwrap();
    assert!((1..=max_life).contains(&expires_in), "{expires_in}");
    assert_eq!(body["expires_at"], cached["expires_at"]);
}

/// Two cached tokens: one with 120 s left (and its token response), one that expires
/// in two seconds (the least a token is handed out with is one whole second).
async fn lasting_and_expiring_tokens(app: &TestApp, fake: &FakeLwa) -> (String, Value, String) {
    fake.set_expires_in(120);
    let lasting = connection(app, 1).await;
    let (cached, _) = token_ok(app, &lasting, "").await;
    fake.set_expires_in(2);
    let expiring = connection(app, 2).await;
    token_ok(app, &expiring, "?min_ttl=0").await;
    (lasting, cached, expiring)
}

/// Catches: the expiry guard of the stale fallback removed (an expired token would be
/// served with `expires_in: 0`), and a forced refresh given a stale token.
async fn a_token_inside_min_ttl_is_served_stale_while_lwa_fails_but_never_expired(
    backend: Backend,
) {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(backend, &fake, no_force_refresh_age).await;
    let (lasting, cached, expiring) = lasting_and_expiring_tokens(&app, &fake).await;

    fake.set_mode(LwaMode::ServerError);
    assert_stale(token(&app, &lasting, "?min_ttl=600").await, &cached, 120).await;
    let forced = token(&app, &lasting, "?force_refresh=true").await;
    assert!(forced.headers().contains_key("retry-after"));
    problem(forced, StatusCode::SERVICE_UNAVAILABLE, "lwa_unavailable").await;

    // Past its expiry the token is never served, whatever is asked.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for query in ["?min_ttl=0", ""] {
        problem(
            token(&app, &expiring, query).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "lwa_unavailable",
        )
        .await;
    }
    // A token that still meets the need is served from memory, not as stale.
    let (_, cache) = token_ok(&app, &lasting, "?min_ttl=60").await;
    assert_eq!(cache, "connection-registry; hit");
}

/// Catches: the database-error branch of the stale fallback removed (a token with less
/// than `min_ttl` left would be a 503 while the database is down).
async fn a_token_inside_min_ttl_is_served_stale_while_the_database_is_down() {
    let fake = FakeLwa::start().await;
    let (app, proxy) = spawn_behind_proxy(&fake, no_force_refresh_age).await;
    let worker = app.api_key(&["tokens:read"]).await;
    let (lasting, cached, expiring) = lasting_and_expiring_tokens(&app, &fake).await;
    let get = |id: &str, query: &str| {
        let path = format!("/connections/{id}/token{query}");
        let worker = worker.clone();
        let app = &app;
        async move { app.get(&path, &worker).await }
    };

    proxy.cut();
    assert_stale(get(&lasting, "?min_ttl=600").await, &cached, 120).await;
    let forced = get(&lasting, "?force_refresh=true").await;
    assert!(forced.headers().contains_key("retry-after"));
    problem(
        forced,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    problem(
        get(&expiring, "?min_ttl=0").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    assert_eq!(fake.calls(), 2, "nothing reached LWA without the database");
}

/// Catches: a lock wait that ends in anything but 503 `token_fetch_in_progress`.
async fn a_slow_exchange_on_another_replica_is_token_fetch_in_progress() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(2500));
    let a = spawn_tuned(Backend::Postgres, &fake, patient_lwa).await;
    let b = a
        .replica_tuned(|config| {
            patient_lwa(config);
            config.tokens.lease_wait = Duration::from_millis(300);
        })
        .await;
    let id = connection(&a, 1).await;
    let on_a = token_in_background(&a, &id);
    fake.wait_for_calls(1).await;
    let started = Instant::now();
    let response = token(&b, &id, "").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "B waited only its lock wait"
    );
    assert_eq!(response.headers()["retry-after"], "5");
    let body = problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "token_fetch_in_progress",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("another replica"));

    let from_a: Value = on_a.await.unwrap().unwrap().json().await.unwrap();
    let (from_b, _) = token_ok(&b, &id, "").await;
    assert_eq!(from_b["access_token"], from_a["access_token"]);
    assert_eq!(fake.calls(), 1, "B never called LWA itself");
}

/// Catches: the request time limit not applied (or not configurable).
async fn a_request_over_the_time_limit_is_answered_503(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_mode(LwaMode::Hang);
    let db = TestDb::new(backend).await;
    let mut settings = settings(&db, Some(crate::helpers::MASTER_KEYS));
    settings.lwa_token_url = fake.token_url.clone();
    settings.request_timeout = "1".into();
    let app = TestApp::start_with(db, settings).await.unwrap();
    let id = connection(&app, 1).await;
    let before: DateTime<Utc> = Utc::now();
    let response = authorize(&app, &id).await;
    let took = Utc::now() - before;
    assert!(
        took >= chrono::TimeDelta::milliseconds(950) && took < chrono::TimeDelta::seconds(3),
        "{took}"
    );
    assert_eq!(response.headers()["retry-after"], "5");
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE, "request_timeout").await;
    assert_eq!(body["detail"], "the request took too long; retry later");
    // Other requests are unaffected.
    assert_eq!(read(&app, &id).await["status"], "pending");
}

/// Guards the stale fallback in `TokenService::get` reading the cache after the failed
/// fetch: it served the grant read before the fetch, so when the credentials changed
/// during the fetch and the fetch then failed, the worker got a token minted under the
/// old credentials.
async fn a_token_from_before_a_credentials_change_is_never_served_stale(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_expires_in(120);
    let app = spawn_tuned(backend, &fake, |_| {}).await;
    let id = connection(&app, 1).await;
    let (old, _) = token_ok(&app, &id, "").await;

    // A fetch for more life than the cached token has, slow at LWA...
    fake.set_delay(Duration::from_millis(500));
    let in_flight = tokio::spawn(
        app.client
            .get(app.url(&format!("/connections/{id}/token?min_ttl=200")))
            .bearer_auth(crate::helpers::ADMIN_KEY)
            .send(),
    );
    fake.wait_for_calls(2).await;
    // ...during which the credentials change, and then LWA fails.
    fake.set_mode(LwaMode::ServerError);
    patch_ok(
        &app,
        &id,
        serde_json::json!({"client_secret": crate::helpers::client_secret(2)}),
    )
    .await;

    let response = in_flight.await.unwrap().unwrap();
    assert_ne!(
        response
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap()),
        Some(STALE)
    );
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE, "lwa_unavailable").await;
    assert!(
        !body
            .to_string()
            .contains(old["access_token"].as_str().unwrap())
    );
}

/// Guards what the version check compares (`Grant::reflects`): it compared row versions,
/// and a failed refresh bumps the version to note `last_error`, so during an LWA outage
/// every replica dropped the cached tokens it was supposed to keep serving.
async fn a_failed_refresh_does_not_empty_the_cache_through_the_version_check() {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(Backend::Postgres, &fake, |config| {
        no_force_refresh_age(config);
        config.tokens.recheck_interval = Duration::from_millis(200);
    })
    .await;
    let (lasting, cached, _) = lasting_and_expiring_tokens(&app, &fake).await;
    fake.set_mode(LwaMode::ServerError);
    // A fetch that fails and notes it in the row (a new version).
    assert_stale(token(&app, &lasting, "?min_ttl=600").await, &cached, 120).await;
    assert_eq!(
        read(&app, &lasting).await["last_error"]["code"],
        "lwa_unavailable"
    );
    // Several checks later, the cached token is still there to serve.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_stale(token(&app, &lasting, "?min_ttl=600").await, &cached, 120).await;
}
