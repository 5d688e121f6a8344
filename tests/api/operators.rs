//! The binary as an operator runs it, as a child process.
//!
//! - `migrate` and `api-keys create | list | revoke`, on Postgres and SQLite: what they
//!   print (a script reads the key from stdout, the list line by line), that a server
//!   over the same database accepts the key with exactly its scopes, and refuses it
//!   within the 2 s reload once it is revoked; bad input is one line on stderr and
//!   changes nothing.
//! - `/metrics` counts exactly what happened: token requests by where they were served
//!   from, LWA calls by outcome, token failures by code, API-key lookups.
//!
//! Why processes: the subcommands are what `main` and `commands.rs` do with the process's
//! stdout, stderr and exit status, which no in-process test sees; and the metrics
//! recorder is process-global, so in-process servers of tests running in parallel would
//! add to each other's counts. A server of its own in a child process counts only this
//! test's requests.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::fake_amazon::{FakeLwa, LwaMode};
use crate::helpers::{
    ADMIN_KEY, Backend, MASTER_KEYS, TestApp, TestDb, connection_body, not_found, problem,
    refresh_token,
};

crate::both_backends!(
    api_keys_made_by_the_cli_work_on_a_server_until_revoked,
    api_keys_subcommands_refuse_bad_input_in_one_line_and_change_nothing,
);

crate::single!(
    metrics_count_exactly_the_requests_a_server_process_served,
    guessing_api_keys_costs_a_bounded_number_of_queries,
);

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_connection-registry");

/// Bounds every wait on a child process: running a subcommand, starting, stopping.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

/// What one subcommand did.
pub(crate) struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }

    /// Stderr without sqlx's warnings of statements over a second: on a loaded machine a
    /// migration's index build can take that long, and saying so is the operator's to
    /// read (it made `migrate`'s stderr non-empty in a run beside two CPU hogs). Anything
    /// else, a Postgres notice above all, is kept.
    fn stderr_but_slow_statements(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|line| !line.contains("slow statement: execution time exceeded"))
            .collect()
    }

    #[track_caller]
    pub fn assert_succeeded(&self, what: &str) {
        assert_eq!(self.code, Some(0), "{what} must exit 0: {self}");
    }

    /// Exit status 1 and exactly one line on stderr, which is returned.
    #[track_caller]
    pub fn assert_failed_in_one_line(&self, what: &str) -> &str {
        assert_eq!(self.code, Some(1), "{what} must exit 1: {self}");
        match self.stderr_lines()[..] {
            [line] => line,
            _ => panic!("{what} must print exactly one line on stderr: {self}"),
        }
    }

    /// `api-keys create`: the key, alone on stdout (registered as a secret for the log
    /// scan), and the id stderr names.
    #[track_caller]
    fn created_key(&self) -> (String, String) {
        self.assert_succeeded("api-keys create");
        let key = match self.stdout_lines()[..] {
            [key] => crate::logs::secret(key),
            _ => panic!("api-keys create prints exactly one line, the key, on stdout: {self}"),
        };
        let id = match self.stderr_lines()[..] {
            [line] => line
                .strip_prefix("created API key ")
                .and_then(|rest| rest.strip_suffix(" (shown only this once):"))
                .unwrap_or_else(|| panic!("stderr names the id: {self}"))
                .to_owned(),
            _ => panic!("api-keys create prints one line on stderr: {self}"),
        };
        (key, id)
    }

    /// `api-keys list`: every stdout line split into its tab-separated fields.
    #[track_caller]
    fn listed_keys(&self) -> Vec<Vec<&str>> {
        self.assert_succeeded("api-keys list");
        assert_eq!(
            self.stderr_but_slow_statements(),
            Vec::<&str>::new(),
            "api-keys list writes nothing on stderr"
        );
        self.stdout_lines()
            .into_iter()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                assert_eq!(
                    fields.len(),
                    5,
                    "a key per line: id, prefix, scopes, created at, name; got {line:?} in {self}"
                );
                fields
            })
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `connection-registry <args>` over `db` with nothing in its environment but the
/// database URL and the master keys, as an operator would on a replica's host.
pub(crate) async fn cli(db: &TestDb, args: &[&str]) -> Run {
    cli_with_keys(db, MASTER_KEYS, args).await
}

