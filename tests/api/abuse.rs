//! Abuse: huge bodies, deeply nested JSON, clients trickling their headers, floods of bad
//! API keys and of token requests for unknown ids, all at once. Each bad request gets its
//! right answer, and a good caller (a sync worker asking for a cached token) keeps being
//! served; its latency during the abuse is reported against a quiet baseline of the same
//! run (a measurement, not an assertion: timing on a shared machine proves nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake_amazon::FakeLwa;
use crate::helpers::{Backend, TestApp, connection_body, reliability_scale, report, spawn_tuned};

crate::single!(abuse_is_refused_while_good_callers_are_served);

#[derive(Default)]
struct Refused {
    too_large: AtomicUsize,
    malformed: AtomicUsize,
    bad_key: AtomicUsize,
    unknown_id: AtomicUsize,
    slow_cut: AtomicUsize,
}

/// Guards: a body limit that reads before it refuses (huge bodies held in memory), a
/// nested-JSON parse that overflows the stack (a crash for everyone), a bad-key or
/// unknown-id path that answers anything but 401/404 problem+json, and abuse that starves
/// the good callers (their requests must all succeed meanwhile).
async fn abuse_is_refused_while_good_callers_are_served() {
    let fake = FakeLwa::start().await;
    let app = Arc::new(
        spawn_tuned(Backend::Postgres, &fake, |config| {
            config.connections.header_read_timeout = Duration::from_secs(1);
        })
        .await,
    );
    let worker_key = app.api_key(&["tokens:read"]).await;
    let id = app.create_connection(&connection_body(1)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let token_url = app.url(&format!("/connections/{id}/token"));
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(&token_url)
            .bearer_auth(&worker_key)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let window = Duration::from_millis(2000 * u64::from(reliability_scale()));
    let baseline = good_caller(&http, &token_url, &worker_key, window).await;

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(Refused::default());
    let mut abusers = Vec::new();
    for kind in 0..10 {
        let (app, stop, refused) = (app.clone(), stop.clone(), refused.clone());
        abusers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match kind % 5 {
                    0 => huge_body(&http, &app, &refused).await,
                    1 => nested_json(&http, &app, &refused).await,
                    2 => bad_key(&http, &app, n, &refused).await,
                    3 => unknown_id(&http, &app, &refused).await,
                    _ => slow_client(&app, &refused).await,
                }
            }
        }));
    }
    let during = good_caller(&http, &token_url, &worker_key, window).await;
    stop.store(true, Ordering::SeqCst);
    for abuser in abusers {
        abuser
            .await
            .expect("every bad request got its right answer");
    }

    assert!(
        !during.is_empty(),
        "no good request was served during the abuse"
    );
    let load = |counter: &AtomicUsize| counter.load(Ordering::SeqCst);
    for (what, count) in [
        ("huge bodies", load(&refused.too_large)),
        ("nested JSON", load(&refused.malformed)),
        ("bad keys", load(&refused.bad_key)),
        ("unknown ids", load(&refused.unknown_id)),
        ("slow clients", load(&refused.slow_cut)),
    ] {
        assert!(count > 0, "no {what} were sent");
    }
    let (p50, p99) = (percentile(&baseline, 50), percentile(&baseline, 99));
    let (a50, a99) = (percentile(&during, 50), percentile(&during, 99));
    report(
        "abuse (Postgres)",
        &format!(
            "over {} s: {} bodies of 8 MiB, {} nested JSON bodies (60,000 levels), {} bad \
             API keys, {} token requests for unknown ids, {} clients trickling headers \
             (cut); a good caller's cached-token requests: {} quiet, {} during",
            window.as_secs_f64(),
            load(&refused.too_large),
            load(&refused.malformed),
            load(&refused.bad_key),
            load(&refused.unknown_id),
            load(&refused.slow_cut),
            baseline.len(),
            during.len(),
        ),
        &format!(
            "every bad request refused with its code (413, 400, 401, 404); every good \
             request served; good caller p50 {:.1} ms → {:.1} ms ({:.1}×), p99 {:.1} ms → \
             {:.1} ms ({:.1}×)",
            p50,
            a50,
            a50 / p50,
            p99,
            a99,
            a99 / p99
        ),
    );
}

