//! Every log line the suite's servers write is captured here, tagged with the test whose
//! threads wrote it, and searched for every secret value the suite has used.
//!
//! The search looks for exact values, not prefixes: each client secret, refresh token,
//! access token, API key and master key a test made or was issued is registered with
//! `secret()`, and is looked for as sent, URL-encoded (as in a form body) and JSON-escaped.
//! A few prefixes (`Atzr|`, `crk_`, …) are looked for as well, to catch values the suite
//! did not register. `helpers::run` scans a test's lines after its runtime, and so its
//! servers, have stopped: nothing logged during shutdown escapes the scan.
//!
//! `TEST_LOG=1 cargo test …` prints each test's captured server log (libtest shows it
//! for failing tests, or for all with `--nocapture`).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use aho_corasick::AhoCorasick;

/// A captured log line and the thread that wrote it.
pub struct Line {
    thread: String,
    text: String,
}

static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());
static SECRETS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Thread names of the test runtimes start with this (see `helpers::run`).
pub const TEST_THREAD_PREFIX: &str = "test:";

/// Prefixes only secrets carry, in the forms a log line could hold them.
const SECRET_MARKERS: [&str; 8] = [
    "Atzr|",
    "Atza|",
    "Atzr%7C",
    "Atza%7C",
    "amzn1.oa2-cs.v1.",
    "crk_",
    "-----BEGIN",
    "REGISTRY_MASTER_KEYS=",
];

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        let text = String::from_utf8_lossy(buf).into_owned();
        lock(&LINES).push(Line { thread, text });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Installs the capturing subscriber once, at trace level for the service.
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

/// Prefixes that say what a secret is, and are no secret themselves: the rest of a
/// value after one is registered too, so a secret logged without its prefix is found.
const KNOWN_PREFIXES: [&str; 4] = ["Atzr|", "Atza|", "amzn1.oa2-cs.v1.", "crk_"];

/// Registers `value` as a secret that must never be logged, and returns it.
pub fn secret(value: impl Into<String>) -> String {
    let value = value.into();
    let mut secrets = lock(&SECRETS);
    let mut new = Vec::new();
    if let Some(rest) = KNOWN_PREFIXES
        .iter()
        .find_map(|prefix| value.strip_prefix(prefix))
        .filter(|rest| rest.len() >= 16)
        && secrets.insert(rest.to_owned())
    {
        new.push(rest.to_owned());
    }
    if secrets.insert(value.clone()) {
        new.push(value.clone());
    }
    drop(secrets);
    lock(&SECRET_INDEX).registered.extend(new);
    value
}

/// The forms a secret could take in a log line.
fn forms(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).expect("a string serializes");
    let json = json[1..json.len() - 1].to_owned();
    let upper = form_encode(secret, true);
    let lower = form_encode(secret, false);
    let mut forms = vec![secret.to_owned(), json, upper, lower];
    forms.sort();
    forms.dedup();
    forms
}

/// `application/x-www-form-urlencoded`, with upper- or lower-case hex digits.
fn form_encode(text: &str, upper: bool) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            other if upper => format!("%{other:02X}"),
            other => format!("%{other:02x}"),
        })
        .collect()
}

/// Whether a line was written by `test`'s threads (or by no test's: a thread of a
/// library, such as SQLite's workers, which any test may have caused).
fn belongs_to(line: &Line, test: &str) -> bool {
    line.thread == test
        || line.thread.strip_prefix(TEST_THREAD_PREFIX) == Some(test)
        || !belongs_to_a_test(&line.thread)
}

/// libtest names a test's thread after the test path (`tokens::foo::postgres`).
fn is_test_name(thread: &str) -> bool {
    thread.contains("::")
}

/// Takes the lines `test`'s servers wrote (and those of threads no test owns) out of the
/// capture.
pub fn take(test: &str) -> Vec<Line> {
    let mut lines = lock(&LINES);
    let (mine, others) = std::mem::take(&mut *lines)
        .into_iter()
        .partition(|line| belongs_to(line, test));
    *lines = others;
    mine
}

