//! One application's client secret across its connections, over HTTP against the fake
//! Amazon: replacing it by hand, the replaced secret tried once during its grace,
//! rotation through Amazon and the notification that brings the new secret, expiry
//! notices, and what needs a new secret soon (API and CLI).

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::fake_amazon::FakeLwa;
use crate::fake_spapi::SpApiMode;
use crate::helpers::{
    ADMIN_KEY, Backend, CLIENT_ID, TestApp, client_secret, connection_body, invalid_fields,
    problem, spawn_with_amazon,
};
use crate::operators::cli;
use crate::tokens::{authorize, read, token_ok};

both_backends!(
    a_new_secret_reaches_every_connection_of_the_application,
    the_replaced_secret_is_tried_once_while_its_grace_lasts,
    a_rotation_brings_the_new_secret_by_notification,
    notifications_are_checked_and_applied_once,
    what_needs_a_new_secret_soon_is_listed,
    concurrent_replacements_never_answer_500,
);

const OTHER_CLIENT_ID: &str = "amzn1.application-oa2-client.ffffffffffffffffffffffffffffffff";
const ROTATION: &str = "sellingpartnerapi::client_credential:rotation";

fn secrets_path(client_id: &str) -> String {
    format!("/client-secrets/{client_id}")
}

async fn put_secret(app: &TestApp, client_id: &str, body: &Value) -> reqwest::Response {
    app.request(
        reqwest::Method::PUT,
        &secrets_path(client_id),
        ADMIN_KEY,
        Some(body),
    )
    .await
}

/// Creates connection `n` of `client_id` and fetches its first token.
async fn authorized(app: &TestApp, n: u32, client_id: &str) -> String {
    let mut body = connection_body(n);
    body["client_id"] = json!(client_id);
    let id = app.create_connection(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    token_ok(app, &id, "").await;
    id
}

fn hint(secret: &str) -> &str {
    &secret[secret.len() - 4..]
}

/// Guards the replacement's transaction taking SQLite's write lock at BEGIN (IMMEDIATE):
/// concurrent replacements of one application's secret each answer 200 or 503
/// `concurrent_update`, never 500. A deferred transaction, which counts the connections
/// before it writes, got SQLITE_BUSY at once when another had written meanwhile (found by
/// scripts/contract-fuzz).
async fn concurrent_replacements_never_answer_500(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = authorized(&app, 1, CLIENT_ID).await;
    authorized(&app, 2, CLIENT_ID).await;
    let secrets: Vec<String> = (60..68).map(client_secret).collect();
    let bodies: Vec<Value> = secrets
        .iter()
        .map(|secret| json!({"client_secret": secret}))
        .collect();
    let requests = bodies.iter().map(|body| put_secret(&app, CLIENT_ID, body));
    let mut replaced = 0;
    for response in futures_util::future::join_all(requests).await {
        match response.status() {
            StatusCode::OK => replaced += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                problem(
                    response,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "concurrent_update",
                )
                .await;
            }
            other => panic!("{other}: {}", response.text().await.unwrap()),
        }
    }
    assert!(replaced >= 1, "at least one replacement went through");
    let stored = read(&app, &id).await["client_secret_hint"].clone();
    assert!(
        secrets.iter().any(|secret| stored == hint(secret)),
        "{stored} is the hint of one of the secrets sent"
    );
}