/// A sync worker asking for its cached token back to back for `window`: each latency in
/// milliseconds. Every answer must be the token.
async fn good_caller(http: &reqwest::Client, url: &str, key: &str, window: Duration) -> Vec<f64> {
    let mut latencies = Vec::new();
    let until = Instant::now() + window;
    while Instant::now() < until {
        let started = Instant::now();
        let response = http.get(url).bearer_auth(key).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, StatusCode::OK, "a good caller refused: {body}");
        assert!(body["access_token"].is_string());
    }
    latencies
}

fn percentile(values: &[f64], p: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) * p / 100]
}

/// The problem code of a problem+json answer with `status`; fails on anything else.
async fn refused_with(response: reqwest::Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("a problem+json body");
    body["code"].as_str().unwrap().to_owned()
}

/// 8 MiB to create a connection: refused once 64 KiB are read (or the connection is cut
/// while still sending, which is the same refusal seen from the client).
async fn huge_body(http: &reqwest::Client, app: &TestApp, refused: &Refused) {
    static HUGE: std::sync::LazyLock<axum::body::Bytes> =
        std::sync::LazyLock::new(|| axum::body::Bytes::from(vec![b' '; 8 << 20]));
    let body = HUGE.clone();
    let sent = http
        .post(app.url("/connections"))
        .bearer_auth(crate::helpers::ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    if let Ok(response) = sent {
        assert_eq!(
            refused_with(response, StatusCode::PAYLOAD_TOO_LARGE).await,
            "payload_too_large"
        );
    }
    refused.too_large.fetch_add(1, Ordering::SeqCst);
}

/// 60,000 levels of nested arrays: a 400 naming the body, not a stack overflow.
async fn nested_json(http: &reqwest::Client, app: &TestApp, refused: &Refused) {
    static NESTED: std::sync::LazyLock<axum::body::Bytes> = std::sync::LazyLock::new(|| {
        axum::body::Bytes::from(format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)))
    });
    let body = NESTED.clone();
    let response = http
        .post(app.url("/connections"))
        .bearer_auth(crate::helpers::ADMIN_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
        "nested JSON answered {status}"
    );
    refused.malformed.fetch_add(1, Ordering::SeqCst);
}

/// A key never issued: 401 (or 429 once the guessing budget is spent).
async fn bad_key(http: &reqwest::Client, app: &TestApp, n: u64, refused: &Refused) {
    let response = http
        .get(app.url("/connections"))
        .bearer_auth(format!("crk_guess{n:032}"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::TOO_MANY_REQUESTS,
        "a bad key answered {status}"
    );
    let body: Value = response.json().await.unwrap();
    assert!(body["code"].is_string(), "{body}");
    refused.bad_key.fetch_add(1, Ordering::SeqCst);
}

/// A token for a connection that does not exist: 404.
async fn unknown_id(http: &reqwest::Client, app: &TestApp, refused: &Refused) {
    let id = uuid::Uuid::now_v7();
    let response = http
        .get(app.url(&format!("/connections/{id}/token")))
        .bearer_auth(crate::helpers::ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused_with(response, StatusCode::NOT_FOUND).await,
        "not_found"
    );
    refused.unknown_id.fetch_add(1, Ordering::SeqCst);
}

/// Opens a connection and sends half a request line, then a byte every 100 ms: the
/// server holds it at most its header-read time (1 s here), then cuts it.
async fn slow_client(app: &TestApp, refused: &Refused) {
    let Ok(mut socket) = tokio::net::TcpStream::connect(app.addr).await else {
        return;
    };
    let _ = socket
        .write_all(b"GET /connections HTTP/1.1\r\nHost: x\r\n")
        .await;
    let mut buf = [0u8; 1024];
    for _ in 0..30 {
        let _ = socket.write_all(b"X").await;
        match tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buf)).await {
            Err(_) => continue,
            // Closed, reset, or a 408 before the close: cut either way.
            Ok(_) => {
                refused.slow_cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
    panic!("a client trickling its headers was held for 3 s");
}