/// Whether `TEST_LOG` asks for the captured server logs.
pub fn wanted() -> bool {
    std::env::var("TEST_LOG").is_ok_and(|value| !value.is_empty() && value != "0")
}

/// Prints `test`'s captured server log where libtest captures a test's output.
pub fn print(test: &str, lines: &[Line]) {
    eprintln!("---- server log of `{test}` ({} lines) ----", lines.len());
    for line in lines {
        eprint!("[{}] {}", line.thread, line.text);
    }
    eprintln!("---- end of the server log of `{test}` ----");
}

/// Panics naming the test, the thread, the secret's first characters and the line, if
/// any of `lines` holds a registered secret or a secret prefix.
pub fn assert_no_secrets(test: &str, lines: &[Line]) {
    let mut matchers = secret_matchers();
    let markers: Vec<String> = SECRET_MARKERS.iter().map(|m| (*m).to_owned()).collect();
    matchers.push(Arc::new((
        AhoCorasick::new(&markers).expect("patterns build"),
        markers,
    )));
    for line in lines {
        if let Some(found) = first_secret(&matchers, &line.text) {
            let writer = if belongs_to_a_test(&line.thread) {
                format!("this test's server (thread `{}`)", line.thread)
            } else {
                format!(
                    "thread `{}`, which no test owns (a library's worker: `{test}` or any \
                     test running at the same time caused it)",
                    line.thread
                )
            };
            panic!(
                "a secret ({found}…) reached the logs, found while scanning test `{test}`; \
                 written by {writer}: {}",
                line.text.trim_end()
            );
        }
    }
}

fn belongs_to_a_test(thread: &str) -> bool {
    thread.starts_with(TEST_THREAD_PREFIX) || is_test_name(thread)
}

/// The lines captured so far that this test's own threads wrote and that contain `text`;
/// for tests that assert on what the service logs. Call from within `helpers::run`.
pub fn lines_containing(text: &str) -> Vec<String> {
    let current = std::thread::current();
    let name = current.name().unwrap_or("");
    let test = name.strip_prefix(TEST_THREAD_PREFIX).unwrap_or(name);
    lock(&LINES)
        .iter()
        .filter(|line| {
            line.thread
                .strip_prefix(TEST_THREAD_PREFIX)
                .unwrap_or(&line.thread)
                == test
        })
        .filter(|line| line.text.contains(text))
        .map(|line| line.text.clone())
        .collect()
}

/// Automata over the forms of every registered secret, for `find_secret`. Secrets keep
/// being registered (every token the fake issues), so one automaton rebuilt per new
/// secret would cost the suite minutes: secrets are added in batches whose sizes double
/// as they merge (a binary counter), so each secret is rebuilt into an automaton only
/// about log₂(n) times and a search runs at most that many automata.
#[derive(Default)]
struct SecretIndex {
    /// Secrets in the order they were registered (`SECRETS` is ordered by value).
    registered: Vec<String>,
    /// How many of `registered` the batches cover.
    indexed: usize,
    batches: Vec<(usize, Arc<Matcher>)>,
    /// The automaton over the secrets no batch covers yet, and the range it covers.
    pending: Option<((usize, usize), Arc<Matcher>)>,
}

static SECRET_INDEX: Mutex<SecretIndex> = Mutex::new(SecretIndex {
    registered: Vec::new(),
    indexed: 0,
    batches: Vec::new(),
    pending: None,
});

/// The smallest batch: searches run the secrets registered since the last batch through
/// an automaton built on the spot.
const BATCH: usize = 16;

/// An automaton over secret forms, and the forms (to name what it found).
type Matcher = (AhoCorasick, Vec<String>);

fn matcher(secrets: &[String]) -> Arc<Matcher> {
    let mut patterns: Vec<String> = secrets.iter().flat_map(|s| forms(s)).collect();
    patterns.sort();
    patterns.dedup();
    // A contiguous NFA builds in time linear in the patterns; the DFA `new` would pick
    // for a small set of long patterns takes far longer to build than to search with.
    let automaton = AhoCorasick::builder()
        .kind(Some(aho_corasick::AhoCorasickKind::ContiguousNFA))
        .build(&patterns)
        .expect("patterns build");
    Arc::new((automaton, patterns))
}

