//! The token cache's own rules, each tested where it decides: refresh ahead (and only
//! ahead), the cost of a refresher tick, invalidation while a fetch is under way, the
//! change listener's reconnect, and a refresh token that LWA rotates.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    Backend, MASTER_KEYS, TestApp, TestDb, patient_lwa, problem, refresh_token, settings,
    spawn_behind_proxy, spawn_tuned,
};
use crate::tokens::{connection, patch_ok, token, token_in_background, token_ok};
use crate::{both_backends, single};

both_backends!(
    a_token_inside_the_refresh_window_is_refreshed_once,
    a_patch_during_a_fetch_is_retried_from_the_new_credentials,
    a_refusal_of_credentials_replaced_meanwhile_is_not_the_answer,
    two_patches_during_a_fetch_are_a_concurrent_update,
    a_refresh_token_rotated_by_lwa_is_used_from_then_on,
    an_unrelated_write_during_a_fetch_keeps_its_token,
    a_token_under_a_second_from_expiry_is_not_handed_out,
);
single!(
    a_tick_reads_nothing_for_tokens_not_due,
    a_fetch_overtaken_by_a_change_does_not_cache_its_token,
    requests_after_a_change_do_not_join_the_fetch_begun_before_it,
    a_listener_reconnect_drops_every_cached_token,
    a_token_dropped_by_a_reconnect_carries_workers_through_the_next_outage,
    a_fetch_under_way_when_the_listener_reconnects_does_not_cache,
    a_forced_refresh_does_not_settle_for_a_fetch_begun_before_it,
    a_change_whose_notification_is_lost_is_seen_by_the_version_check,
    a_replica_whose_database_link_stalls_stops_serving_a_deleted_connection,
);

const CACHE_HIT: &str = "connection-registry; hit";
const CACHE_MISS: &str = "connection-registry; fwd=miss";

/// Another replica announcing that connection `id` changed (what every committed
/// connection write sends on Postgres).
async fn announce_change(db: &TestDb, id: &str) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_notify('connection_registry_changes', $1)")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Catches: the refresh-ahead comparison inverted (tokens inside the window are skipped).
async fn a_token_inside_the_refresh_window_is_refreshed_once(backend: Backend) {
    let fake = FakeLwa::start().await;
    // Realistic sizes: a 5-minute window, and a first token already inside it.
    fake.set_expires_in(200);
    let app = spawn_tuned(backend, &fake, |config| {
        config.tokens.refresh_ahead = chrono::TimeDelta::minutes(5);
        config.tokens.refresh_tick = Duration::from_millis(200);
    })
    .await;
    let id = connection(&app, 1).await;
    let (first, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, CACHE_MISS);
    assert!(first["expires_in"].as_i64().unwrap() <= 200);
    fake.set_expires_in(3600);

    // Refreshed in the background: the worker is served the new token without waiting.
    let deadline = Instant::now() + Duration::from_secs(3);
    let refreshed = loop {
        let (body, cache) = token_ok(&app, &id, "").await;
        assert_eq!(cache, CACHE_HIT, "the worker never waited on LWA");
        if body["access_token"] != first["access_token"] {
            break body["access_token"].clone();
        }
        assert!(Instant::now() < deadline, "not refreshed inside its window");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Now far from its window: no further call, however many ticks pass and however
    // often it is used.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (body, cache) = token_ok(&app, &id, "").await;
        assert_eq!(cache, CACHE_HIT);
        assert_eq!(body["access_token"], refreshed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fake.calls(), 2, "one refresh, ahead of expiry");
    let (body, _) = token_ok(&app, &id, "?min_ttl=3000").await;
    assert_eq!(body["access_token"], refreshed);
}

/// Catches: the refresh-ahead comparison inverted (every tick re-reads tokens not due),
/// and any per-token database read in a tick.
async fn a_tick_reads_nothing_for_tokens_not_due() {
    let fake = FakeLwa::start().await;
    let (app, proxy) = spawn_behind_proxy(&fake, |config| {
        config.tokens.refresh_tick = Duration::from_millis(50);
        config.tokens.refresh_spacing = Duration::ZERO;
        // Their queries are not what is measured here.
        config.tokens.recheck_interval = Duration::from_secs(3600);
        config.tokens.listener_heartbeat = Duration::from_secs(3600);
        config.tokens.handout_flush = Duration::from_secs(3600);
        config.webhooks.poll_interval = Duration::from_secs(3600);
        config.webhooks.expiry_check_interval = Duration::from_secs(3600);
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = connection(&app, n).await;
        token_ok(&app, &id, "").await;
        ids.push(id);
    }
    let before = proxy.bytes_sent();
    // 20 ticks over 20 cached tokens: 400 reads if a tick read each.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = proxy.bytes_sent() - before;
    // What may run meanwhile: the API key reload (every 2 s), one small query.
    assert!(
        sent < 1500,
        "{sent} bytes sent to the database during 20 ticks"
    );
    for id in &ids {
        let (_, cache) = token_ok(&app, id, "").await;
        assert_eq!(cache, CACHE_HIT);
    }
    assert_eq!(fake.calls(), 20, "nothing was refreshed");
}

/// Catches: no second attempt after a fetch's write loses to a PATCH (the caller would
/// get 503 `concurrent_update`), and the old credentials' token being kept.
async fn a_patch_during_a_fetch_is_retried_from_the_new_credentials(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(600));
    let app = spawn_tuned(backend, &fake, |_| {}).await;
    let id = connection(&app, 1).await;
    let in_flight = token_in_background(&app, &id);
    fake.wait_for_calls(1).await;
    patch_ok(&app, &id, json!({"refresh_token": refresh_token(2)})).await;

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        fake.issued_for(body["access_token"].as_str().unwrap()),
        Some(refresh_token(2)),
        "the request got a token of the new credentials"
    );
    assert_eq!(fake.calls_for(&refresh_token(1)), 1);
    assert_eq!(fake.calls_for(&refresh_token(2)), 1);
    for _ in 0..3 {
        let (body, _) = token_ok(&app, &id, "").await;
        assert_eq!(
            fake.issued_for(body["access_token"].as_str().unwrap()),
            Some(refresh_token(2)),
            "the old credentials' token is never served"
        );
    }
    assert_eq!(fake.calls(), 2);
}

