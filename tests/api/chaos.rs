//! A faulty Amazon: a raw TCP front, in front of `FakeLwa`, that answers a share of the
//! requests (LWA and SP-API alike) with what a failing network or a failing Amazon does:
//! no answer, a reset connection, 429 storms, 5xx, HTML, JSON cut short, valid JSON with
//! fields missing. The rest are relayed to the fake. Written on sockets, not on axum,
//! because a reset and a body shorter than its `Content-Length` cannot be sent from a
//! handler.
//!
//! Whether a request is faulted is drawn from a seeded generator (`CHAOS_SEED` repeats a
//! run's draws); the faulted ones get each kind in turn.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Relayed to the fake: a real answer.
    Pass,
    /// Read, then never answered (until long after the caller's time limit).
    Silence,
    /// The connection reset (RST) without an answer.
    Reset,
    /// 429 with `Retry-After: 0` or `1`.
    Throttle,
    /// 500 with LWA's `server_error` body.
    ServerError,
    /// 503 with an empty body, as a load balancer sends.
    Unavailable,
    /// 200 with an HTML page.
    Html,
    /// 200 with JSON cut in the middle (a complete, short body).
    TruncatedJson,
    /// 200 announcing more body than is sent, then closed.
    ShortBody,
    /// 200 with valid JSON whose token (or payload) field is missing.
    MissingFields,
}

impl Fault {
    pub const ALL_FAULTS: [Fault; 9] = [
        Fault::Silence,
        Fault::Reset,
        Fault::Throttle,
        Fault::ServerError,
        Fault::Unavailable,
        Fault::Html,
        Fault::TruncatedJson,
        Fault::ShortBody,
        Fault::MissingFields,
    ];
}

#[derive(Default)]
struct Tally {
    faults: HashMap<Fault, usize>,
    /// LWA requests (attempts) per refresh token.
    lwa_attempts: HashMap<String, usize>,
    spapi_requests: usize,
}

struct ChaosState {
    upstream: SocketAddr,
    /// Share of requests that get a fault, in per mille.
    fault_per_mille: AtomicU32,
    /// When set, every fault is this one.
    only: Mutex<Option<Fault>>,
    rng: Mutex<StdRng>,
    /// Faulted requests so far: the kinds are dealt in turn, so a short run still sees
    /// every one (whether a request is faulted is what is drawn).
    dealt: AtomicU32,
    tally: Mutex<Tally>,
}

#[derive(Clone)]
pub struct Chaos {
    pub token_url: String,
    pub spapi_url: String,
    state: Arc<ChaosState>,
}

impl Chaos {
    /// A front for the fake whose base URL is `fake_base` (`FakeLwa::spapi_url`), passing
    /// everything through until told otherwise.
    pub async fn start(fake_base: &str, seed: u64) -> Self {
        let upstream: SocketAddr = fake_base
            .trim_start_matches("http://")
            .parse()
            .expect("the fake listens on an IP address");
        let state = Arc::new(ChaosState {
            upstream,
            fault_per_mille: AtomicU32::new(0),
            only: Mutex::new(None),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            dealt: AtomicU32::new(0),
            tally: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, state.clone()));
                }
            }
        });
        Self {
            token_url: format!("http://{addr}/auth/o2/token"),
            spapi_url: format!("http://{addr}"),
            state,
        }
    }

    /// From now on, this share of requests (0.0 to 1.0) gets a fault drawn from all kinds.
    pub fn set_fault_rate(&self, rate: f64) {
        *self.state.only.lock().unwrap() = None;
        self.state
            .fault_per_mille
            .store((rate * 1000.0).round() as u32, Ordering::SeqCst);
    }

    /// From now on, every request gets this fault.
    pub fn always(&self, fault: Fault) {
        *self.state.only.lock().unwrap() = Some(fault);
        self.state.fault_per_mille.store(1000, Ordering::SeqCst);
    }

    /// LWA requests that carried this refresh token.
    pub fn lwa_attempts_for(&self, refresh_token: &str) -> usize {
        let tally = self.state.tally.lock().unwrap();
        tally.lwa_attempts.get(refresh_token).copied().unwrap_or(0)
    }

    /// LWA requests in all.
    pub fn lwa_attempts(&self) -> usize {
        self.state.tally.lock().unwrap().lwa_attempts.values().sum()
    }

    pub fn spapi_requests(&self) -> usize {
        self.state.tally.lock().unwrap().spapi_requests
    }

    /// How many requests got each answer, `Pass` included.
    pub fn faults(&self) -> HashMap<Fault, usize> {
        self.state.tally.lock().unwrap().faults.clone()
    }
}

