//! Master-key rotation as an operator does it, with the binary's `keys` subcommands as
//! child processes and servers in-process over the same database: rewrap while tokens are
//! served, drop the old key, restart; a rewrap killed half-way and resumed; and a replica
//! that lacks a key failing only the connections sealed with it.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Command;

use connection_registry::crypto::Keyring;
use connection_registry::master_keys;
use connection_registry::store::Store;

use crate::both_backends;
use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    ADMIN_KEY, Backend, MASTER_KEYS, TestApp, TestDb, client_secret, connection_body, problem,
    reliability_scale, report, settings,
};
use crate::operators::{BINARY, Run, cli_with_keys};
use crate::tokens::{authorize, token, token_ok};

both_backends!(
    a_rotation_rewraps_everything_while_tokens_are_served,
    a_rewrap_killed_half_way_resumes_where_it_stopped,
    counts_by_key_take_each_ciphertext_once_while_a_rewrap_commits,
    a_rewrap_killed_again_and_again_loses_no_secret,
    a_replica_without_a_key_fails_only_what_that_key_sealed,
);

const NOTIFICATIONS: &str = "?scope=sellingpartnerapi::notifications";

/// `keys generate --id <id>`: the entry alone on stdout, registered as a secret.
async fn generate(db: &TestDb, id: &str) -> String {
    let run = cli_with_keys(db, MASTER_KEYS, &["keys", "generate", "--id", id]).await;
    run.assert_succeeded("keys generate");
    let entry = run.stdout.trim_end().to_owned();
    assert!(entry.starts_with(&format!("{id}:")), "{run}");
    assert_eq!(run.stdout.lines().count(), 1, "{run}");
    crate::logs::secret(entry.split_once(':').unwrap().1);
    crate::logs::secret(entry)
}

