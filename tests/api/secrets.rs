//! Secrets at rest: nothing in plaintext in a dump, ciphertexts bound to their row and
//! field, and start-up refusing a wrong or missing master key.

use std::process::Stdio;
use std::time::Duration;

use connection_registry::crypto::{Field, Keyring};
use connection_registry::domain::ConnectionId;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::both_backends;
use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    ADMIN_KEY, Backend, MASTER_KEYS, OTHER_MASTER_KEY, TestApp, TestDb, client_secret,
    connection_body, problem, refresh_token, spawn_app, spawn_with_lwa,
};

both_backends!(
    no_plaintext_secret_reaches_the_database,
    ciphertext_moved_to_another_row_or_field_does_not_decrypt,
    restart_with_the_same_key_reads_everything_back,
    restart_with_a_wrong_or_missing_key_fails_clearly,
    a_second_key_decrypts_what_the_first_one_sealed,
);
crate::single!(
    a_key_check_stored_under_the_same_id_meanwhile_stops_start_up,
    two_replicas_started_together_with_different_keys_under_one_id_do_not_both_start,
);

/// Every byte the database holds, as text: a pg_dump, or the SQLite files.
async fn database_contents(db: &TestDb) -> String {
    match db.backend {
        Backend::Postgres => {
            let output = tokio::process::Command::new("pg_dump")
                .arg("--no-owner")
                .arg(&db.url)
                .output()
                .await
                .expect("pg_dump runs");
            assert!(
                output.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).expect("dump is text")
        }
        Backend::Sqlite => {
            // The last connection to close checkpoints the `-wal` file into the database
            // and removes it (with `-shm`), perhaps while this reads: then read again,
            // from the database that now holds what the WAL held.
            'again: for _ in 0..10 {
                let mut contents = String::new();
                for entry in std::fs::read_dir(db.sqlite_dir().unwrap()).unwrap() {
                    match std::fs::read(entry.unwrap().path()) {
                        Ok(bytes) => contents.push_str(&String::from_utf8_lossy(&bytes)),
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue 'again;
                        }
                        Err(err) => panic!("reading the SQLite files: {err}"),
                    }
                }
                return contents;
            }
            panic!("the SQLite files kept changing")
        }
    }
}