/// Guards the replacement: every connection of the client id and no other, the hint and
/// Amazon's expiry, refused connections back to `pending` (an active one stays active),
/// stored tokens dropped so the next token comes from LWA with the new secret; a second
/// identical PUT changes nothing; bad requests change nothing.
async fn a_new_secret_reaches_every_connection_of_the_application(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let active = authorized(&app, 1, CLIENT_ID).await;
    let invalid = authorized(&app, 2, CLIENT_ID).await;
    let expired = authorized(&app, 3, CLIENT_ID).await;
    let other = authorized(&app, 4, OTHER_CLIENT_ID).await;
    fake.refuse_client_secret(&client_secret(2));
    let response = authorize(&app, &invalid).await;
    problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_client").await;
    fake.set_spapi_mode(SpApiMode::SecretExpired);
    let response = app
        .post(
            &format!("/connections/{expired}/test"),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "client_secret_expired",
    )
    .await;
    fake.set_spapi_mode(SpApiMode::Answer);
    assert_eq!(
        read(&app, &invalid).await["status"],
        "client_credentials_invalid"
    );
    assert_eq!(
        read(&app, &expired).await["status"],
        "client_secret_expired"
    );
    let other_before = read(&app, &other).await;

    // Bad requests first: nothing changes.
    let response = put_secret(&app, CLIENT_ID, &json!({"expires_at": "soon", "x": 1})).await;
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(invalid_fields(&body), ["client_secret", "expires_at", "x"]);
    for unknown in [
        OTHER_CLIENT_ID.replace('f', "e"),
        "not-a-client-id".to_owned(),
    ] {
        let response =
            put_secret(&app, &unknown, &json!({"client_secret": client_secret(9)})).await;
        problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    assert_eq!(
        read(&app, &active).await["client_secret_hint"],
        hint(&client_secret(1))
    );

    let new = client_secret(50);
    let calls = fake.calls();
    let response = put_secret(
        &app,
        CLIENT_ID,
        &json!({"client_secret": new, "expires_at": "2027-05-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"client_id": CLIENT_ID, "connections": 3, "changed": 3})
    );
    for (id, status) in [
        (&active, "active"),
        (&invalid, "pending"),
        (&expired, "pending"),
    ] {
        let connection = read(&app, id).await;
        assert_eq!(connection["status"], status, "{id}");
        assert_eq!(connection["client_secret_hint"], hint(&new));
        assert_eq!(
            connection["client_secret_expires_at"],
            "2027-05-01T00:00:00Z"
        );
        assert_eq!(connection["client_secret_expires_at_estimated"], false);
        if status == "pending" {
            assert_eq!(connection["last_error"], Value::Null);
        }
    }
    assert_eq!(read(&app, &other).await, other_before);
    assert_eq!(fake.calls(), calls, "nothing asked of LWA yet");
    // The audit trail: one event for the application, and the two refused connections'
    // return to `pending`.
    let replaced = app
        .get_json("/audit-events?type=client_secret.replaced")
        .await;
    let replaced = &replaced["items"][0];
    assert_eq!(replaced["target_id"], CLIENT_ID);
    assert_eq!(replaced["body"]["connections"], 3);
    assert_eq!(replaced["body"]["hint"], hint(&new));
    let reset = app
        .get_json("/audit-events?type=connection.status_changed&limit=2")
        .await;
    let mut reset: Vec<(String, String)> = reset["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["target_id"].as_str().unwrap().to_owned(),
                format!("{} -> {}", e["body"]["from"], e["body"]["to"]),
            )
        })
        .collect();
    reset.sort();
    let mut expected = vec![
        (
            invalid.clone(),
            r#""client_credentials_invalid" -> "pending""#.to_owned(),
        ),
        (
            expired.clone(),
            r#""client_secret_expired" -> "pending""#.to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(reset, expected);

    // The next token of each comes from LWA, with the new secret.
    for id in [&active, &invalid, &expired] {
        let (_, cache) = token_ok(&app, id, "").await;
        assert_eq!(cache, "connection-registry; fwd=miss", "{id}");
    }
    assert_eq!(fake.calls_with_client_secret(&new), 3);
    assert_eq!(read(&app, &invalid).await["status"], "active");
    token_ok(&app, &other, "").await;
    assert_eq!(
        fake.calls(),
        calls + 3,
        "the other application's token is still stored"
    );

    let again = put_secret(&app, CLIENT_ID, &json!({"client_secret": new})).await;
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["changed"], 0);
    assert_eq!(
        read(&app, &active).await["client_secret_expires_at"],
        "2027-05-01T00:00:00Z"
    );
}

/// Guards the grace: a new secret LWA refuses is followed by one try with the replaced
/// secret while its grace lasts (the connection keeps working), and by none after it.
async fn the_replaced_secret_is_tried_once_while_its_grace_lasts(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = authorized(&app, 1, CLIENT_ID).await;
    let (old, new) = (client_secret(1), client_secret(2));
    let response = put_secret(&app, CLIENT_ID, &json!({"client_secret": new})).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The secret stored was not the application's (a typo, or stored too early).
    fake.refuse_client_secret(&new);

    let (served, _) = token_ok(&app, &id, "").await;
    assert!(served["access_token"].as_str().is_some());
    assert_eq!(fake.calls_with_client_secret(&new), 1);
    assert_eq!(
        fake.calls_with_client_secret(&old),
        2,
        "first token, then the fallback"
    );
    assert_eq!(read(&app, &id).await["status"], "active");
    let warned = crate::logs::lines_containing("the one it replaced, still in its grace");
    assert_eq!(warned.len(), 1, "{warned:?}");

    // Seven days later the replaced secret is no longer tried.
    app.db
        .execute_at(
            "UPDATE connections SET previous_client_secret_until = $1",
            Utc::now() - Duration::seconds(1),
        )
        .await;
    let response = authorize(&app, &id).await;
    problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_client").await;
    assert_eq!(fake.calls_with_client_secret(&new), 2);
    assert_eq!(fake.calls_with_client_secret(&old), 2);
    assert_eq!(
        read(&app, &id).await["status"],
        "client_credentials_invalid"
    );
}

/// Guards rotation: the grantless rotation token, Amazon's call, the notification applied
/// to every connection (Amazon's expiry, not an estimate), a redelivery ignored, the new
/// secret used by LWA and the old one no longer needed; an application Amazon refuses
/// to rotate gets a 422 saying why.
async fn a_rotation_brings_the_new_secret_by_notification(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    // The oldest connection's credentials were refused: the rotation goes through another.
    let refused = authorized(&app, 3, CLIENT_ID).await;
    fake.refuse_client_secret(&client_secret(3));
    let response = authorize(&app, &refused).await;
    problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_client").await;
    let first = authorized(&app, 1, CLIENT_ID).await;
    let second = authorized(&app, 2, CLIENT_ID).await;

    let response = app
        .post(
            &format!("{}/rotate", secrets_path(CLIENT_ID)),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "requested");
    assert_eq!(fake.grantless_calls(ROTATION), 1);
    assert_eq!(
        fake.spapi_seen().last().unwrap().0,
        "/applications/2023-11-30/clientSecret"
    );
    assert_eq!(
        read(&app, &first).await["client_secret_hint"],
        hint(&client_secret(1))
    );

    let notifications = fake.take_notifications();
    assert_eq!(notifications.len(), 1);
    let notification = &notifications[0];
    let new = notification["payload"]["applicationOAuthClientNewSecret"]["newClientSecret"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .post("/notifications/sp-api", ADMIN_KEY, notification)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "notification_id": notification["notificationMetadata"]["notificationId"],
            "outcome": "applied",
            "connections": 3,
        })
    );
    assert_eq!(read(&app, &refused).await["status"], "pending");
    let expected_expiry: DateTime<Utc> = serde_json::from_value(
        notification["payload"]["applicationOAuthClientNewSecret"]["newClientSecretExpiryTime"]
            .clone(),
    )
    .unwrap();
    for id in [&first, &second] {
        let connection = read(&app, id).await;
        assert_eq!(connection["client_secret_hint"], hint(&new));
        let expires_at: DateTime<Utc> =
            serde_json::from_value(connection["client_secret_expires_at"].clone()).unwrap();
        assert_eq!(expires_at, expected_expiry);
        assert_eq!(connection["client_secret_expires_at_estimated"], false);
    }

    // Redelivered: acknowledged, nothing done.
    let before = read(&app, &first).await;
    let response = app
        .post("/notifications/sp-api", ADMIN_KEY, notification)
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outcome"], "duplicate");
    assert_eq!(read(&app, &first).await, before);

    // A newer secret stored by hand; the notification delivered once more must not
    // bring the older one back.
    let by_hand = client_secret(60);
    let response = put_secret(&app, CLIENT_ID, &json!({"client_secret": by_hand})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .post("/notifications/sp-api", ADMIN_KEY, notification)
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outcome"], "duplicate");
    assert_eq!(
        read(&app, &first).await["client_secret_hint"],
        hint(&by_hand)
    );
    // Another notification, sent before that secret was stored (queues reorder): it
    // concerns an older secret and changes nothing.
    let mut older = notification.clone();
    older["notificationMetadata"]["notificationId"] = json!("an-older-rotation");
    older["eventTime"] = json!("2026-01-01T00:00:00.000Z");
    let response = app.post("/notifications/sp-api", ADMIN_KEY, &older).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outcome"], "applied");
    assert_eq!(body["connections"], 0);
    assert_eq!(
        read(&app, &first).await["client_secret_hint"],
        hint(&by_hand)
    );
    let response = put_secret(&app, CLIENT_ID, &json!({"client_secret": new})).await;
    assert_eq!(response.status(), StatusCode::OK);

    // The old secret's grace ends; the connections work with the new one.
    fake.end_grace();
    for id in [&first, &second] {
        token_ok(&app, id, "").await;
    }
    assert_eq!(fake.calls_with_client_secret(&new), 2);

    fake.refuse_rotation();
    let response = app
        .post(
            &format!("{}/rotate", secrets_path(CLIENT_ID)),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "spapi_invalid_input",
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("not subscribed to APPLICATION_OAUTH_CLIENT_NEW_SECRET")
            && detail.contains("Rotation needs the application subscribed"),
        "{detail}"
    );
    assert!(fake.take_notifications().is_empty());
    let response = app
        .post(
            &format!("{}/rotate", secrets_path(OTHER_CLIENT_ID)),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    problem(response, StatusCode::NOT_FOUND, "not_found").await;
    // Sandbox connections only: a sandbox host would accept and rotate nothing.
    let mut sandbox = connection_body(4);
    sandbox["client_id"] = json!(OTHER_CLIENT_ID);
    sandbox["environment"] = json!("sandbox");
    app.create_connection(&sandbox).await;
    let response = app
        .post(
            &format!("{}/rotate", secrets_path(OTHER_CLIENT_ID)),
            ADMIN_KEY,
            &json!({}),
        )
        .await;
    problem(response, StatusCode::CONFLICT, "no_usable_connection").await;
}

/// An expiry notice sent now.
fn expiry_notice(id: &str, client_id: &str, expires_at: &str) -> Value {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "notificationVersion": "1.0",
        "notificationType": "APPLICATION_OAUTH_CLIENT_SECRET_EXPIRY",
        "payloadVersion": "2023-11-30",
        "eventTime": now,
        "payload": {
            "applicationOAuthClientSecretExpiry": {
                "clientId": client_id,
                "clientSecretExpiryTime": expires_at,
                "clientSecretExpiryReason": "PERIODIC_ROTATION",
            }
        },
        "notificationMetadata": {
            "applicationId": "amzn1.sp.solution.1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9",
            "subscriptionId": "7d4f1f2e-5a3b-4c6d-8e9f-0a1b2c3d4e5f",
            "publishTime": "2026-11-28T10:00:00.000Z",
            "notificationId": id,
        }
    })
}

