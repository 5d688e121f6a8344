//! Three replicas (binaries) on one Postgres behind a round-robin client: a cold start of
//! many connections at once, then (once every connection has its token) one replica
//! killed with SIGKILL under load and started again. No request fails but those in flight
//! on the killed replica, and LWA is asked exactly once per connection in all.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    ADMIN_KEY, Backend, TestDb, connection_body, refresh_token, reliability_scale, report,
};
use crate::operators::ServerProcess;

crate::single!(
    a_replica_killed_under_load_fails_only_its_own_requests,
    a_lease_of_a_killed_replica_is_taken_over_at_once,
);

/// The replicas' base URLs, as a load balancer would know them.
type Pool = Arc<RwLock<Vec<String>>>;

#[derive(Default)]
struct Tally {
    served: AtomicUsize,
    /// Refused at connect: the balancer moved the request to the next replica.
    rerouted: AtomicUsize,
    /// Sent to the killed replica and cut with it.
    cut_in_flight: AtomicUsize,
    failed: std::sync::Mutex<Vec<String>>,
}

/// Guards: the cross-replica lease (a cold start by three replicas asking LWA more than
/// once per connection), a restarted replica asking LWA again for tokens another one
/// stored, and a replica's death failing requests to the others.
async fn a_replica_killed_under_load_fails_only_its_own_requests() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_millis(50));
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ServerProcess::over(&db, &fake, dir.path()).await);
    }
    let http = reqwest::Client::new();
    let connections = 150 * reliability_scale();
    let mut paths = Vec::new();
    for n in 0..connections {
        paths.push(token_path_of_new_connection(&http, &replicas[(n % 3) as usize], n).await);
    }
    let pool: Pool = Arc::new(RwLock::new(replicas.iter().map(|r| r.url("")).collect()));
    let killed_url = replicas[1].url("");
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let turn = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..32 {
        let (pool, tally, stop, turn) = (pool.clone(), tally.clone(), stop.clone(), turn.clone());
        let (paths, killed_url) = (paths.clone(), killed_url.clone());
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = worker * 7;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                // Every worker walks all connections, so each is first asked for by many
                // workers through all three replicas at once.
                let path = &paths[i % paths.len()];
                round_robin(&http, &pool, &turn, path, &killed_url, &tally).await;
            }
        }));
    }
    let hold = Duration::from_millis(1500 * u64::from(reliability_scale()));
    tokio::time::sleep(hold).await;
    // The kill lands after the cold start: a replica killed between LWA's answer and its
    // write takes that token with it, and another replica asks LWA again (a second call
    // for that connection; `a_lease_of_a_killed_replica_is_taken_over_at_once`).
    // Finished means stored, not asked for: every row holds its token and no lease.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let (settled,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM connections \
             WHERE access_token IS NOT NULL AND token_lease_until IS NULL",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if settled == i64::from(connections) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cold start did not finish: {settled} of {connections} stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed = replicas.remove(1);
    let output = killed.kill9().await;
    for line in &output {
        assert!(
            crate::logs::find_secret(line).is_none(),
            "a secret in a replica's log: {line}"
        );
    }
    tokio::time::sleep(hold).await;
    // Started again (on another port); the balancer learns of it.
    let restarted = ServerProcess::over(&db, &fake, dir.path()).await;
    {
        let mut pool = pool.write().unwrap();
        let at = pool.iter().position(|url| *url == killed_url).unwrap();
        pool[at] = restarted.url("");
    }
    tokio::time::sleep(hold).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("a worker's checks held");
    }

    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "requests failed on live replicas: {failed:?}"
    );
    // At most one request per worker can have been in flight on the killed replica.
    let cut = tally.cut_in_flight.load(Ordering::SeqCst);
    assert!(cut <= 32, "{cut} requests cut");
    let served = tally.served.load(Ordering::SeqCst);
    assert!(
        served > paths.len() * 3,
        "the load never got going: {served}"
    );
    for n in 0..connections {
        assert_eq!(
            fake.calls_for(&refresh_token(n)),
            1,
            "connection {n}: LWA calls in all"
        );
    }
    report(
        "three replicas, one killed -9 (Postgres)",
        &format!(
            "{connections} connections cold-started by 32 workers through 3 replicas, then \
             one replica killed and restarted under load: {served} tokens served, {} \
             requests rerouted after a refused connect, {cut} cut in flight on the killed \
             replica",
            tally.rerouted.load(Ordering::SeqCst)
        ),
        "0 failed requests on live replicas; exactly 1 LWA call per connection in all, the \
         restarted replica included",
    );
    drop(restarted);
    drop(replicas);
}

