//! The leak sweep: every secret the suite registers (`logs::secret`: client secrets,
//! refresh tokens, access tokens, restricted data tokens, API keys, authorization codes,
//! webhook signing secrets) is searched for, across the whole suite,
//! - in every response body (and header) a test's `TestApp` receives, except the one
//!   field of the few responses whose purpose is to hand that secret to its owner (a
//!   token response's `access_token`, a created key's `api_key`, …);
//! - in every test database when the test ends: `pg_dump` of a Postgres database, the
//!   raw bytes of a SQLite database and its journal (the event record and webhook
//!   deliveries included);
//! - in the server logs (`logs.rs`, per test) and in the output of server processes
//!   (`crashes.rs`, `replica_kill.rs`).
//!
//! Counts are written to `$LEAK_SWEEP_LOG` when set, for `scripts/reliability`.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use reqwest::Response;
use serde_json::Value;

/// The fields that exist to hand a secret to its owner, by route.
fn delivered_fields(method: &str, path: &str) -> &'static [&'static str] {
    let route = path.split('?').next().unwrap_or(path);
    match (method, route) {
        ("GET", r) if r.ends_with("/token") => &["access_token"],
        ("POST", r) if r.ends_with("/restricted-data-token") => &["restricted_data_token"],
        ("POST", "/api-keys") => &["api_key"],
        ("POST", "/webhook-endpoints") => &["secret"],
        _ => &[],
    }
}

/// Reads `response` whole, fails the test if its headers or body (less the delivered
/// fields) hold a registered secret, and gives back an equal response.
pub async fn swept(response: Response, method: &str, path: &str) -> Response {
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("a response body");
    for (name, value) in &headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        if let Some(found) = crate::logs::find_secret(&value) {
            panic!("a secret ({found}…) in header {name} of {method} {path}");
        }
    }
    let text = String::from_utf8_lossy(&body);
    let searched = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut fields)) => {
            for field in delivered_fields(method, path) {
                fields.remove(*field);
            }
            Value::Object(fields).to_string()
        }
        _ => text.clone().into_owned(),
    };
    if let Some(found) = crate::logs::find_secret(&searched) {
        panic!("a secret ({found}…) in the body of {method} {path}: {text}");
    }
    count("response", body.len());
    let mut rebuilt = axum::http::Response::builder()
        .status(status)
        .version(version);
    for (name, value) in &headers {
        rebuilt = rebuilt.header(name, value);
    }
    Response::from(rebuilt.body(body).expect("a response"))
}

/// Fails the test if the database holds a registered secret in plaintext anywhere.
pub fn sweep_postgres(url: &str, name: &str) {
    let dump = Command::new("pg_dump")
        .args(["--data-only", "--no-owner", "--dbname", url])
        .output();
    let dump = match dump {
        Ok(out) if out.status.success() => out.stdout,
        // A private server already stopped, or a database its test dropped.
        _ => return,
    };
    sweep_bytes(&dump, &format!("pg_dump of {name}"));
}

pub fn sweep_sqlite(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_database = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.contains(".db"));
        if let (true, Ok(bytes)) = (is_database, std::fs::read(&path)) {
            sweep_bytes(&bytes, &path.display().to_string());
        }
    }
}

fn sweep_bytes(bytes: &[u8], what: &str) {
    let text = String::from_utf8_lossy(bytes);
    if let Some(found) = crate::logs::find_secret(&text) {
        if !std::thread::panicking() {
            panic!("a secret ({found}…) in plaintext in {what}");
        }
    }
    count("database", bytes.len());
}

/// Appends `kind bytes secrets` to `$LEAK_SWEEP_LOG`, if set.
fn count(kind: &str, bytes: usize) {
    let Ok(path) = std::env::var("LEAK_SWEEP_LOG") else {
        return;
    };
    let secrets = crate::logs::registered_secrets();
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // One write per line: tests run in parallel, appending to the same file.
        let _ = file.write_all(format!("{kind} {bytes} {secrets}\n").as_bytes());
    }
}

/// The sweep can fail: a secret planted in a body, or in database bytes, is found, in
/// plain and in JSON-escaped form.
#[test]
fn a_planted_secret_is_found() {
    let planted = crate::logs::secret("Atzr|IwEBIPlantedForTheSweep-0123456789");
    let caught = std::panic::catch_unwind(|| {
        sweep_bytes(format!("INSERT ... '{planted}' ...").as_bytes(), "a dump");
    });
    assert!(
        caught.is_err(),
        "a plaintext refresh token in a dump went unnoticed"
    );
    let escaped = serde_json::to_string(&planted).unwrap();
    assert!(crate::logs::find_secret(&format!("{{\"x\":{escaped}}}")).is_some());
    assert!(crate::logs::find_secret("nothing secret here").is_none());
    // A delivered field is allowed only where it is delivered.
    assert_eq!(
        delivered_fields("GET", "/connections/x/token?min_ttl=5"),
        ["access_token"]
    );
    assert!(delivered_fields("GET", "/connections/x").is_empty());
}