/// Catches: a fetch whose write lost the race to a write that left the credentials alone
/// (a rename here; a connection test's findings in practice) throwing its token away and
/// asking LWA again (two calls), or failing with `concurrent_update`.
async fn an_unrelated_write_during_a_fetch_keeps_its_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(600));
    let app = spawn_tuned(backend, &fake, |_| {}).await;
    let id = connection(&app, 1).await;
    let in_flight = token_in_background(&app, &id);
    fake.wait_for_calls(1).await;
    patch_ok(&app, &id, json!({"name": "Renamed while fetching"})).await;

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let fetched: Value = response.json().await.unwrap();
    assert_eq!(fake.calls(), 1, "one LWA call for one fetch");
    // The token was stored with the rename kept: the next request finds both.
    let (again, _) = token_ok(&app, &id, "").await;
    assert_eq!(again["access_token"], fetched["access_token"]);
    let stored = crate::tokens::read(&app, &id).await;
    assert_eq!(stored["name"], "Renamed while fetching");
    assert_eq!(stored["status"], "active");
    assert_eq!(fake.calls(), 1);
}

/// Catches: a token with less than a second left handed out (`expires_in: 0`) to a
/// caller asking for `min_ttl=0`, instead of a fresh one.
async fn a_token_under_a_second_from_expiry_is_not_handed_out(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_expires_in(2);
    let app = spawn_tuned(backend, &fake, |_| {}).await;
    let id = connection(&app, 1).await;
    let (first, _) = token_ok(&app, &id, "?min_ttl=0").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (second, cache) = token_ok(&app, &id, "?min_ttl=0").await;
    assert_ne!(second["access_token"], first["access_token"], "{cache}");
    assert!(second["expires_in"].as_i64().unwrap() >= 1, "{second}");
    assert_eq!(fake.calls(), 2);
}

