//! `spawn_app`: the real server on a random port, over a fresh Postgres database or SQLite
//! file per test, with a typed client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use connection_registry::amazon::lwa::LwaSettings;
use connection_registry::app::Application;
use connection_registry::cli::Settings;
use connection_registry::config::{Config, DatabaseUrl};
use connection_registry::store::Store;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::fake_amazon::FakeLwa;

/// Postgres server the suite creates its databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub const MASTER_KEYS: &str = "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const OTHER_MASTER_KEY: &str = "k1:ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
pub const ADMIN_KEY: &str = "crk_test-bootstrap-admin-key-0123456789";

/// Runs one test body on a runtime of its own whose threads carry the test's name, so
/// every log line its servers write can be told apart; once the runtime (servers
/// included) has stopped, searches those lines for secrets, and prints them when the
/// `TEST_LOG` environment variable is set.
pub fn run(body: impl std::future::Future<Output = ()>) {
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map_or_else(
            || format!("unnamed-{}", uuid::Uuid::new_v4()),
            str::to_owned,
        );
    crate::logs::capture();
    for value in [ADMIN_KEY, MASTER_KEYS, OTHER_MASTER_KEY] {
        crate::logs::secret(value);
        crate::logs::secret(value.split_once(':').map_or(value, |(_, key)| key));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{}{test}", crate::logs::TEST_THREAD_PREFIX))
        .enable_all()
        .build()
        .expect("test runtime");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(body);
    }));
    runtime.shutdown_timeout(Duration::from_secs(10));
    let lines = crate::logs::take(&test);
    if crate::logs::wanted() {
        crate::logs::print(&test, &lines);
    } else if outcome.is_err() {
        eprintln!(
            "(set TEST_LOG=1 to see the {} lines this test's servers logged)",
            lines.len()
        );
    }
    crate::logs::assert_no_secrets(&test, &lines);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database of its own for one test; dropped (Postgres) or deleted (SQLite) after it.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub name: String,
    sqlite_dir: Option<tempfile::TempDir>,
    /// The Postgres server the database is on.
    admin_url: String,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Arc<Self> {
        Self::create(backend, postgres_admin_url()).await
    }

    /// A Postgres database on another server than the suite's (`admin_url`).
    pub async fn on_server(admin_url: String) -> Arc<Self> {
        Self::create(Backend::Postgres, admin_url).await
    }

    async fn create(backend: Backend, admin: String) -> Arc<Self> {
        let name = format!("cr_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Postgres => {
                run_admin_sql(&admin, &format!("CREATE DATABASE {name}")).await;
                let url = replace_database(&admin, &name);
                Arc::new(Self {
                    backend,
                    url,
                    name,
                    sqlite_dir: None,
                    admin_url: admin,
                })
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/registry.db", dir.path().display());
                Arc::new(Self {
                    backend,
                    url,
                    name,
                    sqlite_dir: Some(dir),
                    admin_url: admin,
                })
            }
        }
    }

    /// This database's URL through another address (a proxy in front of Postgres).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let mut url = reqwest::Url::parse(&self.url).expect("URL");
        url.set_ip_host(addr.ip()).expect("IP host");
        url.set_port(Some(addr.port())).expect("port");
        url.to_string()
    }

    pub fn sqlite_dir(&self) -> Option<PathBuf> {
        self.sqlite_dir.as_ref().map(|dir| dir.path().to_path_buf())
    }

    /// Runs `sql` with one timestamp parameter `$1` directly on the database: for what
    /// only time would do (backdating a record).
    pub async fn execute_at(&self, sql: &str, at: chrono::DateTime<chrono::Utc>) {
        use sqlx::Connection;
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql).bind(at).execute(&mut conn).await.unwrap();
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql).bind(at).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// Runs `sql` directly on the database: for what no API would do (a schema drifted).
    pub async fn execute(&self, sql: &str) {
        use sqlx::Connection;
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// A direct handle on the database, for what the API cannot show.
    pub async fn store(&self) -> Store {
        let url = DatabaseUrl::parse(&self.url).expect("a test database URL");
        Store::open(&url).await.expect("open test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.sqlite_dir {
            crate::leaks::sweep_sqlite(dir.path());
        }
        if self.backend != Backend::Postgres {
            return;
        }
        crate::leaks::sweep_postgres(&self.url, &self.name);
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let admin_url = self.admin_url.clone();
        // Drop runs outside any runtime (or inside one that may be shutting down).
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            // A private server may be gone already: nothing to drop then.
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&sql).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("TEST_POSTGRES_URL is a URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

async fn run_admin_sql(admin_url: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|err| panic!("cannot reach Postgres at {admin_url}: {err}"));
    sqlx::query(sql).execute(&mut conn).await.expect(sql);
}

pub fn settings(db: &TestDb, master_keys: Option<&str>) -> Settings {
    Settings {
        database_url: Some(db.url.clone()),
        listen: "127.0.0.1:0".into(),
        master_keys: master_keys.map(str::to_owned),
        bootstrap_admin_key: Some(ADMIN_KEY.into()),
        lwa_token_url: "http://127.0.0.1:9/auth/o2/token".into(),
        spapi_url: None,
        public_url: None,
        oauth_return_url: None,
        log_format: None,
        request_timeout: "60".into(),
        header_read_timeout: "10".into(),
        max_connections: "10000".into(),
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub db: Arc<TestDb>,
    pub client: reqwest::Client,
    settings: Settings,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let db = TestDb::new(backend).await;
    TestApp::start(db, Some(MASTER_KEYS))
        .await
        .expect("app starts")
}

/// An app whose LWA is `fake`.
pub async fn spawn_with_lwa(backend: Backend, fake: &FakeLwa) -> TestApp {
    spawn_tuned(backend, fake, |_| {}).await
}

/// Where the apps of `spawn_with_amazon` say they are reached (`REGISTRY_PUBLIC_URL`).
pub const PUBLIC_URL: &str = "https://registry.example.com";

/// An app whose LWA and SP-API are `fake` (its token responses then name the fake as
/// `sp_api_endpoint`), with website authorization on (no return URL).
pub async fn spawn_with_amazon(backend: Backend, fake: &FakeLwa) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut settings = settings(&db, Some(MASTER_KEYS));
    settings.lwa_token_url = fake.token_url.clone();
    settings.spapi_url = Some(fake.spapi_url.clone());
    settings.public_url = Some(PUBLIC_URL.into());
    TestApp::start_tuned(db, settings, |_| {})
        .await
        .expect("app starts")
}

/// An app whose LWA is `fake`, with its configuration adjusted by `tune`.
pub async fn spawn_tuned(
    backend: Backend,
    fake: &FakeLwa,
    tune: impl FnOnce(&mut Config),
) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut settings = settings(&db, Some(MASTER_KEYS));
    settings.lwa_token_url = fake.token_url.clone();
    TestApp::start_tuned(db, settings, tune)
        .await
        .expect("app starts")
}

