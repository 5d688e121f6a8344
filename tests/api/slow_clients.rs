//! What a client connection may cost: a client trickling its headers is cut, an idle
//! kept-alive connection is closed, and connections beyond the cap wait, all while other
//! clients are served normally.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fake_amazon::FakeLwa;
use crate::helpers::{Backend, TestApp, spawn_tuned};

crate::single!(
    a_client_trickling_its_headers_is_cut_while_others_are_served,
    an_idle_kept_alive_connection_is_closed,
    connections_beyond_the_cap_wait_until_one_closes,
);

async fn app_with(header_read_timeout: Duration, max_connections: usize) -> TestApp {
    let fake = FakeLwa::start().await;
    spawn_tuned(Backend::Sqlite, &fake, |config| {
        config.connections.header_read_timeout = header_read_timeout;
        config.connections.max_connections = max_connections;
    })
    .await
}

/// Reads until the server closes the connection (or `limit` passes); returns what it
/// sent and when it closed.
async fn read_until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> (String, Option<Instant>) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    Some(Instant::now()),
                );
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), None),
        }
    }
}

/// Guards the header-read timeout in `http::serve`: under `axum::serve`, hyper had no
/// timer, so a client sending one header line every 100 ms held its socket (and got an
/// answer) for as long as it liked.
async fn a_client_trickling_its_headers_is_cut_while_others_are_served() {
    let app = app_with(Duration::from_secs(1), 100).await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let connected = Instant::now();
    let trickle = tokio::spawn(async move {
        writer
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: registry\r\n")
            .await?;
        for n in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer
                .write_all(format!("X-Slow-{n}: y\r\n").as_bytes())
                .await?;
        }
        writer.write_all(b"\r\n").await
    });

    // Meanwhile, other clients are served as usual.
    let good = reqwest::Client::new();
    for _ in 0..20 {
        let answer = good.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.text().await.unwrap(), r#"{"status":"ok"}"#);
    }

    let (received, closed) = read_until_closed(&mut reader, Duration::from_secs(6)).await;
    let closed = closed.expect("the slow client is cut");
    let lasted = closed - connected;
    assert!(
        lasted >= Duration::from_millis(900) && lasted < Duration::from_secs(3),
        "cut after {lasted:?}"
    );
    assert!(
        !received.contains("200 OK"),
        "no answer to the slow client: {received}"
    );
    trickle.abort();
}

/// Guards the same timer for a kept-alive connection between requests: it was kept open
/// forever.
async fn an_idle_kept_alive_connection_is_closed() {
    let app = app_with(Duration::from_secs(1), 100).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: registry\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    let idle_since = Instant::now();
    let (rest, closed) = read_until_closed(&mut stream, Duration::from_secs(6)).await;
    let closed = closed.expect("the idle connection is closed");
    assert!(rest.is_empty(), "{rest}");
    let idle = closed - idle_since;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "closed after {idle:?} idle"
    );
}

/// Guards the connection cap in `http::serve`: there was none.
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = app_with(Duration::from_secs(10), 2).await;
    let first = TcpStream::connect(app.addr).await.unwrap();
    let _second = TcpStream::connect(app.addr).await.unwrap();
    // Let the server accept both.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let url = app.url("/healthz");
    let third = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection is not served while two are open"
    );

    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}
