//! Every log line the suite's servers write is captured here, and checked after each test
//! for anything that looks like a secret: no refresh token, access token, client secret or
//! API key may ever reach a log.

use std::io::Write;
use std::sync::{Mutex, Once};

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once, at debug level for the service.
pub fn capture() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            "info,connection_registry=trace,tower_http=debug,sqlx=debug",
        );
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| Capture)
            .with_ansi(false)
            .init();
    });
}

/// Prefixes every secret in this suite starts with (Amazon's, and this service's keys).
const SECRET_MARKERS: [&str; 4] = ["Atzr|", "Atza|", "amzn1.oa2-cs.v1.", "crk_"];

pub fn assert_no_secrets() {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    let text = String::from_utf8_lossy(&logs);
    for marker in SECRET_MARKERS {
        if let Some(at) = text.find(marker) {
            let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!("a secret reached the logs: {}", &text[start..end]);
        }
    }
}

/// How many bytes were captured: proves the capture works.
pub fn captured_len() -> usize {
    LOGS.lock().unwrap_or_else(|p| p.into_inner()).len()
}
