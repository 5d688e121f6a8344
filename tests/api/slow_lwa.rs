//! A slow LWA costs only time: no database connection is held while it answers, other
//! connections' tokens keep flowing, and refreshes ahead of expiry do not pile up.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::Connection;

use crate::fake_amazon::FakeLwa;
use crate::helpers::{ADMIN_KEY, Backend, TestApp, patient_lwa, spawn_tuned};
use crate::tokens::{authorize, connection, token_ok};

crate::single!(
    slow_exchanges_hold_no_database_connection_and_block_nothing_else,
    refreshes_ahead_of_expiry_are_bounded_in_number,
);

/// Transactions left open on the test database: what an exchange holding a lock
/// transaction looked like.
async fn open_transactions(app: &TestApp) -> i64 {
    let mut conn = sqlx::PgConnection::connect(&crate::helpers::postgres_admin_url())
        .await
        .unwrap();
    let (open,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
         AND state = 'idle in transaction'",
    )
    .bind(&app.db.name)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    open
}

/// Guards the token lease (`Store::lease_token`): each exchange held a pooled Postgres
/// connection in a transaction for the whole LWA call, from a pool of 8, so with 20 slow
/// exchanges the others waited 10 s for a connection and got `database_unavailable`, an
/// unrelated authorize included.
async fn slow_exchanges_hold_no_database_connection_and_block_nothing_else() {
    let fake = FakeLwa::start().await;
    let app = spawn_tuned(Backend::Postgres, &fake, |config| {
        patient_lwa(config);
        config.tokens.force_refresh_min_age = chrono::TimeDelta::zero();
    })
    .await;
    let mut slow = Vec::new();
    for n in 0..20 {
        let id = connection(&app, n).await;
        token_ok(&app, &id, "").await;
        slow.push(id);
    }
    let flowing = connection(&app, 20).await;
    let (cached, _) = token_ok(&app, &flowing, "").await;
    let unrelated = connection(&app, 21).await;
    assert_eq!(fake.calls(), 21);

    fake.set_delay(Duration::from_secs(9));
    let refreshes: Vec<_> = slow
        .iter()
        .map(|id| {
            tokio::spawn(
                app.client
                    .get(app.url(&format!("/connections/{id}/token?force_refresh=true")))
                    .bearer_auth(ADMIN_KEY)
                    .send(),
            )
        })
        .collect();
    fake.wait_for_calls(41).await;
    assert_eq!(
        open_transactions(&app).await,
        0,
        "no transaction stays open while LWA answers"
    );
    for _ in 0..20 {
        let (body, cache) = token_ok(&app, &flowing, "").await;
        assert_eq!(cache, "connection-registry; hit");
        assert_eq!(body["access_token"], cached["access_token"]);
    }
    let authorized = authorize(&app, &unrelated).await;
    assert_eq!(authorized.status(), StatusCode::OK);
    let authorized: Value = authorized.json().await.unwrap();
    assert_eq!(authorized["status"], "active");

    for refresh in refreshes {
        let response = refresh.await.unwrap().unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            response.text().await
        );
        assert_eq!(
            response.headers()["cache-status"],
            "connection-registry; fwd=miss"
        );
    }
    assert_eq!(
        fake.calls(),
        42,
        "one call per refresh and one for the authorize"
    );
}

/// Guards the refresher's permits (`refresh_concurrency`): each due token was spawned
/// as its own refresh, so a slow LWA piled up as many exchanges as there were tokens due.
async fn refreshes_ahead_of_expiry_are_bounded_in_number() {
    let fake = FakeLwa::start().await;
    // Every token is due for refresh as soon as it is fetched.
    fake.set_expires_in(200);
    let app = spawn_tuned(Backend::Postgres, &fake, |config| {
        config.tokens.refresh_ahead = chrono::TimeDelta::minutes(5);
        config.tokens.refresh_tick = Duration::from_millis(50);
        config.tokens.refresh_spacing = Duration::ZERO;
        config.tokens.refresh_concurrency = 3;
        patient_lwa(config);
    })
    .await;
    for n in 0..12 {
        let id = connection(&app, n).await;
        token_ok(&app, &id, "").await;
    }
    // From now on only the refresher calls LWA, slowly; each new token is due too, so it
    // keeps all 12 coming.
    fake.set_delay(Duration::from_millis(400));
    let calls = fake.calls();
    fake.reset_max_in_flight();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        fake.calls() >= calls + 12,
        "every due token was refreshed: {}",
        fake.calls()
    );
    assert_eq!(
        fake.max_in_flight(),
        3,
        "at most refresh_concurrency exchanges at once, and all of them used"
    );
}
