//! A TCP proxy in front of Postgres that a test can cut, to make the database unreachable
//! for one app without stopping the server every other test uses, or stall, to make the
//! app's open connections die silently (as behind a NAT or load balancer that forgot
//! them) while new ones work. It counts the bytes the app sends, so a test can tell
//! whether something queried the database.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    /// Milliseconds each chunk from the app waits before it is passed on.
    delay_ms: Arc<AtomicU64>,
    links: Arc<Mutex<Vec<Link>>>,
    accept: JoinHandle<()>,
}

/// One relayed connection, and whether it has been stalled.
struct Link {
    task: JoinHandle<()>,
    stalled: Arc<AtomicBool>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let sent = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let accept = tokio::spawn({
            let up = up.clone();
            let sent = sent.clone();
            let delay_ms = delay_ms.clone();
            let links = links.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    // Checked under the lock `cut` takes, so that a connection accepted
                    // while it runs is either dropped or in the list it empties.
                    let mut links = links.lock().unwrap();
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused at once
                    }
                    let stalled = Arc::new(AtomicBool::new(false));
                    let task = tokio::spawn(relay(
                        client,
                        target,
                        sent.clone(),
                        delay_ms.clone(),
                        stalled.clone(),
                    ));
                    links.push(Link { task, stalled });
                }
            }
        });
        Self {
            addr,
            up,
            sent,
            delay_ms,
            links,
            accept,
        }
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        let mut links = self.links.lock().unwrap();
        self.up.store(false, Ordering::SeqCst);
        for link in links.drain(..) {
            link.task.abort();
        }
    }

    /// Every connection open now stops passing bytes, both ways, but stays open: no
    /// error, no close, just silence. Connections made later pass as usual.
    pub fn stall(&self) {
        for link in self.links.lock().unwrap().iter() {
            link.stalled.store(true, Ordering::SeqCst);
        }
    }

    /// From now on every chunk the app sends waits this long before it is passed on: a
    /// slow database (or link).
    pub fn slow_down(&self, delay: std::time::Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Bytes the app has sent to the database so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

/// Copies both ways until either side closes, counting what the client sends. Once
/// stalled, what is read is dropped and nothing more is read: the sockets stay open.
async fn relay(
    client: TcpStream,
    target: SocketAddr,
    sent: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if stalled.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            sent.fetch_add(n as u64, Ordering::SeqCst);
            let delay = delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            if stalled.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