async fn no_plaintext_secret_reaches_the_database(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let writer = app.api_key(&["connections:write"]).await;
    let created = app.create_connection(&connection_body(1)).await;
    let path = format!("/connections/{}", created["id"].as_str().unwrap());
    // A token fetch stores the access token, and the refresh token LWA rotated to.
    let rotated = "Atzr|IwEBIRotatedInTheDumpTest-0001-do-not-store";
    fake.rotate_refresh_token(rotated);
    let authorized = app
        .post(&format!("{path}/authorize"), &writer, &json!({}))
        .await;
    assert_eq!(authorized.status(), StatusCode::OK);
    let token: Value = app
        .get(&format!("{path}/token"), ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let access_token = token["access_token"].as_str().unwrap().to_owned();
    let patched = app
        .patch(
            &path,
            ADMIN_KEY,
            &json!({"client_secret": client_secret(2), "refresh_token": refresh_token(2)}),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    app.create_connection(&connection_body(3)).await;
    // Secrets of the application and of the service itself: a secret replaced for the
    // whole application (the old one is kept for its grace), one brought by Amazon's
    // notification, and a webhook endpoint's signing secret.
    let replaced = app
        .request(
            reqwest::Method::PUT,
            &format!("/client-secrets/{}", crate::helpers::CLIENT_ID),
            ADMIN_KEY,
            Some(&json!({"client_secret": client_secret(4)})),
        )
        .await;
    assert_eq!(replaced.status(), StatusCode::OK);
    let notified = app
        .post(
            "/notifications/sp-api",
            ADMIN_KEY,
            &json!({
                "notificationType": "APPLICATION_OAUTH_CLIENT_NEW_SECRET",
                "eventTime": chrono::Utc::now().to_rfc3339(),
                "notificationMetadata": {"notificationId": "dump-test-1"},
                "payload": {"applicationOAuthClientNewSecret": {
                    "clientId": crate::helpers::CLIENT_ID,
                    "newClientSecret": client_secret(5),
                    "newClientSecretExpiryTime": "2027-06-01T00:00:00Z",
                    "oldClientSecretExpiryTime": "2026-12-06T00:00:00Z",
                }},
            }),
        )
        .await;
    assert_eq!(notified.status(), StatusCode::OK);
    let hook = app
        .post(
            "/webhook-endpoints",
            ADMIN_KEY,
            &json!({"url": "http://127.0.0.1:9/never", "events": ["connection.client_secret_expiring"]}),
        )
        .await;
    assert_eq!(hook.status(), StatusCode::CREATED);
    let hook: Value = hook.json().await.unwrap();
    let signing_secret = crate::logs::secret(hook["secret"].as_str().unwrap());
    let db = app.stop().await;

    let contents = database_contents(&db).await;
    assert!(contents.contains("v1:k1:"), "sealed values are in the dump");
    assert!(
        contents.contains("A1EXAMPLESELLER"),
        "the dump is readable at all"
    );
    let secrets = [
        client_secret(1),
        client_secret(2),
        client_secret(3),
        client_secret(4),
        client_secret(5),
        signing_secret.clone(),
        signing_secret.trim_start_matches("whsec_").to_owned(),
        "whsec_".to_owned(),
        refresh_token(1),
        refresh_token(2),
        refresh_token(3),
        // Amazon's fixed prefixes: no secret, old or new, appears even in part.
        "amzn1.oa2-cs.v1.".to_owned(),
        "Atzr|".to_owned(),
        ADMIN_KEY.to_owned(),
        writer,
        access_token,
        rotated.to_owned(),
        "Atza|".to_owned(),
        MASTER_KEYS.split_once(':').unwrap().1.to_owned(),
    ];
    for secret in secrets {
        assert!(
            !contents.contains(&secret),
            "{secret} found in the database"
        );
    }
}

/// Catches: a ciphertext opened without its row and field bound in (a copied secret
/// would be sent to Amazon under another connection). Seen through the service: what
/// the fake LWA receives.
async fn ciphertext_moved_to_another_row_or_field_does_not_decrypt(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let a = app.create_connection(&connection_body(1)).await;
    let b = app.create_connection(&connection_body(2)).await;
    let id = |c: &Value| ConnectionId::parse(c["id"].as_str().unwrap()).unwrap();
    let authorize = |c: &Value| {
        let path = format!("/connections/{}/authorize", id(c));
        let app = &app;
        async move { app.post(&path, ADMIN_KEY, &json!({})).await }
    };
    // In place, the sealed secrets open to what was stored.
    assert_eq!(authorize(&a).await.status(), StatusCode::OK);
    assert_eq!(fake.calls_with_client_secret(&client_secret(1)), 1);
    assert_eq!(fake.calls_for(&refresh_token(1)), 1);

    // A's client secret copied into B's row, and A's refresh token into A's secret field:
    // neither opens, and nothing reaches LWA.
    let store = app.db.store().await;
    let row_a = store.get_connection(id(&a)).await.unwrap();
    let mut row_b = store.get_connection(id(&b)).await.unwrap();
    row_b.client_secret = row_a.client_secret.clone();
    row_b.version += 1;
    store.update_connection(&row_b, &[]).await.unwrap();
    let mut swapped = row_a.clone();
    swapped.client_secret = row_a.refresh_token.clone();
    swapped.access_token = None;
    swapped.version += 1;
    store.update_connection(&swapped, &[]).await.unwrap();

    for connection in [&b, &a] {
        let response = authorize(connection).await;
        let body = problem(response, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
        assert_eq!(body["detail"], "internal error");
    }
    assert_eq!(fake.calls(), 1, "nothing was sent to LWA");
    assert_eq!(fake.calls_with_client_secret(&client_secret(1)), 1);
    let b_now: Value = app.get_json(&format!("/connections/{}", id(&b))).await;
    assert_eq!(b_now["status"], "pending");
}

async fn restart_with_the_same_key_reads_everything_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let writer = app.api_key(&["connections:write"]).await;
    let created = app.create_connection(&connection_body(1)).await;
    let path = format!("/connections/{}", created["id"].as_str().unwrap());
    let db = app.stop().await;

    let app = TestApp::start(db, Some(MASTER_KEYS))
        .await
        .expect("restarts");
    let read: Value = app.get(&path, &writer).await.json().await.unwrap();
    assert_eq!(read, created);
    // The sealed secrets still open: a PATCH compares against them.
    let patched: Value = app
        .patch(
            &path,
            ADMIN_KEY,
            &json!({"client_secret": client_secret(1)}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        patched["client_secret_updated_at"],
        created["client_secret_updated_at"]
    );
}

async fn restart_with_a_wrong_or_missing_key_fails_clearly(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_connection(&connection_body(1)).await;
    let db = app.stop().await;

    let err = TestApp::start(db.clone(), Some(OTHER_MASTER_KEY))
        .await
        .err()
        .expect("a wrong key must not start");
    assert_eq!(
        format!("{err:#}"),
        "REGISTRY_MASTER_KEYS: key `k1` is not the key that encrypted this database"
    );

    let only_new = format!("k2:{}", OTHER_MASTER_KEY.split_once(':').unwrap().1);
    let err = TestApp::start(db.clone(), Some(&only_new))
        .await
        .err()
        .expect("a missing key must not start");
    let message = format!("{err:#}");
    assert!(message.starts_with("REGISTRY_MASTER_KEYS: "), "{message}");
    assert!(
        message.contains("`k1`") && message.contains("not configured"),
        "{message}"
    );

    // The right key still works after the refusals.
    let app = TestApp::start(db, Some(MASTER_KEYS))
        .await
        .expect("restarts");
    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

async fn a_second_key_decrypts_what_the_first_one_sealed(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &fake).await;
    let created = app.create_connection(&connection_body(1)).await;
    let id = ConnectionId::parse(created["id"].as_str().unwrap()).unwrap();
    let db = app.stop().await;

    // k2 now encrypts; k1 still decrypts.
    let both = format!(
        "k2:{},{MASTER_KEYS}",
        OTHER_MASTER_KEY.split_once(':').unwrap().1
    );
    let mut settings = crate::helpers::settings(&db, Some(&both));
    settings.lwa_token_url = fake.token_url.clone();
    let app = TestApp::start_with(db, settings)
        .await
        .expect("starts with two keys");
    let created_2 = app.create_connection(&connection_body(2)).await;
    let store = app.db.store().await;
    let old = store.get_connection(id).await.unwrap();
    assert_eq!(old.client_secret.key_id(), Some("k1"));
    let new_id = ConnectionId::parse(created_2["id"].as_str().unwrap()).unwrap();
    let new = store.get_connection(new_id).await.unwrap();
    assert_eq!(new.client_secret.key_id(), Some("k2"));
    // Both open, through the service: LWA receives each connection's own secrets.
    for (n, id) in [(1, id), (2, new_id)] {
        let response = app
            .post(
                &format!("/connections/{id}/authorize"),
                ADMIN_KEY,
                &json!({}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "connection {n}");
        assert_eq!(fake.calls_for(&refresh_token(n)), 1);
        assert_eq!(fake.calls_with_client_secret(&client_secret(n)), 1);
    }
}

/// Guards the read-back in `app::verify_master_keys`: a replica read no check for `k1`,
/// another replica stored its own (other bytes, same id) before this one's insert, which
/// `ON CONFLICT DO NOTHING` then dropped, and both started, each sealing with a different
/// `k1`. A trigger stores the other replica's check at exactly that moment.
async fn a_key_check_stored_under_the_same_id_meanwhile_stops_start_up() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    store.close().await;
    let other = Keyring::parse(OTHER_MASTER_KEY).unwrap();
    let theirs = other
        .seal_with_key(
            "k1",
            "key-check:k1",
            Field::KeyCheck,
            "connection-registry master key check",
        )
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION other_replica_first() RETURNS trigger AS $$ BEGIN
           IF pg_trigger_depth() = 1 THEN
             INSERT INTO key_checks (key_id, sealed, created_at)
             VALUES (NEW.key_id, '{}', now());
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
         CREATE TRIGGER other_replica_first BEFORE INSERT ON key_checks
           FOR EACH ROW EXECUTE FUNCTION other_replica_first();",
        theirs.as_str()
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let err = TestApp::start(db.clone(), Some(MASTER_KEYS))
        .await
        .err()
        .expect("must not start with a k1 other than the stored one");
    assert_eq!(
        format!("{err:#}"),
        "REGISTRY_MASTER_KEYS: key `k1` differs from the key another replica, starting at \
         the same time, stored under this id; every replica must be given the same keys"
    );
}

/// The same race as two processes: started together on a fresh database with different
/// bytes under `k1`, exactly one serves and the other exits with one line saying why.
async fn two_replicas_started_together_with_different_keys_under_one_id_do_not_both_start() {
    for _round in 0..3 {
        let db = TestDb::new(Backend::Postgres).await;
        let start = |keys: &str| {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_connection-registry"))
                .env_clear()
                .env("DATABASE_URL", &db.url)
                .env("REGISTRY_MASTER_KEYS", keys)
                .env("REGISTRY_LISTEN", "127.0.0.1:0")
                .env("REGISTRY_LOG_FORMAT", "json")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        };
        let children = [start(MASTER_KEYS), start(OTHER_MASTER_KEY)];
        let mut outcomes = Vec::new();
        for mut child in children {
            let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
            let listening = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(line) = stdout.next_line().await.unwrap() {
                    if line.contains("\"address\"") {
                        return true;
                    }
                }
                false
            })
            .await
            .expect("each process starts or exits within 20 s");
            let mut stderr = String::new();
            if !listening {
                let status = child.wait().await.unwrap();
                assert!(!status.success());
                tokio::io::AsyncReadExt::read_to_string(
                    &mut child.stderr.take().unwrap(),
                    &mut stderr,
                )
                .await
                .unwrap();
            }
            outcomes.push((listening, stderr, child));
        }
        let serving = outcomes.iter().filter(|(listening, ..)| *listening).count();
        assert_eq!(
            serving,
            1,
            "exactly one replica serves: {:?}",
            outcomes
                .iter()
                .map(|(listening, stderr, _)| (listening, stderr))
                .collect::<Vec<_>>()
        );
        let (_, refused, _) = outcomes.iter().find(|(listening, ..)| !listening).unwrap();
        assert!(
            refused.starts_with("connection-registry: REGISTRY_MASTER_KEYS: key `k1` ")
                && refused.trim_end().lines().count() == 1,
            "{refused}"
        );
    }
}