fn draw(state: &ChaosState) -> Fault {
    let per_mille = state.fault_per_mille.load(Ordering::SeqCst);
    let only = *state.only.lock().unwrap();
    let mut rng = state.rng.lock().unwrap();
    if rng.gen_range(0..1000) >= per_mille {
        return Fault::Pass;
    }
    only.unwrap_or_else(|| {
        let turn = state.dealt.fetch_add(1, Ordering::SeqCst) as usize;
        Fault::ALL_FAULTS[turn % Fault::ALL_FAULTS.len()]
    })
}

/// One request as read off the socket.
struct Request {
    head: String,
    path: String,
    body: Vec<u8>,
}

/// Reads one request (head and `Content-Length` body), bounded to 1 MiB.
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    Some(Request { head, path, body })
}

async fn serve(mut stream: TcpStream, state: Arc<ChaosState>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let is_lwa = request.path.starts_with("/auth/o2/token");
    let fault = draw(&state);
    {
        let mut tally = state.tally.lock().unwrap();
        *tally.faults.entry(fault).or_default() += 1;
        if is_lwa {
            let form: HashMap<String, String> =
                serde_urlencoded::from_bytes(&request.body).unwrap_or_default();
            let refresh_token = form.get("refresh_token").cloned().unwrap_or_default();
            *tally.lwa_attempts.entry(refresh_token).or_default() += 1;
        } else {
            tally.spapi_requests += 1;
        }
    }
    let answer = |status: &str, content_type: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let reply = match fault {
        Fault::Pass => relay(&request, state.upstream).await,
        Fault::Silence => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        Fault::Reset => {
            // Linger 0: close sends RST instead of FIN.
            let _ = stream.set_zero_linger();
            return;
        }
        Fault::Throttle => {
            let wait = u8::from(request.body.len() % 2 == 1);
            format!(
                "HTTP/1.1 429 Too Many Requests\r\nretry-after: {wait}\r\n\
                 content-type: application/json\r\ncontent-length: 30\r\n\
                 connection: close\r\n\r\n{{\"message\":\"Rate exceeded\"}}   "
            )
        }
        Fault::ServerError => answer(
            "500 Internal Server Error",
            "application/json",
            r#"{"error":"server_error","error_description":"Internal server error"}"#,
        ),
        Fault::Unavailable => answer("503 Service Unavailable", "text/plain", ""),
        Fault::Html => answer(
            "200 OK",
            "text/html",
            "<html><body><h1>Service Temporarily Unavailable</h1></body></html>",
        ),
        Fault::TruncatedJson => answer(
            "200 OK",
            "application/json",
            r#"{"access_token":"Atza|IwEBItruncat"#,
        ),
        Fault::ShortBody => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
             content-length: 4000\r\nconnection: close\r\n\r\n{\"access_token\":\"Atza|"
            .to_owned(),
        Fault::MissingFields if is_lwa => answer(
            "200 OK",
            "application/json",
            r#"{"token_type":"bearer","expires_in":3600}"#,
        ),
        Fault::MissingFields => answer("200 OK", "application/json", r#"{"payload":{}}"#),
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Sends the request to the fake as it came (closing after one exchange) and returns the
/// fake's answer unchanged.
async fn relay(request: &Request, upstream: SocketAddr) -> String {
    let Ok(mut fake) = TcpStream::connect(upstream).await else {
        return "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".to_owned();
    };
    // One exchange per connection: keep-alive headers are replaced.
    let head: String = request
        .head
        .trim_end()
        .lines()
        .filter(|line| !line.to_ascii_lowercase().starts_with("connection:"))
        .map(|line| format!("{line}\r\n"))
        .collect();
    let mut bytes = format!("{head}connection: close\r\n\r\n").into_bytes();
    bytes.extend_from_slice(&request.body);
    if fake.write_all(&bytes).await.is_err() {
        return "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".to_owned();
    }
    let mut answer = Vec::new();
    let _ = fake.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The seed of this run: `CHAOS_SEED` when set, else fresh (and printed).
pub fn seed() -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos seed {seed} (CHAOS_SEED={seed} repeats this run)");
    seed
}
