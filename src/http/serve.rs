//! Serving client connections, with what `axum::serve` does not bound: how long a client
//! may take to send a request's headers (on a kept-alive connection the clock starts when
//! it goes idle, so idle connections are closed after the same time), and how many
//! connections may be open at once (more wait in the listen backlog until one closes).
//! HTTP/1.1, as before; on shutdown, idle connections close at once and open requests
//! finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::Api;

/// What one client connection may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// To send a request's headers, counted from when the server starts waiting for them.
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `api` on `listener` until `shutdown` completes, then waits for the requests
/// under way.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        // A permit first: at the cap, new connections wait in the backlog, unread.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(api.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                // A header-read timeout, a client gone mid-request: the client's doing.
                tracing::debug!(error = %err, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