/// `keys status --json`: key id → (configured, ciphertexts).
async fn status(db: &TestDb, keys: &str) -> Vec<(String, bool, u64)> {
    let run = cli_with_keys(db, keys, &["keys", "status", "--json"]).await;
    run.assert_succeeded("keys status");
    run.stdout
        .lines()
        .map(|line| {
            let key: Value = serde_json::from_str(line).unwrap();
            (
                key["key_id"].as_str().unwrap().to_owned(),
                key["configured"].as_bool().unwrap(),
                key["ciphertexts"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `keys rewrap` as a child process, `batch` rows at a time with `pause_ms` between
/// batches, so a test can kill it part-way.
fn slow_rewrap(db: &TestDb, keys: &str, batch: u32, pause_ms: u64) -> tokio::process::Child {
    Command::new(BINARY)
        .args(["keys", "rewrap", "--batch-size", &batch.to_string()])
        .args(["--pause-ms", &pause_ms.to_string()])
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("REGISTRY_MASTER_KEYS", keys)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Ciphertexts under `k1` and `k2`, counted in one snapshot.
async fn sealed_by_key(store: &Store) -> [u64; 2] {
    let counts = store.count_sealed_by_key(&["k1", "k2"]).await.unwrap();
    [counts[0], counts[1]]
}

async fn server(db: &Arc<TestDb>, fake: &FakeLwa, keys: &str) -> anyhow::Result<TestApp> {
    let mut settings = settings(db, Some(keys));
    settings.lwa_token_url = fake.token_url.clone();
    TestApp::start_with(db.clone(), settings).await
}

async fn connections(app: &TestApp, n: u32) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let created = app.create_connection(&connection_body(i)).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Guards the whole rotation: every sealed column rewrapped (client secrets, refresh
/// tokens, stored access tokens, grantless tokens), no token request failing meanwhile,
/// a second rewrap doing nothing, the old key removable (status says so, the next start
/// allows it) and everything usable without it: LWA exchanges that need the client
/// secret and refresh token, and PATCH, which opens the stored secret.
async fn a_rotation_rewraps_everything_while_tokens_are_served(backend: Backend) {
    let fake = FakeLwa::start().await;
    // Tokens with less than `min_ttl=3000` left at once: such a request always fetches.
    fake.set_expires_in(3000);
    let db = TestDb::new(backend).await;
    let app = server(&db, &fake, MASTER_KEYS).await.unwrap();
    let ids = connections(&app, 12).await;
    // One connection got a new secret: the one it replaced is kept, sealed, for its grace.
    let response = app
        .patch(
            &format!("/connections/{}", ids[11]),
            ADMIN_KEY,
            &json!({"client_secret": client_secret(111)}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    for id in &ids {
        token_ok(&app, id, "").await;
    }
    token_ok(&app, &ids[0], NOTIFICATIONS).await;
    // 12 client secrets, 1 replaced one, 12 refresh tokens, 12 access tokens, 1 grantless
    // token.
    assert_eq!(status(&db, MASTER_KEYS).await, [("k1".into(), true, 38)]);

    let k2 = generate(&db, "k2").await;
    let both = format!("{k2},{MASTER_KEYS}");
    app.stop().await;
    let app = server(&db, &fake, &both).await.unwrap();
    // The new replica seals with k2 from now on; nothing stored moved yet.
    assert_eq!(
        status(&db, &both).await,
        [("k2".into(), true, 0), ("k1".into(), true, 38)]
    );

    // Workers keep asking while the rewrap runs, in small batches; every other request
    // wants a fresher token than the stored one, so it exchanges with LWA and writes the
    // connection's row, racing the rewrap's writes.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let client = app.client.clone();
            let urls: Vec<String> = ids
                .iter()
                .map(|id| app.url(&format!("/connections/{id}/token")))
                .collect();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for round in 0..30 {
                    let url = &urls[(w + round) % urls.len()];
                    let query: &[(&str, &str)] = if round % 2 == 0 {
                        &[("min_ttl", "3000")]
                    } else {
                        &[]
                    };
                    let response = client
                        .get(url)
                        .query(query)
                        .bearer_auth(ADMIN_KEY)
                        .send()
                        .await
                        .unwrap();
                    statuses.push(response.status());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                statuses
            })
        })
        .collect();
    let run = cli_with_keys(&db, &both, &["keys", "rewrap", "--batch-size", "5"]).await;
    run.assert_succeeded("keys rewrap");
    // Fetches meanwhile sealed some access tokens with k2 themselves.
    let rewrapped: u64 = run
        .stdout
        .strip_prefix("rewrapped ")
        .and_then(|rest| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{run}"));
    assert!((26..=38).contains(&rewrapped), "{run}");
    assert!(
        run.stdout.ends_with(
            " secrets with key `k2`\n\
             key `k1` encrypts nothing now: remove it from REGISTRY_MASTER_KEYS\n"
        ),
        "{run}"
    );
    for worker in workers {
        let statuses = worker.await.unwrap();
        assert!(
            statuses.iter().all(|status| *status == StatusCode::OK),
            "{statuses:?}"
        );
    }
    assert_eq!(
        status(&db, &both).await,
        [("k2".into(), true, 38), ("k1".into(), true, 0)]
    );
    let again = cli_with_keys(&db, &both, &["keys", "rewrap"]).await;
    again.assert_succeeded("a second rewrap");
    assert!(
        again
            .stdout
            .starts_with("rewrapped 0 secrets with key `k2`\n"),
        "{again}"
    );
    assert!(
        !run.stdout.contains(&k2) && !run.stderr.contains(&k2),
        "{run}"
    );

    // Without k1: it encrypts nothing, so the start allows it; everything opens with k2.
    app.stop().await;
    let app = server(&db, &fake, &k2).await.unwrap();
    assert_eq!(
        status(&db, &k2).await,
        [("k2".into(), true, 38), ("k1".into(), false, 0)]
    );
    let calls = fake.calls();
    assert!(
        calls > 12 + 30,
        "the workers' fresher tokens came from LWA: {calls}"
    );
    for id in &ids {
        let response = authorize(&app, id).await;
        assert_eq!(response.status(), StatusCode::OK, "authorize {id}");
    }
    assert_eq!(
        fake.calls(),
        calls + ids.len(),
        "each exchanged its refresh token"
    );
    let (grantless, _) = token_ok(&app, &ids[0], NOTIFICATIONS).await;
    assert!(grantless["access_token"].as_str().is_some());
    assert_eq!(
        fake.grantless_calls("sellingpartnerapi::notifications"),
        1,
        "the stored one"
    );
    let response = app
        .patch(
            &format!("/connections/{}", ids[0]),
            ADMIN_KEY,
            &json!({"client_secret": client_secret(100)}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // k1 alone cannot start any more: k2 seals everything (still 38: the new secret
    // dropped one stored access token and kept the secret it replaced).
    app.stop().await;
    let Err(refused) = server(&db, &fake, MASTER_KEYS).await else {
        panic!("a start without the key that seals everything must fail");
    };
    assert_eq!(
        refused.to_string(),
        "REGISTRY_MASTER_KEYS: 38 stored secrets are encrypted with key `k2`, which is not \
         configured; add it back after the current key, and remove it only once \
         `connection-registry keys rewrap` has re-encrypted them"
    );
}

/// Guards resumption: after `kill -9` in the middle, every row is readable with both keys
/// configured (no half-written row), and the next run rewraps exactly the rest.
async fn a_rewrap_killed_half_way_resumes_where_it_stopped(backend: Backend) {
    let fake = FakeLwa::start().await;
    let db = TestDb::new(backend).await;
    let app = server(&db, &fake, MASTER_KEYS).await.unwrap();
    let ids = connections(&app, 30).await;
    app.stop().await;
    let k2 = generate(&db, "k2").await;
    let both = format!("{k2},{MASTER_KEYS}");
    let store = db.store().await;

    // Two rows per batch, a pause after each: about three seconds in all.
    let mut rewrap = slow_rewrap(&db, &both, 2, 100);
    for _ in 0..200 {
        if store.count_sealed_with("k2").await.unwrap() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rewrap.start_kill().unwrap(); // SIGKILL
    let status = rewrap.wait().await.unwrap();
    assert!(!status.success(), "killed, not finished: {status}");
    // One snapshot: the killed process's last batch may commit while these are counted.
    let [k1, done] = sealed_by_key(&store).await;
    assert!(
        (10..60).contains(&done),
        "killed half-way: {done} of 60 rewrapped"
    );
    assert_eq!(k1, 60 - done);

    // Every connection opens, whichever key its secrets are under.
    let app = server(&db, &fake, &both).await.unwrap();
    for id in &ids {
        token_ok(&app, id, "").await;
    }
    app.stop().await;

    let rest = store.count_sealed_with("k1").await.unwrap();
    let resumed: Run = cli_with_keys(&db, &both, &["keys", "rewrap"]).await;
    resumed.assert_succeeded("the resumed rewrap");
    assert!(
        resumed
            .stdout
            .starts_with(&format!("rewrapped {rest} secrets with key `k2`\n")),
        "{resumed}"
    );
    assert_eq!(store.count_sealed_with("k1").await.unwrap(), 0);
    assert_eq!(store.count_sealed_with("k2").await.unwrap(), 90);
}

/// Guards `keys status` during a rewrap: the count of each key comes from one snapshot,
/// so while batches commit, every ciphertext is counted under exactly one key. Counted
/// one key at a time, a batch committing between the two counts is counted twice (or
/// not at all), and status would show more (or fewer) secrets than there are.
async fn counts_by_key_take_each_ciphertext_once_while_a_rewrap_commits(backend: Backend) {
    let fake = FakeLwa::start().await;
    let db = TestDb::new(backend).await;
    let app = server(&db, &fake, MASTER_KEYS).await.unwrap();
    let ids = connections(&app, 40).await;
    for id in &ids {
        token_ok(&app, id, "").await; // 120 secrets
    }
    app.stop().await;
    let k2 = generate(&db, "k2").await;
    let both = format!("{k2},{MASTER_KEYS}");
    let keyring = Keyring::parse(&both).unwrap();
    let store = db.store().await;
    // One row per batch and no pause: 40 commits while `keys status` counts, as often as
    // it can until every secret is under k2 (or a minute has passed).
    let mut rewrap = slow_rewrap(&db, &both, 1, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut counts, mut part_way) = (0, 0);
    let mut wrong = Vec::new();
    loop {
        let report = master_keys::status(&store, &keyring).await.unwrap();
        let under = |key: &str| {
            report
                .iter()
                .find(|status| status.key_id == key)
                .map_or(0, |status| status.ciphertexts)
        };
        let (k1, k2) = (under("k1"), under("k2"));
        counts += 1;
        part_way += usize::from(k2 > 0 && k1 > 0);
        if k1 + k2 != 120 {
            wrong.push((k1, k2));
        }
        if k2 == 120 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rewrap did not finish in a minute: {k2} of 120 under k2"
        );
    }
    rewrap.wait().await.unwrap();
    assert_eq!(wrong, [], "{counts} counts: (k1, k2) not adding up to 120");
    assert!(part_way >= 5, "only {part_way} of {counts} counts part-way");
    assert_eq!(sealed_by_key(&store).await, [0, 120]);
}

/// Guards the per-connection error: a replica that lacks the key a connection's secrets
/// were sealed with answers 500 `master_key_missing` naming the key for that connection,
/// and keeps serving the others.
async fn a_replica_without_a_key_fails_only_what_that_key_sealed(backend: Backend) {
    let fake = FakeLwa::start().await;
    let db = TestDb::new(backend).await;
    let old_replica = server(&db, &fake, MASTER_KEYS).await.unwrap();
    let old = old_replica.create_connection(&connection_body(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A replica given a new first key before the old replica was given it at all.
    let k2 = generate(&db, "k2").await;
    let new_replica = server(&db, &fake, &format!("{k2},{MASTER_KEYS}"))
        .await
        .unwrap();
    let new = new_replica.create_connection(&connection_body(2)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let body = problem(
        token(&old_replica, &new, "").await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "master_key_missing",
    )
    .await;
    assert_eq!(
        body["detail"],
        "a secret this request needs is encrypted with master key `k2`, which this replica \
         is not configured with; an operator must add it to REGISTRY_MASTER_KEYS"
    );
    token_ok(&old_replica, &old, "").await;
    token_ok(&new_replica, &new, "").await;
    assert_eq!(fake.calls(), 2);
}

/// Guards each rewrap batch being one transaction that leaves every row under one key or
/// the other: the rewrap killed with SIGKILL at a random point, round after round (the
/// reliability suite's crash rounds), and after every kill each connection opens with
/// both keys configured; at the end every secret is under the new key alone, and the
/// service starts and serves without the old one.
async fn a_rewrap_killed_again_and_again_loses_no_secret(backend: Backend) {
    let fake = FakeLwa::start().await;
    let db = TestDb::new(backend).await;
    let app = server(&db, &fake, MASTER_KEYS).await.unwrap();
    let ids = connections(&app, 40).await;
    for id in &ids {
        token_ok(&app, id, "").await; // an access token sealed too: 120 secrets
    }
    app.stop().await;
    let k2 = generate(&db, "k2").await;
    let both = format!("{k2},{MASTER_KEYS}");
    let store = db.store().await;
    let mut kills = 0;
    for round in 0..3 * reliability_scale() {
        let before = store.count_sealed_with("k2").await.unwrap();
        if before == 120 {
            break;
        }
        let mut rewrap = slow_rewrap(&db, &both, 1, 30);
        // Killed once it has made some progress, at a point that varies by round.
        let wait = Duration::from_millis(30 + 37 * u64::from(round % 5));
        for _ in 0..200 {
            if store.count_sealed_with("k2").await.unwrap() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(wait).await;
        rewrap.start_kill().unwrap();
        let status = rewrap.wait().await.unwrap();
        kills += usize::from(!status.success());
        let [k1, k2_count] = sealed_by_key(&store).await;
        assert_eq!(
            k1 + k2_count,
            120,
            "round {round}: every secret under one key"
        );
        let app = server(&db, &fake, &both).await.unwrap();
        for id in &ids {
            token_ok(&app, id, "").await;
        }
        app.stop().await;
    }
    let finished: Run = cli_with_keys(&db, &both, &["keys", "rewrap"]).await;
    finished.assert_succeeded("the last rewrap");
    assert_eq!(store.count_sealed_with("k1").await.unwrap(), 0);
    assert_eq!(store.count_sealed_with("k2").await.unwrap(), 120);
    let app = server(&db, &fake, &k2).await.unwrap();
    for id in &ids {
        assert_eq!(authorize(&app, id).await.status(), StatusCode::OK);
    }
    assert_eq!(
        fake.calls(),
        80,
        "each connection exchanged again with the new key alone"
    );
    report(
        &format!("crashes: master-key rewrap ({backend:?})"),
        &format!("{kills} rewraps of 120 secrets killed with SIGKILL part-way, one after another"),
        "after every kill each secret under one key and every connection opening; the \
         last run finishing the rest; served with the new key alone",
    );
}