/// Catches: a lost race answered as anything but 503 `concurrent_update` with Retry-After.
async fn two_patches_during_a_fetch_are_a_concurrent_update(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(500));
    let app = spawn_tuned(backend, &fake, |_| {}).await;
    let id = connection(&app, 1).await;
    let in_flight = token_in_background(&app, &id);
    fake.wait_for_calls(1).await;
    // New credentials each time (a rename alone would not void the fetch).
    patch_ok(&app, &id, json!({"refresh_token": refresh_token(2)})).await;
    fake.wait_for_calls(2).await;
    patch_ok(&app, &id, json!({"refresh_token": refresh_token(3)})).await;

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.headers()["retry-after"], "1");
    let body = problem(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "concurrent_update",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("retry"));
    let (_, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, CACHE_MISS, "the next request fetches afresh");
    assert_eq!(fake.calls(), 3);
}

/// Catches: a listener reconnect emptying the outage fallback. The database comes back
/// just long enough for the listener to reconnect (dropping every cached token, as
/// notifications may have been missed), then goes again before the tokens are re-read:
/// without the dropped grants kept as a fallback for an unreadable database, every
/// worker got 503 `database_unavailable` (found by `database_faults.rs` under load).
async fn a_token_dropped_by_a_reconnect_carries_workers_through_the_next_outage() {
    let fake = FakeLwa::start().await;
    let (app, proxy) = spawn_behind_proxy(&fake, |_| {}).await;
    let a = connection(&app, 1).await;
    let (cached, _) = token_ok(&app, &a, "").await;

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reconnects = crate::logs::lines_containing("change notifications resumed").len();
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(8);
    while crate::logs::lines_containing("change notifications resumed").len() == reconnects {
        assert!(Instant::now() < deadline, "the listener did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();

    let response = token(&app, &a, "").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a worker stopped by a reconnect"
    );
    assert_eq!(
        response.headers()["cache-status"],
        "connection-registry; hit; detail=stale"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["access_token"], cached["access_token"]);
    // Refused to a forced refresh, as every stale token is.
    let forced = token(&app, &a, "?force_refresh=true").await;
    assert_eq!(forced.status(), StatusCode::SERVICE_UNAVAILABLE);
    proxy.restore();
    assert_eq!(fake.calls(), 1);
}

/// Catches: the cache stamp taken when a fetch ends instead of when it begins, and the
/// refresher pruning invalidations too recent to forget (either way a fetch overtaken by
/// a change would cache what it fetched).
async fn a_fetch_overtaken_by_a_change_does_not_cache_its_token() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(1000));
    let app = spawn_tuned(Backend::Postgres, &fake, |config| {
        patient_lwa(config);
        // Ticks prune old invalidations; one lands while the fetch is under way.
        config.tokens.refresh_tick = Duration::from_millis(50);
    })
    .await;
    let id = connection(&app, 1).await;
    let in_flight = token_in_background(&app, &id);
    fake.wait_for_calls(1).await;
    announce_change(&app.db, &id).await;
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let fetched: Value = response.json().await.unwrap();

    let (body, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, CACHE_MISS, "the overtaken fetch did not cache");
    assert_eq!(body["access_token"], fetched["access_token"], "read back");
    let (_, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, CACHE_HIT);
    assert_eq!(fake.calls(), 1);
}

/// Catches: `Flights::detach` not called on invalidation (a request after the change
/// would join, and share the fate of, the fetch begun before it).
async fn requests_after_a_change_do_not_join_the_fetch_begun_before_it() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(1500));
    let app = spawn_tuned(Backend::Postgres, &fake, patient_lwa).await;
    let id = connection(&app, 1).await;
    let request = || token_in_background(&app, &id);
    let before_change = request();
    fake.wait_for_calls(1).await;
    announce_change(&app.db, &id).await;
    // Long enough for the notification to arrive; far shorter than the LWA call.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_change = request();

    let first: Value = before_change.await.unwrap().unwrap().json().await.unwrap();
    let second = after_change.await.unwrap().unwrap();
    assert_eq!(second.headers()["cache-status"], CACHE_MISS);
    let second: Value = second.json().await.unwrap();
    // Its own fetch waited for the other's lock, then found the stored token.
    assert_eq!(second["access_token"], first["access_token"]);
    let (_, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, CACHE_HIT, "the fetch begun after the change cached");
    assert_eq!(fake.calls(), 1);
}