/// Guards the lease's holder session: a replica killed while LWA answers it leaves the
/// connection's lease behind; without the check that its session is gone, the other
/// replicas waited for the lease to run out (about 45 s with the default LWA time
/// limits), and every worker of that connection got nothing meanwhile.
async fn a_lease_of_a_killed_replica_is_taken_over_at_once() {
    let fake = FakeLwa::start().await;
    fake.set_delay(Duration::from_secs(3));
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let doomed = ServerProcess::over(&db, &fake, dir.path()).await;
    let survivor = ServerProcess::over(&db, &fake, dir.path()).await;
    let http = reqwest::Client::new();
    let path = token_path_of_new_connection(&http, &doomed, 1).await;
    let in_flight = tokio::spawn(http.get(doomed.url(&path)).bearer_auth(ADMIN_KEY).send());
    fake.wait_for_calls(1).await;
    doomed.kill9().await;
    assert!(in_flight.await.unwrap().is_err(), "cut with its replica");

    // Well inside the lease (over 40 s): the survivor takes it over and asks LWA itself.
    let response = http
        .get(survivor.url(&path))
        .bearer_auth(ADMIN_KEY)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the survivor answers before the dead replica's lease runs out");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        fake.issued_for(body["access_token"].as_str().unwrap()),
        Some(refresh_token(1))
    );
    // The dead replica's exchange, then the survivor's.
    assert_eq!(fake.calls(), 2);
}

/// Creates connection `n` through `server` and returns its token path.
async fn token_path_of_new_connection(
    http: &reqwest::Client,
    server: &ServerProcess,
    n: u32,
) -> String {
    let created: Value = http
        .post(server.url("/connections"))
        .bearer_auth(ADMIN_KEY)
        .json(&connection_body(n))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    format!("/connections/{}/token", created["id"].as_str().unwrap())
}

/// One token request through the balancer: the next replica in turn, and the one after it
/// when that refuses the connection (as a balancer's health check would). A request cut
/// after it reached the killed replica counts as cut; any other failure as failed.
async fn round_robin(
    http: &reqwest::Client,
    pool: &Pool,
    turn: &AtomicUsize,
    path: &str,
    killed_url: &str,
    tally: &Tally,
) {
    let urls = pool.read().unwrap().clone();
    let first = turn.fetch_add(1, Ordering::SeqCst);
    for step in 0..urls.len() {
        let base = &urls[(first + step) % urls.len()];
        let sent = http
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_KEY)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) if err.is_connect() => {
                tally.rerouted.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Err(err) if base == killed_url => {
                let _ = err;
                tally.cut_in_flight.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Err(err) => {
                tally
                    .failed
                    .lock()
                    .unwrap()
                    .push(format!("{base}: {err:?}"));
                return;
            }
        };
        let status = response.status();
        match response.bytes().await {
            Ok(_) if status == StatusCode::OK => {
                tally.served.fetch_add(1, Ordering::SeqCst);
            }
            Ok(body) => {
                let body = String::from_utf8_lossy(&body).into_owned();
                tally
                    .failed
                    .lock()
                    .unwrap()
                    .push(format!("{base}: {status} {body}"));
            }
            Err(_) if base == killed_url => {
                tally.cut_in_flight.fetch_add(1, Ordering::SeqCst);
            }
            Err(err) => tally
                .failed
                .lock()
                .unwrap()
                .push(format!("{base}: {err:?}")),
        }
        return;
    }
    tally
        .failed
        .lock()
        .unwrap()
        .push("no replica took the connection".to_owned());
}
