//! The store itself, on both backends: the outcomes handlers rely on.

use connection_registry::crypto::Sealed;
use connection_registry::domain::{
    ApiKeyId, Connection, ConnectionId, ConnectionStatus, Environment, LastError, MerchantToken,
    Region, now,
};
use connection_registry::store::{
    ConnectionFilter, HANDOUTS_PER_STATEMENT, Handouts, StoreError, StoredToken,
};
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Backend, connection_body, spawn_app};

both_backends!(
    a_stale_update_is_a_conflict_and_a_missing_row_not_found,
    every_column_round_trips,
    list_filters_combine_with_the_cursor,
    every_combination_of_list_filters_narrows_alone_together_and_after_the_cursor,
    readiness_reflects_the_database,
    a_value_of_a_type_the_code_does_not_read_is_refused_not_decoded,
    an_instant_no_calendar_holds_is_refused_not_a_panic,
    hand_outs_flushed_in_several_statements_add_up_row_by_row,
    replicas_flushing_the_same_hand_outs_at_once_both_succeed,
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
    // A microsecond before the Unix epoch: negative from it and from Postgres's (2000).
    row.connection.authorized_at = Some("1969-12-31T23:59:59.999999Z".parse().unwrap());
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
    let ids: Vec<_> = rows.iter().map(|connection| connection.id).collect();
    assert_eq!(ids, fe_ids[1..]);
    let first = store
        .list_connections(&ConnectionFilter::default(), 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
}

/// Catches: a list query that leaves out a filter it was given (or joins two with OR, or
/// binds one's value to another's placeholder) in any combination, with or without a
/// cursor. Each filter's value matches a different subset of the connections, so each
/// condition removes rows the others keep.
async fn every_combination_of_list_filters_narrows_alone_together_and_after_the_cursor(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let store = app.db.store().await;
    let soon = now() + chrono::Duration::days(10);
    let later = now() + chrono::Duration::days(100);
    let mut ids = Vec::new();
    for n in 0..24u32 {
        let mut body = connection_body(n);
        body["region"] = json!(["eu", "na", "fe"][n as usize % 3]);
        body["environment"] = json!(if n % 2 == 1 { "sandbox" } else { "production" });
        if n % 4 >= 2 {
            body["merchant_token"] = json!("A1OTHERSELLER9");
        }
        let expires = if n % 7 < 3 { soon } else { later };
        body["client_secret_expires_at"] =
            json!(expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let created = app.create_connection(&body).await;
        let id = ConnectionId::parse(created["id"].as_str().unwrap()).unwrap();
        if n % 5 < 2 {
            let mut row = store.get_connection(id).await.unwrap();
            row.connection.status = ConnectionStatus::Active;
            row.version += 1;
            store.update_connection(&row, &[]).await.unwrap();
        }
        ids.push(id);
    }
    let all: Vec<Connection> = store
        .list_connections(&ConnectionFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(all.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
    // The list reads its own column list (no secrets): every field as a read has it.
    for listed in &all {
        let read = store.get_connection(listed.id).await.unwrap().connection;
        assert_eq!(
            serde_json::to_value(listed).unwrap(),
            serde_json::to_value(&read).unwrap()
        );
    }

    let other = MerchantToken::parse("A1OTHERSELLER9").unwrap();
    let before = now() + chrono::Duration::days(30);
    let cursor = ids[5];
    for mask in 0..64u32 {
        let on = |bit: u32| mask & (1 << bit) != 0;
        let filter = ConnectionFilter {
            status: on(0).then_some(ConnectionStatus::Active),
            region: on(1).then_some(Region::Na),
            environment: on(2).then_some(Environment::Sandbox),
            merchant_token: on(3).then_some(other),
            client_secret_expires_before: on(4).then_some(before),
            after: on(5).then_some(cursor),
        };
        let expected: Vec<ConnectionId> = all
            .iter()
            .filter(|c| {
                filter.status.is_none_or(|status| c.status == status)
                    && filter.region.is_none_or(|region| c.region == region)
                    && filter.environment.is_none_or(|env| c.environment == env)
                    && filter
                        .merchant_token
                        .as_ref()
                        .is_none_or(|token| c.merchant_token.as_str() == token.as_str())
                    && filter
                        .client_secret_expires_before
                        .is_none_or(|before| c.client_secret_expires_at < before)
                    && filter.after.is_none_or(|after| c.id > after)
            })
            .map(|c| c.id)
            .collect();
        let listed: Vec<ConnectionId> = store
            .list_connections(&filter, 100)
            .await
            .unwrap()
            .iter()
            .map(|connection| connection.id)
            .collect();
        assert_eq!(listed, expected, "{filter:?}");

        // Page by two from the filter's own cursor: the same rows, none twice.
        let mut paged = Vec::new();
        let mut page_filter = filter.clone();
        loop {
            let page = store.list_connections(&page_filter, 2).await.unwrap();
            let Some(last) = page.last() else { break };
            page_filter.after = Some(last.id);
            paged.extend(page.iter().map(|connection| connection.id));
            assert!(paged.len() <= ids.len(), "paging must end: {filter:?}");
        }
        assert_eq!(paged, expected, "paged: {filter:?}");
    }
    // Every filter matters somewhere: none of them alone keeps everything or nothing.
    for bit in 0..5u32 {
        let matching = all
            .iter()
            .filter(|c| match bit {
                0 => c.status == ConnectionStatus::Active,
                1 => c.region == Region::Na,
                2 => c.environment == Environment::Sandbox,
                3 => c.merchant_token.as_str() == other.as_str(),
                _ => c.client_secret_expires_at < before,
            })
            .count();
        assert!(0 < matching && matching < all.len(), "filter {bit}");
    }
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

/// Guards the type checks of decoding: a column whose stored type drifted from the one
/// the code reads must fail the read, not be decoded as if it were right (here a `bytea`
/// holding UTF-8, which decodes as a string without complaint). On Postgres the column's
/// described type is checked, once per result: so a list whose first row holds NULL there
/// is refused too, and a single read of that row. SQLite types each value by itself: its
/// NULL is no type, and the text-typed values are what is refused.
async fn a_value_of_a_type_the_code_does_not_read_is_refused_not_decoded(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        let created = app.create_connection(&connection_body(n)).await;
        ids.push(ConnectionId::parse(created["id"].as_str().unwrap()).unwrap());
    }
    ids.sort_by_key(|id| id.as_uuid());
    let store = app.db.store().await;
    assert_eq!(
        store
            .list_connections(&ConnectionFilter::default(), 50)
            .await
            .unwrap()
            .len(),
        3
    );
    let (first, later) = (ids[0], &ids[1..]);
    let blob = match backend {
        Backend::Postgres => {
            app.db
                .execute(
                    "ALTER TABLE connections ALTER COLUMN last_error_message TYPE bytea \
                     USING convert_to(last_error_message, 'UTF8')",
                )
                .await;
            "convert_to('LWA answered 500', 'UTF8')"
        }
        Backend::Sqlite => "CAST('LWA answered 500' AS BLOB)",
    };
    app.db
        .execute(&format!(
            "UPDATE connections SET last_error_message = {blob} \
             WHERE id <> (SELECT id FROM connections ORDER BY id LIMIT 1)"
        ))
        .await;
    let store = app.db.store().await;

    let listed = store
        .list_connections(&ConnectionFilter::default(), 50)
        .await;
    assert!(
        is_decode_error(&listed),
        "a list with a mistyped column: {listed:?}"
    );
    for id in later {
        let read = store.get_connection(*id).await;
        assert!(is_decode_error(&read), "a mistyped value: {read:?}");
    }
    let read_first = store.get_connection(first).await;
    match backend {
        Backend::Postgres => assert!(
            is_decode_error(&read_first),
            "NULL in a mistyped column: {read_first:?}"
        ),
        Backend::Sqlite => assert_eq!(read_first.unwrap().connection.id, first),
    }
}

fn is_decode_error<T>(result: &Result<T, StoreError>) -> bool {
    matches!(
        result,
        Err(StoreError::Other(sqlx::Error::ColumnDecode { .. }))
    )
}

/// Guards the instant decoding: Postgres's `infinity` (and SQLite text that is no
/// instant) must fail the read with a decode error. sqlx's own decoding of a Postgres
/// instant panicked on it, which took down whatever read the row.
async fn an_instant_no_calendar_holds_is_refused_not_a_panic(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_connection(&connection_body(1)).await;
    let id = ConnectionId::parse(created["id"].as_str().unwrap()).unwrap();
    app.db
        .execute("UPDATE connections SET last_tested_at = 'infinity'")
        .await;
    let store = app.db.store().await;
    let read = store.get_connection(id).await;
    assert!(is_decode_error(&read), "infinity: {read:?}");
    let listed = store
        .list_connections(&ConnectionFilter::default(), 50)
        .await;
    assert!(is_decode_error(&listed), "infinity in a list: {listed:?}");
}

/// Guards the batched hand-out flush: a flush longer than one statement writes every
/// row (not only the first statement's), each with its own count, and a second flush
/// adds to the rows already there.
async fn hand_outs_flushed_in_several_statements_add_up_row_by_row(backend: Backend) {
    let app = spawn_app(backend).await;
    let store = app.db.store().await;
    let minute: chrono::DateTime<chrono::Utc> = "2026-11-29T10:00:00Z".parse().unwrap();
    let keys = [ApiKeyId::generate(), ApiKeyId::generate()];
    // Two statements and a part for each key's rows, interleaved.
    let per_key = HANDOUTS_PER_STATEMENT + HANDOUTS_PER_STATEMENT / 4;
    let connections: Vec<ConnectionId> = (0..per_key).map(|_| ConnectionId::generate()).collect();
    let rows = |extra: i64| -> Vec<Handouts> {
        connections
            .iter()
            .enumerate()
            .flat_map(|(n, &connection_id)| {
                keys.iter()
                    .enumerate()
                    .map(move |(k, &api_key_id)| Handouts {
                        api_key_id,
                        connection_id,
                        minute,
                        count: (n * 2 + k) as i64 + 1 + extra,
                    })
            })
            .collect()
    };
    store.add_handouts(&rows(0)).await.unwrap();
    // The second flush: the same rows again (the minute went on), plus 1,000,000 each.
    store.add_handouts(&rows(1_000_000)).await.unwrap();

    for (k, key) in keys.iter().enumerate() {
        let stored = store
            .list_handouts(None, Some(*key), 10 * per_key as u32)
            .await
            .unwrap();
        assert_eq!(stored.len(), per_key, "one row per connection of key {k}");
        for row in stored {
            let n = connections
                .iter()
                .position(|&id| id == row.connection_id)
                .expect("a connection that was handed out");
            assert_eq!(row.api_key_id, *key);
            assert_eq!(row.minute, minute);
            let once = (n * 2 + k) as i64 + 1;
            assert_eq!(
                row.count,
                once + once + 1_000_000,
                "connection {n}, key {k}"
            );
        }
    }
}

/// Guards the hand-out flush's row order: two replicas flushing the same rows at once,
/// each from its own map (so in another order), must not lock them in opposite orders.
/// Postgres would abort one as a deadlock (after its one-second `deadlock_timeout`),
/// and that replica's counts would wait for the next flush.
async fn replicas_flushing_the_same_hand_outs_at_once_both_succeed(backend: Backend) {
    let app = spawn_app(backend).await;
    let store = app.db.store().await;
    let minute: chrono::DateTime<chrono::Utc> = "2026-11-29T11:00:00Z".parse().unwrap();
    let key = ApiKeyId::generate();
    let rows: Vec<Handouts> = (0..HANDOUTS_PER_STATEMENT)
        .map(|_| Handouts {
            api_key_id: key,
            connection_id: ConnectionId::generate(),
            minute,
            count: 1,
        })
        .collect();
    store.add_handouts(&rows).await.unwrap();
    let reversed: Vec<Handouts> = rows
        .iter()
        .rev()
        .map(|row| Handouts { count: 1, ..*row })
        .collect();
    let rounds = 5;
    for _ in 0..rounds {
        let (one, other) = tokio::join!(store.add_handouts(&rows), store.add_handouts(&reversed));
        one.unwrap();
        other.unwrap();
    }
    let stored = store
        .list_handouts(None, Some(key), 2 * HANDOUTS_PER_STATEMENT as u32)
        .await
        .unwrap();
    assert_eq!(stored.len(), HANDOUTS_PER_STATEMENT);
    assert!(
        stored.iter().all(|row| row.count == 1 + 2 * rounds),
        "every row counted by every flush"
    );
}
