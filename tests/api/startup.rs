//! The binary: start-up errors are one clear line; the embedded default sets itself up.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

crate::single!(
    bad_settings_stop_start_up_with_one_line_naming_the_setting,
    embedded_default_creates_its_data_directory_key_and_first_admin_key,
    openapi_document_is_served,
);

const BINARY: &str = env!("CARGO_BIN_EXE_connection-registry");

/// Runs the binary with only the given environment; returns its exit status and stderr.
async fn run(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(BINARY)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(dir)
            .output(),
    )
    .await
    .expect("exits in time")
    .expect("runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn bad_settings_stop_start_up_with_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[(&str, &str)], &str); 9] = [
        (
            &[("DATABASE_URL", "mysql://localhost/db")],
            "DATABASE_URL (--database-url): ",
        ),
        (
            &[("REGISTRY_LISTEN", "localhost")],
            "REGISTRY_LISTEN (--listen): ",
        ),
        (
            &[("REGISTRY_MASTER_KEYS", "k1:dG9vIHNob3J0")],
            "REGISTRY_MASTER_KEYS (--master-keys): key `k1` is 9 bytes",
        ),
        (
            &[(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            )],
            "REGISTRY_MASTER_KEYS (--master-keys): required with Postgres",
        ),
        (
            &[("REGISTRY_LWA_TOKEN_URL", "not a url")],
            "REGISTRY_LWA_TOKEN_URL (--lwa-token-url): ",
        ),
        (
            &[("REGISTRY_REQUEST_TIMEOUT", "0")],
            "REGISTRY_REQUEST_TIMEOUT (--request-timeout): `0` is not a number of seconds",
        ),
        (
            &[("REGISTRY_HEADER_READ_TIMEOUT", "never")],
            "REGISTRY_HEADER_READ_TIMEOUT (--header-read-timeout): `never` is not a number",
        ),
        (
            &[("REGISTRY_MAX_CONNECTIONS", "0")],
            "REGISTRY_MAX_CONNECTIONS (--max-connections): `0` is not a number from 1",
        ),
        (
            &[(
                "REGISTRY_LWA_TOKEN_URL",
                "http://api.amazon.com/auth/o2/token",
            )],
            "REGISTRY_LWA_TOKEN_URL (--lwa-token-url): must be an https:// URL",
        ),
    ];
    for (env, expected) in cases {
        let (ok, stderr) = run(&["serve"], env, dir.path()).await;
        assert!(!ok, "{env:?} must fail");
        let lines: Vec<_> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "exactly one line for {env:?}: {stderr}");
        assert!(
            lines[0].starts_with(&format!("connection-registry: {expected}")),
            "{env:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    }
    assert!(
        !dir.path().join("data").exists(),
        "a refused start creates nothing"
    );
}

async fn embedded_default_creates_its_data_directory_key_and_first_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(BINARY)
        .env_clear()
        .env("REGISTRY_LISTEN", "127.0.0.1:0")
        .env("REGISTRY_LOG_FORMAT", "json")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();

    let data = dir.path().join("data");
    let key_file = data.join("first-admin.key");
    let (address, announced) = tokio::time::timeout(Duration::from_secs(20), async {
        let mut warned = false;
        let mut announced = None;
        while let Some(line) = stdout.next_line().await.unwrap() {
            let log: Value = serde_json::from_str(&line).expect("json logs");
            let message = log["fields"]["message"].as_str().unwrap_or_default();
            warned |= message.contains("GENERATED A NEW MASTER KEY");
            assert!(!line.contains("crk_"), "no admin key is logged: {line}");
            if message.starts_with("first start: created an admin API key") {
                announced = log["fields"]["path"].as_str().map(str::to_owned);
            }
            if let Some(address) = log["fields"]["address"].as_str() {
                assert!(warned, "the generated key is announced loudly");
                return (address.to_owned(), announced);
            }
        }
        panic!("server did not report its address")
    })
    .await
    .expect("listening in time");

    // stderr is no terminal here (as in a container, where it is kept like a log): the
    // key goes to a file only this user can read, and the log names the file.
    let key_file = key_file.canonicalize().unwrap();
    assert_eq!(announced.as_deref(), Some(key_file.to_str().unwrap()));
    let admin_key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(admin_key.starts_with("crk_"), "{admin_key}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(data.join("registry.db").exists());
    assert!(data.join("master.key").exists());
    let response = reqwest::Client::new()
        .get(format!("http://{address}/api-keys"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // SIGTERM: a graceful stop.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("stops in time")
        .unwrap();
    assert!(status.success(), "exits cleanly on SIGTERM: {status}");
    let mut printed = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut printed)
        .await
        .unwrap();
    assert!(
        !printed.contains(&admin_key),
        "the key is not printed where no terminal shows it: {printed}"
    );
}

async fn openapi_document_is_served() {
    let app = crate::helpers::spawn_app(crate::helpers::Backend::Sqlite).await;
    let response = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    let text = response.text().await.unwrap();
    assert_eq!(text, include_str!("../../openapi.yaml"));
    assert!(text.starts_with("openapi: 3.1"));
    let health: Value = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}