/// Guards the notification endpoint: an expiry notice sets Amazon's date on the
/// application's connections only; one for an application nobody uses is recorded as
/// ignored (and so is its redelivery); malformed ones are refused naming each bad field,
/// changing nothing.
async fn notifications_are_checked_and_applied_once(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let mine = authorized(&app, 1, CLIENT_ID).await;
    let other = authorized(&app, 2, OTHER_CLIENT_ID).await;
    let other_before = read(&app, &other).await;

    let notice = expiry_notice("n-1", CLIENT_ID, "2027-02-01T00:00:00.000Z");
    let response = app.post("/notifications/sp-api", ADMIN_KEY, &notice).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"notification_id": "n-1", "outcome": "applied", "connections": 1})
    );
    let connection = read(&app, &mine).await;
    assert_eq!(
        connection["client_secret_expires_at"],
        "2027-02-01T00:00:00Z"
    );
    assert_eq!(connection["client_secret_expires_at_estimated"], false);
    assert_eq!(read(&app, &other).await, other_before);

    // A notice sent before the connection's secret was stored is about an older secret.
    let mut late = expiry_notice("n-0", CLIENT_ID, "2026-12-01T00:00:00.000Z");
    late["eventTime"] = json!("2026-01-01T00:00:00.000Z");
    let response = app.post("/notifications/sp-api", ADMIN_KEY, &late).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"notification_id": "n-0", "outcome": "applied", "connections": 0})
    );
    assert_eq!(read(&app, &mine).await, connection);

    let nobody = "amzn1.application-oa2-client.00000000000000000000000000000000";
    for outcome in ["ignored", "duplicate"] {
        let notice = expiry_notice("n-2", nobody, "2027-02-01T00:00:00.000Z");
        let response = app.post("/notifications/sp-api", ADMIN_KEY, &notice).await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["outcome"], outcome);
    }

    let before = read(&app, &mine).await;
    let mut wrong_type = expiry_notice("n-3", CLIENT_ID, "2027-03-01T00:00:00Z");
    wrong_type["notificationType"] = json!("ANY_OFFER_CHANGED");
    let mut bad_fields = expiry_notice("n-4", "amzn1.application-oa2-client.XYZ", "next year");
    bad_fields["notificationMetadata"]
        .as_object_mut()
        .unwrap()
        .remove("notificationId");
    let mut no_secret = json!({
        "notificationType": "APPLICATION_OAUTH_CLIENT_NEW_SECRET",
        "notificationMetadata": {"notificationId": "n-5"},
        "payload": {"applicationOAuthClientNewSecret": {
            "clientId": CLIENT_ID,
            "newClientSecretExpiryTime": "2027-05-01T00:00:00Z",
            "oldClientSecretExpiryTime": 7,
        }},
    });
    let cases = [
        (wrong_type, vec!["notificationType"]),
        (
            bad_fields,
            vec![
                "notificationMetadata.notificationId",
                "payload.applicationOAuthClientSecretExpiry.clientId",
                "payload.applicationOAuthClientSecretExpiry.clientSecretExpiryTime",
            ],
        ),
        (
            no_secret.take(),
            vec![
                "eventTime",
                "payload.applicationOAuthClientNewSecret.newClientSecret",
                "payload.applicationOAuthClientNewSecret.oldClientSecretExpiryTime",
            ],
        ),
        (
            json!({"payload": []}),
            vec![
                "eventTime",
                "notificationMetadata.notificationId",
                "notificationType",
            ],
        ),
    ];
    for (notice, fields) in cases {
        let response = app.post("/notifications/sp-api", ADMIN_KEY, &notice).await;
        let body = problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(invalid_fields(&body), fields, "{notice}");
    }
    assert_eq!(read(&app, &mine).await, before);
    // Refused notifications are not recorded: sent again fixed, they are applied.
    let notice = expiry_notice("n-3", CLIENT_ID, "2027-03-01T00:00:00Z");
    let response = app.post("/notifications/sp-api", ADMIN_KEY, &notice).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outcome"], "applied");
}