/// Catches: no cache-wide invalidation after the change listener reconnects (changes
/// announced while it was away would be missed).
async fn a_listener_reconnect_drops_every_cached_token() {
    let fake = FakeLwa::start().await;
    let (app, proxy) = spawn_behind_proxy(&fake, |_| {}).await;
    let a = connection(&app, 1).await;
    let b = connection(&app, 2).await;
    token_ok(&app, &a, "").await;
    token_ok(&app, &b, "").await;

    proxy.cut();
    for id in [&a, &b] {
        let (_, cache) = token_ok(&app, id, "").await;
        assert_eq!(
            cache, CACHE_HIT,
            "served from memory while the database is away"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
    // The listener retries every second; once back, it drops the whole cache.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let response = token(&app, &a, "").await;
        if response.status() == StatusCode::OK && response.headers()["cache-status"] == CACHE_MISS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache was not dropped after the listener reconnected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, cache) = token_ok(&app, &b, "").await;
    assert_eq!(cache, CACHE_MISS, "every connection's token was dropped");
    assert_eq!(fake.calls(), 2, "re-read from the database, not LWA");
}

/// Catches: a new refresh token from LWA not stored (the next exchange would send the
/// old one).
async fn a_refresh_token_rotated_by_lwa_is_used_from_then_on(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(backend, &fake, |config| {
        config.tokens.force_refresh_min_age = chrono::TimeDelta::zero();
    })
    .await;
    let id = connection(&app, 1).await;
    let rotated = "Atzr|IwEBIRotatedRefreshToken-0001-do-not-store";
    fake.rotate_refresh_token(rotated);
    let response = crate::tokens::authorize(&app, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.calls_for(&refresh_token(1)), 1);

    let (body, cache) = token_ok(&app, &id, "?force_refresh=true").await;
    assert_eq!(cache, CACHE_MISS);
    assert_eq!(fake.calls_for(rotated), 1, "the rotated token was sent");
    assert_eq!(fake.calls_for(&refresh_token(1)), 1, "the old one was not");
    assert_eq!(
        fake.issued_for(body["access_token"].as_str().unwrap())
            .as_deref(),
        Some(rotated)
    );

    // It survives a restart: it was stored, not only kept in memory.
    let db = app.stop().await;
    let mut settings = crate::helpers::settings(&db, Some(crate::helpers::MASTER_KEYS));
    settings.lwa_token_url = fake.token_url.clone();
    let app = TestApp::start_with(db, settings).await.unwrap();
    assert_eq!(
        crate::tokens::authorize(&app, &id).await.status(),
        StatusCode::OK
    );
    assert_eq!(fake.calls_for(rotated), 2);
    assert_eq!(fake.calls_for(&refresh_token(1)), 1);
}

/// Catches: a cache-wide invalidation that leaves fetches under way free to cache (the
/// notifications missed while the listener was away may concern them).
async fn a_fetch_under_way_when_the_listener_reconnects_does_not_cache() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(1500));
    let app = spawn_tuned(Backend::Postgres, &fake, patient_lwa).await;
    let id = connection(&app, 1).await;
    let in_flight = token_in_background(&app, &id);
    fake.wait_for_calls(1).await;
    // Only the listener's connection goes (a failover, an idle timeout on the way):
    // the fetch's own connection stays.
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(terminated, [true], "one listener");

    let fetched: Value = in_flight.await.unwrap().unwrap().json().await.unwrap();
    let (body, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, CACHE_MISS, "the fetch under way did not cache");
    assert_eq!(body["access_token"], fetched["access_token"]);
    assert_eq!(fake.calls(), 1);
}

/// Catches: a caller accepting whatever the fetch it joined brings back (a forced
/// refresh arriving during an ordinary fetch would get that fetch's token, fetched before
/// the worker found it rejected).
async fn a_forced_refresh_does_not_settle_for_a_fetch_begun_before_it() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(600));
    let app = spawn_tuned(Backend::Sqlite, &fake, |config| {
        patient_lwa(config);
        config.tokens.force_refresh_min_age = chrono::TimeDelta::zero();
    })
    .await;
    let id = connection(&app, 1).await;
    let ordinary = token_in_background(&app, &id);
    fake.wait_for_calls(1).await;
    let (forced, _) = token_ok(&app, &id, "?force_refresh=true").await;
    let ordinary: Value = ordinary.await.unwrap().unwrap().json().await.unwrap();
    assert_ne!(forced["access_token"], ordinary["access_token"]);
    assert_eq!(fake.calls(), 2, "the forced refresh made its own exchange");
    let (now, _) = token_ok(&app, &id, "").await;
    assert_eq!(
        now["access_token"], forced["access_token"],
        "the newest is kept"
    );
}