/// The first registered secret (its first six characters) found in `text`, in any of the
/// forms a log line could hold it. Markers alone (`crk_`, `Atza|`) are not looked for:
/// this is for response bodies and dumps, which may name a key's prefix.
pub fn find_secret(text: &str) -> Option<String> {
    first_secret(&secret_matchers(), text)
}

/// The automata covering every secret registered so far.
fn secret_matchers() -> Vec<Arc<Matcher>> {
    let mut index = lock(&SECRET_INDEX);
    while index.registered.len() - index.indexed >= BATCH {
        let start = index.indexed;
        let mut size = BATCH;
        index.indexed += BATCH;
        // Merge equal-sized batches, as a binary counter carries.
        while index.batches.last().is_some_and(|(last, _)| *last == size) {
            index.batches.pop();
            size *= 2;
        }
        let from = start + BATCH - size;
        let built = matcher(&index.registered[from..start + BATCH]);
        index.batches.push((size, built));
    }
    let mut matchers: Vec<Arc<Matcher>> = index.batches.iter().map(|(_, m)| m.clone()).collect();
    let unindexed = (index.indexed, index.registered.len());
    if unindexed.0 < unindexed.1 {
        let pending = match &index.pending {
            Some((covers, pending)) if *covers == unindexed => pending.clone(),
            _ => {
                let built = matcher(&index.registered[unindexed.0..]);
                index.pending = Some((unindexed, built.clone()));
                built
            }
        };
        matchers.push(pending);
    }
    matchers
}

/// What the first of `matchers` to find anything in `text` found (its first six
/// characters).
fn first_secret(matchers: &[Arc<Matcher>], text: &str) -> Option<String> {
    matchers.iter().find_map(|matcher| {
        let (automaton, patterns) = &**matcher;
        automaton.find(text).map(|found| {
            patterns[found.pattern().as_usize()]
                .chars()
                .take(6)
                .collect()
        })
    })
}

/// How many secrets are registered so far.
pub fn registered_secrets() -> usize {
    lock(&SECRETS).len()
}

/// How many bytes are captured and not yet scanned: proves the capture works.
pub fn captured_len() -> usize {
    lock(&LINES).iter().map(|line| line.text.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_cover_plain_url_and_json_encoding() {
        let forms = forms("Atzr|a/b\"c");
        assert!(forms.contains(&"Atzr|a/b\"c".to_owned()));
        assert!(forms.contains(&"Atzr|a/b\\\"c".to_owned()));
        assert!(forms.contains(&"Atzr%7Ca%2Fb%22c".to_owned()));
        assert!(forms.contains(&"Atzr%7ca%2fb%22c".to_owned()));
    }

    /// Guards the attribution in `assert_no_secrets`: a leak says whose server wrote it.
    #[test]
    fn a_leak_names_the_test_and_the_thread_that_wrote_it() {
        let leaked = secret("Atzr|attribution-test-secret-0123456789");
        let scan = |thread: &str| {
            let lines = [Line {
                thread: thread.to_owned(),
                text: format!("refreshing with {leaked}\n"),
            }];
            let panic = std::panic::catch_unwind(|| assert_no_secrets("tokens::t::sqlite", &lines))
                .expect_err("the leak is found");
            panic.downcast_ref::<String>().cloned().expect("a message")
        };
        let own = scan("test:tokens::t::sqlite");
        assert!(
            own.contains("test `tokens::t::sqlite`")
                && own.contains("this test's server (thread `test:tokens::t::sqlite`)"),
            "{own}"
        );
        let library = scan("sqlx-sqlite-worker-3");
        assert!(
            library.contains("thread `sqlx-sqlite-worker-3`, which no test owns"),
            "{library}"
        );
    }
}