/// Guards the expiry listing: the API filter and the CLI (table and JSON), soonest
/// first, and a bad period named.
async fn what_needs_a_new_secret_soon_is_listed(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let mut ids = Vec::new();
    for (n, days) in [(1, 20), (2, 5), (3, 400)] {
        let mut body = connection_body(n);
        let at =
            (Utc::now() + Duration::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        body["client_secret_expires_at"] = json!(at);
        ids.push(
            app.create_connection(&body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // An estimate: 180 days.
    ids.push(
        app.create_connection(&connection_body(4)).await["id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    let listed = |within: &'static str| {
        let app = &app;
        async move {
            let page = app
                .get_json(&format!(
                    "/connections?client_secret_expires_within={within}"
                ))
                .await;
            let mut ids: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(listed("14d").await, [ids[1].clone()]);
    let mut month = vec![ids[0].clone(), ids[1].clone()];
    month.sort();
    assert_eq!(listed("30d").await, month);
    assert_eq!(listed("200d").await.len(), 3);
    // Refused, never a panic: a multi-byte last character, a number past any date.
    for bad in ["14x", "1%C3%A9", "999999999999d"] {
        let response = app
            .get(
                &format!("/connections?client_secret_expires_within={bad}"),
                ADMIN_KEY,
            )
            .await;
        let body = problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(
            invalid_fields(&body),
            ["client_secret_expires_within"],
            "{bad}"
        );
    }

    let table = cli(&app.db, &["connections", "expiring", "--within", "30d"]).await;
    table.assert_succeeded("connections expiring");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("client secret expires"), "{table}");
    assert!(
        lines[1].contains(&ids[1]) && lines[1].contains("amazon"),
        "soonest first: {table}"
    );
    assert!(lines[2].contains(&ids[0]), "{table}");
    let json_run = cli(
        &app.db,
        &["connections", "expiring", "--within", "200d", "--json"],
    )
    .await;
    json_run.assert_succeeded("connections expiring --json");
    let listed: Vec<Value> = serde_json::from_str(&json_run.stdout).unwrap();
    let order: Vec<&str> = listed.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(order, [ids[1].as_str(), ids[0].as_str(), ids[3].as_str()]);
    assert_eq!(listed[2]["client_secret_expires_at_estimated"], true);
    let bad = cli(&app.db, &["connections", "expiring", "--within", "soon"]).await;
    assert!(
        bad.assert_failed_in_one_line("a bad period")
            .contains("--within must be a number of days or hours"),
        "{bad}"
    );
}
