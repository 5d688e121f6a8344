//! The event record over HTTP: an event for each change (connections, API keys), with its
//! caller and request id, in the transaction of the change; none for reads; the audit
//! trail's filters and paging; the token hand-out trail; and the request id round trip.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    ADMIN_KEY, Backend, TestApp, client_secret, connection_body, invalid_fields, problem,
    refresh_token, spawn_with_lwa,
};

both_backends!(
    every_change_is_an_event_with_its_caller_and_reads_are_not,
    the_audit_trail_filters_and_pages_newest_first,
    token_handouts_are_counted_per_key_connection_and_minute,
    request_ids_round_trip_into_events_and_logs,
);

async fn events(app: &TestApp, query: &str) -> Vec<Value> {
    let page = app.get_json(&format!("/audit-events{query}")).await;
    page["items"].as_array().unwrap().clone()
}

/// (type, actor, target id) of each event, oldest first.
async fn trail(app: &TestApp, query: &str) -> Vec<(String, String, String)> {
    let mut all: Vec<_> = events(app, query)
        .await
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["actor"].as_str().unwrap().to_owned(),
                event["target_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    all.reverse();
    all
}

/// Guards the outbox: each mutating call leaves exactly its events, naming the key that
/// made it (the service's own token exchange is `system`), with the fields a PATCH
/// changed and a status change's from, to and error code; reads leave none; no secret is
/// in any event.
async fn every_change_is_an_event_with_its_caller_and_reads_are_not(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let (writer_id, writer) = app.api_key_with_id(&["connections:write"]).await;
    let (worker_id, worker) = app.api_key_with_id(&["tokens:read"]).await;
    let writer_actor = format!("api_key:{writer_id}");
    let before = events(&app, "?limit=500").await.len();
    let baseline = trail(&app, "").await;
    assert!(
        baseline
            .iter()
            .all(|(kind, _, _)| kind == "api_key.created")
    );

    let response = app.post("/connections", &writer, &connection_body(1)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Reads, of every kind, as every kind of caller.
    app.get(&format!("/connections/{id}"), &writer).await;
    app.get("/connections", &writer).await;
    app.get("/audit-events", ADMIN_KEY).await;
    app.get("/api-keys", ADMIN_KEY).await;
    assert_eq!(events(&app, "?limit=500").await.len(), before + 1);

    let path = format!("/connections/{id}");
    let patch = |body: Value| {
        let (app, writer, path) = (&app, &writer, &path);
        async move {
            let response = app.patch(path, writer, &body).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    patch(json!({"name": "Renamed"})).await;
    patch(json!({"name": "Renamed"})).await; // no change, no event
    patch(json!({"client_secret": client_secret(2)})).await;
    fake.refuse_refresh_token(&refresh_token(1));
    let response = app.get(&format!("/connections/{id}/token"), &worker).await;
    problem(response, StatusCode::CONFLICT, "connection_not_authorized").await;
    patch(json!({"refresh_token": refresh_token(3)})).await;
    let response = app.delete(&format!("/connections/{id}"), &writer).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = app
        .delete(&format!("/api-keys/{worker_id}"), ADMIN_KEY)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let all = events(&app, "?limit=500").await;
    let ours: Vec<&Value> = all[..all.len() - before].iter().rev().collect();
    let summary: Vec<(&str, &str)> = ours
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("connection.created", writer_actor.as_str()),
            ("connection.updated", writer_actor.as_str()),
            ("connection.updated", writer_actor.as_str()),
            ("connection.status_changed", "system"),
            ("connection.updated", writer_actor.as_str()),
            ("connection.status_changed", writer_actor.as_str()),
            ("connection.deleted", writer_actor.as_str()),
            (
                "api_key.revoked",
                format!("api_key:{}", admin_id(&app).await).as_str()
            ),
        ]
    );
    assert_eq!(ours[0]["body"]["merchant_token"], "A1EXAMPLESELLER");
    assert_eq!(ours[1]["body"], json!({"fields": ["name"]}));
    assert_eq!(
        ours[2]["body"],
        json!({"fields": ["client_secret", "client_secret_expires_at"]})
    );
    assert_eq!(
        ours[3]["body"],
        json!({"from": "pending", "to": "refresh_token_invalid", "error_code": "invalid_grant"})
    );
    assert_eq!(ours[4]["body"], json!({"fields": ["refresh_token"]}));
    assert_eq!(
        ours[5]["body"],
        json!({"from": "refresh_token_invalid", "to": "pending", "error_code": null})
    );
    for event in &ours[..7] {
        assert_eq!(event["target_type"], "connection");
        assert_eq!(event["target_id"], id.as_str());
        assert_eq!(event["connection_id"], id.as_str());
    }
    assert_eq!(ours[7]["target_id"], worker_id.as_str());
    let text = serde_json::to_string(&all).unwrap();
    for secret in [
        client_secret(1),
        client_secret(2),
        refresh_token(1),
        refresh_token(3),
        worker,
    ] {
        assert!(!text.contains(&secret), "an event holds a secret");
    }
}

/// The bootstrap admin key's id, as `GET /api-keys` lists it.
async fn admin_id(app: &TestApp) -> String {
    let keys = app.get_json("/api-keys").await;
    keys["items"]
        .as_array()
        .or_else(|| keys.as_array())
        .unwrap()
        .iter()
        .find(|key| key["scopes"] == json!(["admin"]))
        .map(|key| key["id"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Guards the trail's reading: newest first, cursor paging without gaps or repeats, each
/// filter, and bad filters named.
async fn the_audit_trail_filters_and_pages_newest_first(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            app.create_connection(&connection_body(n)).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let response = app
        .patch(
            &format!("/connections/{}", ids[2]),
            ADMIN_KEY,
            &json!({"name": "two"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let mut paged = Vec::new();
    let mut query = "?type=connection.created&limit=2".to_owned();
    loop {
        let page = app.get_json(&format!("/audit-events{query}")).await;
        for event in page["items"].as_array().unwrap() {
            paged.push(event["target_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?type=connection.created&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(paged, newest_first);

    let of_two = trail(&app, &format!("?connection_id={}", ids[2])).await;
    let kinds: Vec<&str> = of_two.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["connection.created", "connection.updated"]);
    let admin = format!("api_key:{}", admin_id(&app).await);
    assert_eq!(
        trail(&app, &format!("?actor={admin}&type=connection.updated"))
            .await
            .len(),
        1
    );
    // The service's own change: the bootstrap admin key stored at start-up.
    assert_eq!(
        trail(&app, "?actor=system").await,
        [(
            "api_key.created".to_owned(),
            "system".to_owned(),
            admin_id(&app).await
        )]
    );
    let future = "2099-01-01T00:00:00Z";
    assert_eq!(trail(&app, &format!("?since={future}")).await.len(), 0);
    assert_eq!(
        trail(&app, &format!("?until={future}&type=connection.created"))
            .await
            .len(),
        5
    );

    let response = app
        .get("/audit-events?connection_id=nope&type=Bad%20Type&since=yesterday&cursor=x&limit=0&other=1", ADMIN_KEY)
        .await;
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        invalid_fields(&body),
        ["connection_id", "cursor", "limit", "other", "since", "type"]
    );
    let response = app
        .get("/audit-events", &app.api_key(&["connections:write"]).await)
        .await;
    problem(response, StatusCode::FORBIDDEN, "forbidden").await;
}

/// Guards the hand-out trail: counts per key, connection and minute, written without a
/// request's help (here by the flush at shutdown) and readable by either.
async fn token_handouts_are_counted_per_key_connection_and_minute(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let (one_id, one) = app.api_key_with_id(&["tokens:read"]).await;
    let (two_id, two) = app.api_key_with_id(&["tokens:read"]).await;
    let a = app.create_connection(&connection_body(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app.create_connection(&connection_body(2)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (key, id, times) in [(&one, &a, 3), (&two, &a, 2), (&one, &b, 1)] {
        for _ in 0..times {
            let response = app.get(&format!("/connections/{id}/token"), key).await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    }
    let db = app.stop().await;
    let app = TestApp::start(db, Some(crate::helpers::MASTER_KEYS))
        .await
        .unwrap();

    let of_a = app
        .get_json(&format!("/token-handouts?connection_id={a}"))
        .await;
    let mut counts: Vec<(String, i64)> = of_a["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["api_key_id"].as_str().unwrap().to_owned(),
                row["count"].as_i64().unwrap(),
            )
        })
        .collect();
    counts.sort();
    let mut expected = vec![(one_id.clone(), 3), (two_id, 2)];
    expected.sort();
    // A minute boundary may split a key's count in two rows; the sum is what counts.
    let mut summed: Vec<(String, i64)> = Vec::new();
    for (key, count) in counts {
        match summed.last_mut() {
            Some((last, total)) if *last == key => *total += count,
            _ => summed.push((key, count)),
        }
    }
    assert_eq!(summed, expected);
    let of_one = app
        .get_json(&format!("/token-handouts?api_key_id={one_id}"))
        .await;
    let total: i64 = of_one["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 4);
    let minute = of_one["items"][0]["minute"].as_str().unwrap();
    assert!(minute.ends_with(":00Z"), "{minute}");
    // The minute the tokens were handed out in, not merely a whole minute.
    let at: chrono::DateTime<chrono::Utc> = minute.parse().unwrap();
    let age = chrono::Utc::now() - at;
    assert!(
        age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::minutes(5),
        "{minute}"
    );
}

/// GETs `path` as admin, sending `request_id` as `X-Request-Id`.
async fn get_with_request_id(app: &TestApp, path: &str, request_id: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(ADMIN_KEY)
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap()
}

/// Guards the request id: a sane one is kept and returned, an insane one replaced; the
/// events a request causes and its log lines carry it.
async fn request_ids_round_trip_into_events_and_logs(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let send = |request_id: &'static str, n: u32| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(app.url("/connections"))
                .bearer_auth(ADMIN_KEY)
                .header("x-request-id", request_id)
                .json(&connection_body(n))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            let returned = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            let id = response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            (returned, id)
        }
    };
    let (returned, id) = send("checkout-7f3a.1:b", 1).await;
    assert_eq!(returned, "checkout-7f3a.1:b");
    let event = &events(&app, &format!("?connection_id={id}")).await[0];
    assert_eq!(event["request_id"], "checkout-7f3a.1:b");
    let logged = crate::logs::lines_containing("checkout-7f3a.1:b");
    let finished: Vec<&String> = logged
        .iter()
        .filter(|line| line.contains("finished processing request"))
        .collect();
    assert_eq!(
        finished.len(),
        1,
        "one line per request, carrying its id: {logged:?}"
    );
    let admin = admin_id(&app).await;
    for needed in [
        "status=201",
        "latency=",
        "route=\"/connections\"",
        admin.as_str(),
    ] {
        assert!(finished[0].contains(needed), "{needed} in {}", finished[0]);
    }

    // A request about a connection names it in its span.
    let response =
        get_with_request_id(&app, &format!("/connections/{id}"), "read-one-connection").await;
    assert_eq!(response.status(), StatusCode::OK);
    let read_lines = crate::logs::lines_containing("read-one-connection");
    assert!(
        read_lines
            .iter()
            .any(|line| line.contains(&format!("connection_id=\"{id}\""))),
        "{read_lines:?}"
    );

    // The token route, served ahead of the router (`http::token_first`), under the same
    // layers: its id comes back, and its line names the route, the connection and the key.
    let authorized = app
        .post(
            &format!("/connections/{id}/authorize"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(authorized.status(), StatusCode::OK);
    let response = get_with_request_id(
        &app,
        &format!("/connections/{id}/token"),
        "token-of-one-connection",
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-request-id"],
        "token-of-one-connection"
    );
    let token_lines: Vec<String> = crate::logs::lines_containing("token-of-one-connection")
        .into_iter()
        .filter(|line| line.contains("finished processing request"))
        .collect();
    assert_eq!(token_lines.len(), 1, "{token_lines:?}");
    for needed in [
        "status=200".to_owned(),
        "route=\"/connections/{id}/token\"".to_owned(),
        format!("connection_id=\"{id}\""),
        admin.clone(),
    ] {
        assert!(
            token_lines[0].contains(&needed),
            "{needed} in {}",
            token_lines[0]
        );
    }

    let (returned, id) = send("two words", 2).await;
    assert!(
        uuid::Uuid::try_parse(&returned).is_ok(),
        "replaced: {returned}"
    );
    let event = &events(&app, &format!("?connection_id={id}")).await[0];
    assert_eq!(event["request_id"], returned.as_str());
}
