//! Faults from the database under load: a Postgres server of the test's own
//! (`private_pg.rs`), reached through a proxy (`proxy.rs`), is made unreachable, slowed,
//! has its sessions killed (`pg_terminate_backend`), is crashed and restarted, and has the
//! app's pool exhausted, while workers ask for cached tokens and writers create
//! connections. Cached tokens keep flowing, writes fail with 503 and leave nothing half
//! done, `/readyz` says what is true, and the service recovers by itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    ADMIN_KEY, MASTER_KEYS, TestApp, TestDb, connection_body, reliability_scale, report, settings,
};
use crate::private_pg::PrivatePostgres;
use crate::proxy::TcpProxy;

crate::single!(database_faults_under_load_cost_no_cached_token_and_no_partial_write);

/// What the writers were told.
#[derive(Default)]
struct Writes {
    /// name → id, for every 201.
    acknowledged: HashMap<String, String>,
    /// Names whose create was answered 503, by code.
    refused: HashMap<String, String>,
}

/// Guards: cached tokens depending on the database (an outage emptying the cache, or the
/// API key check needing a query), a write half-done by a cut or a crash (a connection
/// without its event, or one that does not decrypt), a 500 for a database failure, a
/// `/readyz` that says ready while the database is gone (or stays unready after it is
/// back), and recovery needing a restart.
async fn database_faults_under_load_cost_no_cached_token_and_no_partial_write() {
    let pg = PrivatePostgres::start().await;
    let fake = FakeLwa::start().await;
    let db = TestDb::on_server(pg.admin_url()).await;
    let proxy = TcpProxy::start(pg.addr()).await;
    let mut settings = settings(&db, Some(MASTER_KEYS));
    settings.database_url = Some(db.url_via(proxy.addr));
    settings.lwa_token_url = fake.token_url.clone();
    let app = Arc::new(
        TestApp::start_tuned(db.clone(), settings, |_| {})
            .await
            .expect("app starts"),
    );
    let worker_key = app.api_key(&["tokens:read"]).await;
    let mut cached = Vec::new();
    for n in 0..4 {
        let id = app.create_connection(&connection_body(n)).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/connections/{id}/token");
        assert_eq!(app.get(&path, &worker_key).await.status(), StatusCode::OK);
        cached.push(path);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(Mutex::new(String::from("healthy")));
    let token_failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let tokens_served = Arc::new(AtomicU32::new(0));
    let writes: Arc<Mutex<Writes>> = Arc::default();
    let next_name = Arc::new(AtomicU32::new(100));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (app, key, path) = (app.clone(), worker_key.clone(), cached[worker % 4].clone());
        let (stop, failures, served, phase) = (
            stop.clone(),
            token_failures.clone(),
            tokens_served.clone(),
            phase.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let response = app.get(&path, &key).await;
                if response.status() == StatusCode::OK {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    let status = response.status();
                    let body = response.text().await.unwrap();
                    let now = phase.lock().unwrap().clone();
                    let failure = format!("{now}: {status} {body}");
                    failures.lock().unwrap().push(failure);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for _ in 0..4 {
        let (app, stop, writes, next) =
            (app.clone(), stop.clone(), writes.clone(), next_name.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let body = connection_body(n);
                let name = body["name"].as_str().unwrap().to_owned();
                let response = app.post("/connections", ADMIN_KEY, &body).await;
                let status = response.status();
                let answer: Value = response.json().await.expect("a JSON body");
                record_create(&writes, name, status, &answer);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    let readiness: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    tasks.push(tokio::spawn({
        let (app, stop, readiness, phase) =
            (app.clone(), stop.clone(), readiness.clone(), phase.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let status = app
                    .client
                    .get(app.url("/readyz"))
                    .send()
                    .await
                    .map_or(0, |response| response.status().as_u16());
                let now = phase.lock().unwrap().clone();
                readiness.lock().unwrap().push((now, status));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }));

    let hold = Duration::from_millis(1500 * u64::from(reliability_scale()));
    let set_phase = |name: &str| *phase.lock().unwrap() = name.to_owned();
    tokio::time::sleep(hold).await;

    // Unreachable: every link cut, new ones refused.
    proxy.cut();
    set_phase("unreachable");
    tokio::time::sleep(hold).await;
    set_phase("settling");
    proxy.restore();
    until_ready(&app).await;

    // Slow: every message to the database waits 300 ms.
    set_phase("slow");
    proxy.slow_down(Duration::from_millis(300));
    tokio::time::sleep(hold).await;
    proxy.slow_down(Duration::ZERO);
    set_phase("settling");
    until_ready(&app).await;

    // Sessions killed by an administrator.
    set_phase("terminated");
    let killed = terminate_backends(&pg, &db.name).await;
    tokio::time::sleep(hold).await;
    set_phase("settling");
    until_ready(&app).await;

    // Pool exhausted: slow queries, and more writers than connections.
    set_phase("exhausted");
    proxy.slow_down(Duration::from_millis(1000));
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let (app, writes, next) = (app.clone(), writes.clone(), next_name.clone());
            tokio::spawn(async move {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let body = connection_body(n);
                let response = app.post("/connections", ADMIN_KEY, &body).await;
                let status = response.status();
                let answer: Value = response.json().await.unwrap();
                let name = body["name"].as_str().unwrap().to_owned();
                record_create(&writes, name, status, &answer);
            })
        })
        .collect();
    for task in burst {
        task.await.expect("burst create checks held");
    }
    proxy.slow_down(Duration::ZERO);
    set_phase("settling");
    until_ready(&app).await;

    // Crashed and restarted.
    // The phase names the outage only once pg_ctl has returned, and stops before the
    // server is started again: pg_ctl itself takes a while on a loaded machine, and
    // probes answered meanwhile are neither outage nor recovery.
    pg.crash().await;
    set_phase("crashed");
    tokio::time::sleep(hold).await;
    set_phase("settling");
    pg.start_again().await;
    until_ready(&app).await;
    tokio::time::sleep(hold).await;

    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("a load task's checks held");
    }

    // Cached tokens flowed throughout.
    let failures = token_failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "cached token requests failed: {failures:?}"
    );

    // /readyz: unready while the database was unreachable or down, ready once back.
    let readiness = readiness.lock().unwrap().clone();
    let mut by_phase: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (phase, status) in &readiness {
        let entry = by_phase.entry(phase.clone()).or_default();
        if *status == 200 {
            entry.0 += 1
        } else {
            entry.1 += 1
        }
        assert!(
            matches!(status, 200 | 503),
            "/readyz answered {status} ({phase})"
        );
    }
    for phase in ["unreachable", "crashed"] {
        let (ready, unready) = by_phase[phase];
        assert!(
            unready > 0,
            "/readyz never said unready while {phase}: {by_phase:?}"
        );
        // The first probe may land before the fault does.
        assert!(ready <= 1, "/readyz said ready {ready} times while {phase}");
    }
    assert!(
        by_phase["healthy"].1 == 0,
        "/readyz unready while healthy: {by_phase:?}"
    );
    assert_eq!(readiness.last().unwrap().1, 200);

    // Nothing half-written: every stored connection is one created whole, with its
    // event, and decrypts; every acknowledged one is stored.
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let stored = all_connections(&app).await;
    let events = created_events(&app).await;
    for (name, id) in &writes.acknowledged {
        assert_eq!(
            stored.get(name),
            Some(id),
            "acknowledged create of {name} lost"
        );
    }
    let mut ambiguous = 0;
    for (name, id) in &stored {
        assert_eq!(
            events.get(id),
            Some(&1),
            "{name} stored without exactly one created event"
        );
        if writes.refused.contains_key(name) {
            ambiguous += 1; // committed, but the answer was lost with the link
        }
        let response = app
            .get(&format!("/connections/{id}/token"), ADMIN_KEY)
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{name} does not decrypt");
    }
    let new_writes = app
        .post("/connections", ADMIN_KEY, &connection_body(99_999))
        .await;
    assert_eq!(new_writes.status(), StatusCode::CREATED);

    report(
        "faults from the database (Postgres)",
        &format!(
            "unreachable, slowed 300 ms, {killed} sessions terminated, pool exhausted (40 \
             creates at 1 s a query), crash and restart; {} cached-token requests, {} \
             creates acknowledged, {} refused with 503 ({ambiguous} of them committed), \
             {} /readyz probes",
            tokens_served.load(Ordering::SeqCst),
            writes.acknowledged.len(),
            writes.refused.len(),
            readiness.len()
        ),
        "0 failed cached-token requests, no 500, no acknowledged write lost, every stored \
         connection whole with its event, /readyz unready in every outage and ready after, \
         recovered without a restart",
    );
}

/// Files a create's answer: 201, or 503 saying the database is unavailable or busy;
/// anything else (a 500 above all) fails the test.
fn record_create(writes: &Mutex<Writes>, name: String, status: StatusCode, answer: &Value) {
    let mut writes = writes.lock().unwrap();
    match status {
        StatusCode::CREATED => {
            let id = answer["id"].as_str().unwrap().to_owned();
            writes.acknowledged.insert(name, id);
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            let code = answer["code"].as_str().unwrap().to_owned();
            assert!(
                ["database_unavailable", "database_busy"].contains(&code.as_str()),
                "{answer}"
            );
            writes.refused.insert(name, code);
        }
        other => panic!("a create during a database fault gave {other}: {answer}"),
    }
}

/// Waits until `/readyz` says ready (at most 30 s).
async fn until_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status() == StatusCode::OK);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "the service did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills every session of database `name`, as an administrator would.
async fn terminate_backends(pg: &PrivatePostgres, name: &str) -> i64 {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&pg.admin_url()).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the app had no session to kill");
    killed.len() as i64
}

/// name → id of every stored connection, through the API.
async fn all_connections(app: &TestApp) -> HashMap<String, String> {
    let mut stored = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/connections?limit=100&cursor={cursor}"),
            None => "/connections?limit=100".to_owned(),
        };
        let page = app.get_json(&path).await;
        for item in page["items"].as_array().unwrap() {
            stored.insert(
                item["name"].as_str().unwrap().to_owned(),
                item["id"].as_str().unwrap().to_owned(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return stored,
        }
    }
}

/// connection id → how many `connection.created` events name it.
async fn created_events(app: &TestApp) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => {
                format!("/audit-events?type=connection.created&limit=100&cursor={cursor}")
            }
            None => "/audit-events?type=connection.created&limit=100".to_owned(),
        };
        let page = app.get_json(&path).await;
        for event in page["items"].as_array().unwrap() {
            let id = event["target_id"].as_str().unwrap().to_owned();
            *counts.entry(id).or_default() += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return counts,
        }
    }
}