/// `cli` with these master keys.
pub(crate) async fn cli_with_keys(db: &TestDb, master_keys: &str, args: &[&str]) -> Run {
    // Should the binary ignore DATABASE_URL, its embedded default lands here, not in the
    // repository.
    let cwd = tempfile::tempdir().expect("temp dir");
    let output = tokio::time::timeout(
        PROCESS_TIMEOUT,
        Command::new(BINARY)
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("REGISTRY_MASTER_KEYS", master_keys)
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`connection-registry {}` exits within 20 s", args.join(" ")))
    .expect("the binary runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

async fn api_keys_made_by_the_cli_work_on_a_server_until_revoked(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    assert!(
        store.active_api_keys().await.is_err(),
        "a fresh database has no schema yet"
    );

    let migrate = cli(&db, &["migrate"]).await;
    migrate.assert_succeeded("migrate");
    assert_eq!(migrate.stdout, "migrations applied\n", "{migrate}");
    assert_eq!(
        migrate.stderr_but_slow_statements(),
        Vec::<&str>::new(),
        "{migrate}"
    );
    assert_eq!(
        store
            .active_api_keys()
            .await
            .expect("the schema exists")
            .len(),
        0
    );

    // Create: the key alone on stdout (`KEY=$(connection-registry api-keys create …)`),
    // its id on stderr.
    let started = Utc::now();
    let create = cli(
        &db,
        &[
            "api-keys",
            "create",
            "--name",
            "sync-workers",
            "--scope",
            "tokens:read",
            "--scope",
            "connections:read",
        ],
    )
    .await;
    let finished = Utc::now();
    let (key, id) = create.created_key();
    assert!(
        key.starts_with("crk_") && key.len() == 47,
        "`crk_` and 32 bytes in base64url: {key:?}"
    );
    uuid::Uuid::try_parse(&id).expect("the id is a UUID");
    assert!(!create.stderr.contains(&key), "the key only on stdout");

    // List: one line per key, never the key itself.
    let list = cli(&db, &["api-keys", "list"]).await;
    let listed = list.listed_keys();
    let prefix = format!("{}…", &key[..8]);
    let [fields] = &listed[..] else {
        panic!("one key, one line: {list}");
    };
    let [listed_id, listed_prefix, scopes, created_at, name] = fields[..] else {
        unreachable!("listed_keys checks the fields");
    };
    assert_eq!(
        [listed_id, listed_prefix, scopes, name],
        [
            id.as_str(),
            prefix.as_str(),
            "tokens:read,connections:read",
            "sync-workers"
        ]
    );
    let created_at: DateTime<Utc> = DateTime::parse_from_rfc3339(created_at)
        .expect("created at is RFC 3339")
        .into();
    assert!(
        started - TimeDelta::milliseconds(1) <= created_at && created_at <= finished,
        "created at {created_at}, while `create` ran from {started} to {finished}"
    );
    assert!(!list.stdout.contains(&key), "list never shows the key");

    // A server over the same database accepts the key, for exactly its scopes.
    let app = TestApp::start(db.clone(), Some(MASTER_KEYS))
        .await
        .expect("a server starts over the migrated database");
    let response = app.get("/connections", &key).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.expect("JSON body");
    assert_eq!(page["items"], json!([]));
    let unknown = uuid::Uuid::now_v7();
    not_found(
        app.get(&format!("/connections/{unknown}/token"), &key)
            .await,
    )
    .await;
    let refused = problem(
        app.post(
            "/api-keys",
            &key,
            &json!({"name": "escalation", "scopes": ["admin"]}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_eq!(refused["detail"], "this API key lacks the `admin` scope");
    // The API describes the key as the CLI listed it.
    let keys = app.get_json("/api-keys").await;
    let described = keys["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["id"] == id.as_str())
        .unwrap_or_else(|| panic!("the API lists the key: {keys}"));
    assert_eq!(described["name"], "sync-workers");
    assert_eq!(described["prefix"], &key[..8]);
    assert_eq!(
        described["scopes"],
        json!(["tokens:read", "connections:read"])
    );
    let described_at: DateTime<Utc> = described["created_at"]
        .as_str()
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .expect("created_at")
        .into();
    assert_eq!(described_at, created_at);

    // The server added its bootstrap admin key; ours is listed as before.
    let list = cli(&db, &["api-keys", "list"]).await;
    let mut listed = list.listed_keys();
    listed.sort_by_key(|fields| fields[4]);
    assert_eq!(listed.len(), 2, "{list}");
    assert_eq!(&listed[0][2..], ["admin", listed[0][3], "bootstrap admin"]);
    assert_eq!(
        listed[1],
        [
            id.as_str(),
            prefix.as_str(),
            "tokens:read,connections:read",
            listed[1][3],
            "sync-workers"
        ]
    );
    assert!(!list.stdout.contains(&key) && !list.stdout.contains(ADMIN_KEY));

    // Revoke while the server runs: gone from the list at once, refused within the
    // server's 2 s reload.
    let revoke = cli(&db, &["api-keys", "revoke", &id]).await;
    let revoked_at = Instant::now();
    revoke.assert_succeeded("api-keys revoke");
    assert_eq!(revoke.stdout, format!("revoked {id}\n"), "{revoke}");
    assert_eq!(
        revoke.stderr_but_slow_statements(),
        Vec::<&str>::new(),
        "{revoke}"
    );
    let list = cli(&db, &["api-keys", "list"]).await;
    let listed = list.listed_keys();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0][4], "bootstrap admin");
    assert!(!list.stdout.contains(&id), "a revoked key is not listed");
    loop {
        let response = app.get("/connections", &key).await;
        if response.status() == StatusCode::UNAUTHORIZED {
            problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the server still accepts the revoked key 5 s after `api-keys revoke`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.get("/connections", ADMIN_KEY).await.status(),
        StatusCode::OK,
        "other keys keep working"
    );

    // Revoked is final: a second revoke finds nothing to revoke.
    let again = cli(&db, &["api-keys", "revoke", &id]).await;
    assert_eq!(
        again.assert_failed_in_one_line("revoking a revoked key"),
        format!("connection-registry: cannot revoke {id}: API key not found")
    );
}

async fn api_keys_subcommands_refuse_bad_input_in_one_line_and_change_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    cli(&db, &["migrate"]).await.assert_succeeded("migrate");
    let create = cli(
        &db,
        &[
            "api-keys",
            "create",
            "--name",
            "frontend",
            "--scope",
            "connections:write",
        ],
    )
    .await;
    let (key, _) = create.created_key();
    let before = cli(&db, &["api-keys", "list"]).await;
    assert_eq!(before.listed_keys().len(), 1, "{before}");

    let bad_scope = cli(
        &db,
        &["api-keys", "create", "--name", "x", "--scope", "root"],
    )
    .await;
    let line = bad_scope.assert_failed_in_one_line("an unknown scope");
    assert_eq!(
        line,
        "connection-registry: --scope `root` must be one of `admin`, `connections:write`, \
         `connections:read`, `tokens:read`"
    );
    assert!(!bad_scope.stdout.contains("crk_"), "no key: {bad_scope}");

    let bad_name = cli(
        &db,
        &["api-keys", "create", "--name", " ", "--scope", "admin"],
    )
    .await;
    let line = bad_name.assert_failed_in_one_line("a blank name");
    assert!(line.starts_with("connection-registry: --name "), "{line}");
    assert!(!bad_name.stdout.contains("crk_"), "no key: {bad_name}");

    let not_an_id = cli(&db, &["api-keys", "revoke", "not-an-id"]).await;
    assert_eq!(
        not_an_id.assert_failed_in_one_line("revoking a malformed id"),
        "connection-registry: id must be a UUID"
    );

    let unknown = uuid::Uuid::now_v7();
    let revoke_unknown = cli(&db, &["api-keys", "revoke", &unknown.to_string()]).await;
    assert_eq!(
        revoke_unknown.assert_failed_in_one_line("revoking an unknown id"),
        format!("connection-registry: cannot revoke {unknown}: API key not found")
    );

    let after = cli(&db, &["api-keys", "list"]).await;
    assert_eq!(after.stdout, before.stdout, "bad input changes no key");
    assert!(!after.stdout.contains(&key));
}

/// The binary running `serve` as a child process, and the address it listens on.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Everything it wrote, stdout and stderr, line by line. Both pipes are drained all
    /// along, so the server never blocks on a full one.
    output: Arc<Mutex<Vec<String>>>,
    drains: Vec<JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `connection-registry serve` in `dir` with only `env` (plus a random port
    /// and JSON logs), and waits until it logs the address it listens on.
    pub(crate) async fn spawn(env: &[(&str, &str)], dir: &Path) -> Self {
        let mut child = Command::new(BINARY)
            .arg("serve")
            .env_clear()
            .envs(env.iter().copied())
            .env("REGISTRY_LISTEN", "127.0.0.1:0")
            .env("REGISTRY_LOG_FORMAT", "json")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = oneshot::channel();
        let drains = vec![
            drain(
                child.stdout.take().expect("stdout"),
                &output,
                Some(address_tx),
            ),
            drain(child.stderr.take().expect("stderr"), &output, None),
        ];
        let addr = match tokio::time::timeout(PROCESS_TIMEOUT, address_rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => panic!(
                "the server exited before listening:\n{}",
                output.lock().unwrap().join("\n")
            ),
            Err(_) => panic!(
                "the server did not log its address within 20 s:\n{}",
                output.lock().unwrap().join("\n")
            ),
        };
        Self {
            child,
            addr,
            output,
            drains,
        }
    }

    /// `serve` over `db` with the suite's master key and admin key, and `fake` as LWA.
    pub(crate) async fn over(db: &TestDb, fake: &FakeLwa, dir: &Path) -> Self {
        let env = [
            ("DATABASE_URL", db.url.as_str()),
            ("REGISTRY_MASTER_KEYS", MASTER_KEYS),
            ("REGISTRY_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY),
            ("REGISTRY_LWA_TOKEN_URL", fake.token_url.as_str()),
        ];
        Self::spawn(&env, dir).await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `kill -9`: no shutdown, nothing flushed; returns everything it wrote.
    pub(crate) async fn kill9(mut self) -> Vec<String> {
        self.child.start_kill().expect("SIGKILL sent");
        tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait())
            .await
            .expect("the server dies at once")
            .expect("wait on the server");
        for drain in self.drains.drain(..) {
            let _ = tokio::time::timeout(PROCESS_TIMEOUT, drain).await;
        }
        self.output.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit; returns how it exited and
    /// everything it wrote.
    async fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let pid = self.child.id().expect("still running").to_string();
        let kill = tokio::time::timeout(
            PROCESS_TIMEOUT,
            Command::new("kill").args(["-TERM", &pid]).status(),
        )
        .await
        .expect("kill returns")
        .expect("kill runs");
        assert!(kill.success(), "kill -TERM {pid}: {kill}");
        let status = tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait())
            .await
            .expect("the server exits within 20 s of SIGTERM")
            .expect("wait on the server");
        // The pipes close with the process: read them to the end.
        for drain in self.drains.drain(..) {
            tokio::time::timeout(PROCESS_TIMEOUT, drain)
                .await
                .expect("pipes close once the server exits")
                .expect("drain task");
        }
        let output = self.output.lock().unwrap().clone();
        (status, output)
    }
}

/// Collects `pipe`'s lines into `output`; the first JSON log line with `fields.address`
/// goes to `address` too.
fn drain(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    output: &Arc<Mutex<Vec<String>>>,
    mut address: Option<oneshot::Sender<SocketAddr>>,
) -> JoinHandle<()> {
    let output = output.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let listening = address.is_some().then(|| {
                serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|log| log["fields"]["address"].as_str()?.parse().ok())
            });
            if let Some(addr) = listening.flatten() {
                let _ = address.take().expect("not sent yet").send(addr);
            }
            output.lock().unwrap().push(line);
        }
    })
}

/// `GET /metrics` as Prometheus text, parsed into `series -> value`.
async fn scrape(server: &ServerProcess, key: &str) -> HashMap<String, f64> {
    let response = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .expect("scrape sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = response.text().await.expect("metrics text");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("`series value`: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a number: {line:?}"));
            (series.to_owned(), value)
        })
        .collect()
}