/// The Postgres server's address, for a proxy in front of it.
pub fn postgres_addr() -> SocketAddr {
    let url = reqwest::Url::parse(&postgres_admin_url()).expect("TEST_POSTGRES_URL is a URL");
    let host = url.host_str().expect("a host");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", url.port().unwrap_or(5432))
        .parse()
        .expect("TEST_POSTGRES_URL names an IP address")
}

/// An app on a Postgres database of its own that it reaches through `TcpProxy`, so the
/// test can cut the database off (or count what the app sends it).
pub async fn spawn_behind_proxy(
    fake: &FakeLwa,
    tune: impl FnOnce(&mut Config),
) -> (TestApp, crate::proxy::TcpProxy) {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = crate::proxy::TcpProxy::start(postgres_addr()).await;
    let mut settings = settings(&db, Some(MASTER_KEYS));
    settings.database_url = Some(db.url_via(proxy.addr));
    settings.lwa_token_url = fake.token_url.clone();
    let app = TestApp::start_tuned(db, settings, tune)
        .await
        .expect("app starts");
    (app, proxy)
}

/// LWA calls may take seconds (the suite's default gives up after one).
pub fn patient_lwa(config: &mut Config) {
    config.lwa.request_timeout = Duration::from_secs(10);
}

/// Test pace: LWA retries and webhook deliveries in milliseconds, so tests stay quick.
fn quick_lwa(config: &mut Config) {
    config.lwa = LwaSettings {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_attempts: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(1500),
    };
    // Webhooks at test pace too: deliveries looked for every 100 ms, retried after
    // about 100 ms.
    config.webhooks = connection_registry::webhooks::WebhookSettings {
        poll_interval: Duration::from_millis(100),
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        expiry_check_interval: Duration::from_millis(200),
        ..Default::default()
    };
}

impl TestApp {
    /// Starts a server (a replica) over `db`.
    pub async fn start(db: Arc<TestDb>, master_keys: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(db.clone(), settings(&db, master_keys)).await
    }

    pub async fn start_with(db: Arc<TestDb>, settings: Settings) -> anyhow::Result<Self> {
        Self::start_tuned(db, settings, |_| {}).await
    }

    pub async fn start_tuned(
        db: Arc<TestDb>,
        settings: Settings,
        tune: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        crate::logs::capture();
        let mut config = Config::from_settings(&settings)?;
        quick_lwa(&mut config);
        tune(&mut config);
        let app = Application::build(config).await?;
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Ok(Self {
            addr,
            db,
            client: reqwest::Client::new(),
            settings,
            shutdown: Some(tx),
            server: Some(server),
        })
    }

    /// Another replica over the same database, configured alike.
    pub async fn replica(&self) -> TestApp {
        self.replica_tuned(|_| {}).await
    }