/// Polls `app` for `id`'s token until it is 404, for at most `limit`; returns how long
/// that took, and every other answer seen meanwhile.
async fn until_not_found(app: &TestApp, id: &str, limit: Duration) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let response = token(app, id, "").await;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return (started.elapsed(), seen);
        }
        let cache = response
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        seen.push(format!("{status} {cache}"));
        assert!(
            started.elapsed() < limit,
            "still answered after {limit:?}: {:?}",
            &seen[seen.len().saturating_sub(5)..]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Guards `recheck_cached_periodically`: a change whose notification never came (here
/// a row deleted behind the service's back) was served from the cache until the token
/// expired, up to an hour.
async fn a_change_whose_notification_is_lost_is_seen_by_the_version_check() {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(Backend::Postgres, &fake, |config| {
        config.tokens.recheck_interval = Duration::from_millis(500);
    })
    .await;
    let id = connection(&app, 1).await;
    token_ok(&app, &id, "").await;
    let (_, cache) = token_ok(&app, &id, "").await;
    assert_eq!(cache, CACHE_HIT);

    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let deleted = sqlx::query("DELETE FROM connections WHERE id = $1::uuid")
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);

    let (took, _) = until_not_found(&app, &id, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// Guards the listener's heartbeat: with its link to the database stalled (open, but
/// passing nothing), replica B kept serving a connection replica A had deleted, with no
/// error to notice, until refresh-ahead. The version check is off here, so only the
/// heartbeat can notice.
async fn a_replica_whose_database_link_stalls_stops_serving_a_deleted_connection() {
    let fake = FakeLwa::start().await;
    let a = spawn_tuned(Backend::Postgres, &fake, |_| {}).await;
    let proxy = crate::proxy::TcpProxy::start(crate::helpers::postgres_addr()).await;
    let mut via_proxy = settings(&a.db, Some(MASTER_KEYS));
    via_proxy.database_url = Some(a.db.url_via(proxy.addr));
    via_proxy.lwa_token_url = fake.token_url.clone();
    let b = TestApp::start_tuned(a.db.clone(), via_proxy, |config| {
        config.tokens.listener_heartbeat = Duration::from_millis(500);
        config.tokens.recheck_interval = Duration::from_secs(3600);
    })
    .await
    .expect("replica B starts");
    let id = connection(&a, 1).await;
    token_ok(&a, &id, "").await;
    token_ok(&b, &id, "").await;
    let (_, cache) = token_ok(&b, &id, "").await;
    assert_eq!(cache, CACHE_HIT);

    proxy.stall();
    let deleted = a
        .delete(&format!("/connections/{id}"), crate::helpers::ADMIN_KEY)
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    // The heartbeat notices within about two beats; reconnecting may first meet the
    // pool's stalled connections (up to a second each here). Before, it never ended.
    let (took, seen) = until_not_found(&b, &id, Duration::from_secs(20)).await;
    assert!(took < Duration::from_secs(12), "{took:?}: {seen:?}");
}

/// Guards the conflict arm for a refusal in `fetch`: LWA refused the old refresh token
/// while a PATCH stored a new one; the refusal (not recorded: the write lost to the
/// PATCH) was still the answer, a 409 telling workers to stop for a connection just
/// fixed. Now the fetch starts over from the new credentials.
async fn a_refusal_of_credentials_replaced_meanwhile_is_not_the_answer(backend: Backend) {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(600));
    fake.refuse_refresh_token(&refresh_token(1));
    let app = spawn_tuned(backend, &fake, |_| {}).await;
    let id = connection(&app, 1).await;
    let in_flight = token_in_background(&app, &id);
    fake.wait_for_calls(1).await;
    patch_ok(&app, &id, json!({"refresh_token": refresh_token(2)})).await;

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.text().await
    );
    assert_eq!(
        fake.calls_for(&refresh_token(2)),
        1,
        "fetched with the new one"
    );
    let stored: Value = app.get_json(&format!("/connections/{id}")).await;
    assert_eq!(stored["status"], "active");
}