/// The counters (and the LWA histogram's count) this test can account for exactly.
fn is_counted(series: &str) -> bool {
    series.starts_with("registry_token_requests_total")
        || series.starts_with("registry_token_failures_total")
        || series.starts_with("registry_lwa_requests_total")
        || series == "registry_lwa_request_seconds_count"
        || (series.starts_with("registry_http_requests_total") && series.contains("/token"))
}

async fn metrics_count_exactly_the_requests_a_server_process_served() {
    let fake = FakeLwa::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = format!("sqlite://{}/registry.db", dir.path().display());
    let server = ServerProcess::spawn(
        &[
            ("DATABASE_URL", &database_url),
            ("REGISTRY_MASTER_KEYS", MASTER_KEYS),
            ("REGISTRY_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY),
            ("REGISTRY_LWA_TOKEN_URL", &fake.token_url),
        ],
        dir.path(),
    )
    .await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(server.url(path))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
    };
    // A sync worker's key: the token endpoint, and `/metrics` like any key.
    let response = post(
        "/api-keys",
        json!({"name": "workers", "scopes": ["tokens:read"]}),
    )
    .await
    .expect("request sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("JSON body");
    let worker = crate::logs::secret(created["api_key"].as_str().expect("api_key"));
    let token = |id: String| {
        http.get(server.url(&format!("/connections/{id}/token")))
            .bearer_auth(&worker)
            .send()
    };

    let before = scrape(&server, &worker).await;

    // One connection: a fetch (one LWA call), then five answers from memory.
    let response = post("/connections", connection_body(1))
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    let first: Value = response.json().await.expect("JSON body");
    let first_id = first["id"].as_str().expect("id").to_owned();
    let response = token(first_id.clone()).await.expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-status"],
        "connection-registry; fwd=miss"
    );
    let fetched: Value = response.json().await.expect("JSON body");
    let access_token = fetched["access_token"].as_str().expect("access_token");
    assert_eq!(
        fake.issued_for(access_token),
        Some(refresh_token(1)),
        "issued by the fake for this connection"
    );
    assert_eq!(fake.calls(), 1);
    for _ in 0..5 {
        let response = token(first_id.clone()).await.expect("request sent");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["cache-status"],
            "connection-registry; hit"
        );
        let served: Value = response.json().await.expect("JSON body");
        assert_eq!(served["access_token"], access_token);
    }
    assert_eq!(fake.calls(), 1, "answers from memory call no one");

    // Another connection, whose refresh token LWA refuses.
    fake.set_mode(LwaMode::InvalidGrant);
    let response = post("/connections", connection_body(2))
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    let second: Value = response.json().await.expect("JSON body");
    let second_id = second["id"].as_str().expect("id").to_owned();
    let refused = problem(
        token(second_id).await.expect("request sent"),
        StatusCode::CONFLICT,
        "connection_not_authorized",
    )
    .await;
    assert!(
        refused["detail"]
            .as_str()
            .expect("detail")
            .contains("`refresh_token_invalid`"),
        "{refused}"
    );
    assert_eq!(fake.calls(), 2);
    assert_eq!(
        fake.calls_for(&refresh_token(2)),
        1,
        "a refusal is not retried"
    );

    let after = scrape(&server, &worker).await;
    let changed: BTreeMap<&str, f64> = after
        .iter()
        .filter(|(series, _)| is_counted(series))
        .map(|(series, value)| {
            let delta = value - before.get(series).copied().unwrap_or(0.0);
            (series.as_str(), delta)
        })
        .filter(|(_, delta)| *delta != 0.0)
        .collect();
    let expected = BTreeMap::from([
        (r#"registry_token_requests_total{served="fetched"}"#, 1.0),
        (r#"registry_token_requests_total{served="memory"}"#, 5.0),
        (r#"registry_lwa_requests_total{outcome="ok"}"#, 1.0),
        (
            r#"registry_lwa_requests_total{outcome="invalid_grant"}"#,
            1.0,
        ),
        (
            r#"registry_token_failures_total{code="invalid_grant"}"#,
            1.0,
        ),
        ("registry_lwa_request_seconds_count", 2.0),
        (
            r#"registry_http_requests_total{method="GET",route="/connections/{id}/token",status="200"}"#,
            6.0,
        ),
        (
            r#"registry_http_requests_total{method="GET",route="/connections/{id}/token",status="409"}"#,
            1.0,
        ),
    ]);
    assert_eq!(
        changed, expected,
        "what changed between the scrapes, and by how much"
    );
    let lwa_seconds = after["registry_lwa_request_seconds_sum"]
        - before
            .get("registry_lwa_request_seconds_sum")
            .copied()
            .unwrap_or(0.0);
    assert!(
        lwa_seconds > 0.0 && lwa_seconds < 10.0,
        "two loopback LWA calls took {lwa_seconds} s"
    );

    // The gauges read from the database, every 15 s: one connection of each status,
    // client secrets estimated to expire in 180 days.
    let mut gauges = HashMap::new();
    for _ in 0..40 {
        gauges = scrape(&server, &worker).await;
        if gauges.get(r#"registry_connections{status="refresh_token_invalid"}"#) == Some(&1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(gauges[r#"registry_connections{status="active"}"#], 1.0);
    assert_eq!(
        gauges[r#"registry_connections{status="refresh_token_invalid"}"#],
        1.0
    );
    let days = gauges["registry_client_secret_soonest_expiry_seconds"] / 86_400.0;
    assert!((179.0..=180.0).contains(&days), "{days} days");
    assert_eq!(gauges["registry_webhook_oldest_pending_seconds"], 0.0);
    assert!(gauges[r#"registry_db_connections{state="idle"}"#] >= 0.0);

    let (status, output) = server.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "a clean exit on SIGTERM: {status}\n{}",
        output.join("\n")
    );
    // The suite's log scan covers its in-process servers only: this one's output is
    // checked here.
    for line in &output {
        for marker in ["crk_", "Atza|", "Atzr|", "Atzr%7C", "amzn1.oa2-cs.v1."] {
            assert!(
                !line.contains(marker),
                "the server process logged a secret ({marker}…): {line}"
            );
        }
    }
}

/// Guards the lookup budget in `ApiKeys::verify`: every distinct unknown key was one
/// database query, so guessing cost the database a query per guess. Counted exactly by
/// `registry_api_key_lookups_total` of a server process of this test's own.
async fn guessing_api_keys_costs_a_bounded_number_of_queries() {
    const GUESSES: usize = 300;
    let budget = f64::from(connection_registry::api_keys::LOOKUPS_PER_SECOND);
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::spawn(
        &[
            ("DATABASE_URL", &db.url),
            ("REGISTRY_MASTER_KEYS", MASTER_KEYS),
            ("REGISTRY_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY),
        ],
        dir.path(),
    )
    .await;
    let lookups = |metrics: &HashMap<String, f64>, result: &str| {
        metrics
            .get(&format!(
                "registry_api_key_lookups_total{{result=\"{result}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    let http = reqwest::Client::new();
    let guess = |n: usize| {
        http.get(server.url("/connections"))
            .bearer_auth(format!("crk_guess-{n:040}"))
            .send()
    };

    let started = Instant::now();
    for chunk in (0..GUESSES).collect::<Vec<_>>().chunks(30) {
        let answers = futures_util::future::join_all(chunk.iter().map(|n| guess(*n))).await;
        for answer in answers {
            assert_eq!(answer.unwrap().status(), StatusCode::UNAUTHORIZED);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = scrape(&server, ADMIN_KEY).await;
    let queried = lookups(&metrics, "unknown") + lookups(&metrics, "found");
    let throttled = lookups(&metrics, "throttled");
    assert_eq!(queried + throttled, GUESSES as f64, "{metrics:?}");
    // A full bucket, then the refill over the time taken.
    let allowed = budget * (1.0 + elapsed.ceil());
    assert!(
        queried <= allowed,
        "{queried} queries for {GUESSES} guesses in {elapsed:.2} s; at most {allowed}"
    );

    // A key made elsewhere (here by the CLI, as another replica would) works within the
    // reload interval even while guesses keep the budget drained.
    let (new_key, _) = cli(
        &db,
        &["api-keys", "create", "--name", "new", "--scope", "admin"],
    )
    .await
    .created_key();
    let created = Instant::now();
    let mut n = GUESSES;
    let waited = loop {
        for _ in 0..30 {
            n += 1;
            guess(n).await.unwrap();
        }
        let answer = http
            .get(server.url("/connections"))
            .bearer_auth(&new_key)
            .send()
            .await
            .unwrap();
        if answer.status() == StatusCode::OK {
            break created.elapsed();
        }
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
        assert!(
            created.elapsed() < connection_registry::api_keys::RELOAD_INTERVAL * 2,
            "the new key still fails after {:?}",
            created.elapsed()
        );
    };
    assert!(
        waited <= connection_registry::api_keys::RELOAD_INTERVAL + Duration::from_millis(500),
        "{waited:?}"
    );
    let (status, _) = server.terminate().await;
    assert!(status.success());
}