    pub async fn replica_tuned(&self, tune: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::start_tuned(self.db.clone(), self.settings.clone(), tune)
            .await
            .expect("replica starts")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> Arc<TestDb> {
        self.stop_in_place().await;
        self.db.clone()
    }

    async fn stop_in_place(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Response {
        let method_name = method.as_str().to_owned();
        let mut request = self.client.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request sent");
        crate::leaks::swept(response, &method_name, path).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.request(Method::GET, path, key, None).await
    }

    /// GETs `path` as admin and returns the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path, ADMIN_KEY).await;
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON body")
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Response {
        self.request(Method::POST, path, key, Some(body)).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: &Value) -> Response {
        self.request(Method::PATCH, path, key, Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> Response {
        self.request(Method::DELETE, path, key, None).await
    }

    /// Creates a connection as admin and returns its JSON.
    pub async fn create_connection(&self, body: &Value) -> Value {
        let response = self.post("/connections", ADMIN_KEY, body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("JSON body")
    }

    /// Creates an API key with these scopes and returns its plaintext.
    pub async fn api_key(&self, scopes: &[&str]) -> String {
        self.api_key_with_id(scopes).await.1
    }

    /// Creates an API key with these scopes and returns its id and plaintext.
    pub async fn api_key_with_id(&self, scopes: &[&str]) -> (String, String) {
        let response = self
            .post(
                "/api-keys",
                ADMIN_KEY,
                &json!({"name": "test", "scopes": scopes}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.expect("JSON body");
        let key = crate::logs::secret(body["api_key"].as_str().expect("api_key"));
        (body["id"].as_str().expect("id").to_owned(), key)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// An application id as Developer Central shows it (website authorization needs one).
pub const APPLICATION_ID: &str = "amzn1.sp.solution.1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9";

pub const CLIENT_ID: &str = "amzn1.application-oa2-client.0123456789abcdef0123456789abcdef";

/// A valid create body; `n` makes its secrets unique so a dump can be searched for them.
pub fn connection_body(n: u32) -> Value {
    json!({
        "name": format!("Shop {n}"),
        "region": "eu",
        "environment": "production",
        "client_id": CLIENT_ID,
        "client_secret": client_secret(n),
        "refresh_token": refresh_token(n),
        "merchant_token": "A1EXAMPLESELLER",
    })
}

/// The `n`th client secret of the suite (registered as a secret for the log scan).
pub fn client_secret(n: u32) -> String {
    crate::logs::secret(format!(
        "amzn1.oa2-cs.v1.{:064x}",
        0xc1_1e57_0000_u64 + u64::from(n)
    ))
}

/// The `n`th refresh token of the suite (registered as a secret for the log scan).
pub fn refresh_token(n: u32) -> String {
    crate::logs::secret(format!(
        "Atzr|IwEBIPlaintextRefreshToken-{n:08}-do-not-store"
    ))
}

/// Asserts a problem+json response and returns its body.
pub async fn problem(response: Response, status: StatusCode, code: &str) -> Value {
    if response.status() != status {
        let actual = response.status();
        let url = response.url().path().to_owned();
        panic!(
            "{url}: expected {status}, got {actual}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["code"], code, "problem code in {body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

/// Asserts a 404 `not_found` problem.
pub async fn not_found(response: Response) {
    problem(response, StatusCode::NOT_FOUND, "not_found").await;
}

/// The fields a 422 names, sorted.
pub fn invalid_fields(problem: &Value) -> Vec<String> {
    let mut fields: Vec<String> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field").to_owned())
        .collect();
    fields.sort();
    fields
}

/// Runs each async test body (taking a `Backend`) against Postgres and against SQLite.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn postgres() {
                    $crate::helpers::run(super::$name($crate::helpers::Backend::Postgres))
                }

                #[test]
                fn sqlite() {
                    $crate::helpers::run(super::$name($crate::helpers::Backend::Sqlite))
                }
            }
        )*
    };
}

/// Runs each async test body (taking no argument) once: tests of one backend's
/// behaviour (several replicas need Postgres) or of no backend at all.
#[macro_export]
macro_rules! single {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn run() {
                    $crate::helpers::run(super::$name())
                }
            }
        )*
    };
}

/// How hard the reliability suites push: `RELIABILITY_SCALE` (default 1, what CI runs)
/// multiplies their durations and rounds; `scripts/reliability` runs them larger.
pub fn reliability_scale() -> u32 {
    std::env::var("RELIABILITY_SCALE")
        .ok()
        .and_then(|scale| scale.parse().ok())
        .filter(|scale| *scale >= 1)
        .unwrap_or(1)
}

/// One row of the README's reliability table, printed for `scripts/reliability` to
/// collect: the suite, what was tried (counts), what held.
pub fn report(suite: &str, tried: &str, held: &str) {
    println!("RELIABILITY\t{suite}\t{tried}\t{held}");
}
