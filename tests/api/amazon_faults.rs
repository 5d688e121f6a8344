//! Faults from Amazon under concurrent load: LWA and SP-API behind `chaos::Chaos`, which
//! answers a share of requests with timeouts, resets, 429 storms, 5xx, HTML, cut-short and
//! incomplete JSON. Whatever the mix, no connection leaves `active`, no caller is handed a
//! token past its expiry, LWA is asked at most `max_attempts` times per fetch, and the
//! service serves again by itself once Amazon does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::chaos::{Chaos, Fault, seed};
use crate::fake_amazon::FakeLwa;
use crate::helpers::{
    ADMIN_KEY, Backend, MASTER_KEYS, TestApp, TestDb, connection_body, refresh_token,
    reliability_scale, report, settings,
};

crate::both_backends!(a_random_mix_of_faults_under_load_breaks_nothing);
crate::single!(each_fault_is_retried_within_the_bound_then_reported);

/// `quick_lwa`'s attempts per exchange.
const MAX_ATTEMPTS: usize = 3;

/// Errors a transient Amazon failure may give a caller: retry later, never "fix the
/// credentials" (409) and never ours (500).
const TRANSIENT: [&str; 6] = [
    "lwa_unavailable",
    "lwa_protocol_error",
    "token_fetch_in_progress",
    "spapi_unavailable",
    "spapi_protocol_error",
    "spapi_throttled",
];

/// An app whose LWA and SP-API are `chaos` (in front of `fake`), with time limits of one
/// second so silence costs little, and the refresher idle: every LWA call then answers a
/// caller, which is what makes the attempt bound countable.
async fn app_behind(backend: Backend, chaos: &Chaos) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut settings = settings(&db, Some(MASTER_KEYS));
    settings.lwa_token_url = chaos.token_url.clone();
    settings.spapi_url = Some(chaos.spapi_url.clone());
    TestApp::start_tuned(db, settings, |config| {
        config.spapi.request_timeout = Duration::from_secs(1);
        config.spapi.connect_timeout = Duration::from_secs(1);
        config.tokens.refresh_tick = Duration::from_secs(3600);
        config.tokens.force_refresh_min_age = chrono::TimeDelta::zero();
    })
    .await
    .expect("app starts")
}

/// What the workers saw, per connection.
#[derive(Default)]
struct Seen {
    /// Responses that may have asked LWA: token answers not served from memory, errors,
    /// and connection tests.
    may_have_fetched: usize,
    tokens: usize,
    stale: usize,
    errors: HashMap<String, usize>,
}

/// Guards, under concurrent load with a random mix of every fault: a transient failure
/// setting a status (the classification of timeouts, resets, 429, 5xx, HTML or bad JSON
/// as a refusal), the stale fallback's expiry guard, a retry loop without its bound
/// (LWA attempts are counted per connection against the fetches callers caused), a
/// panic or 500 on any malformed answer, and a failure remembered past Amazon's
/// recovery.
async fn a_random_mix_of_faults_under_load_breaks_nothing(backend: Backend) {
    let fake = FakeLwa::start().await;
    // Tokens expire within the run, so expired tokens, refetches and stale serving all
    // happen under faults.
    fake.set_expires_in(4);
    let chaos = Chaos::start(&fake.spapi_url, seed()).await;
    let app = Arc::new(app_behind(backend, &chaos).await);
    let connections = 24;
    let mut ids = Vec::new();
    for n in 0..connections {
        let created = app.create_connection(&connection_body(n)).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }

    chaos.set_fault_rate(0.3);
    let seen: Arc<Mutex<HashMap<u32, Seen>>> = Arc::default();
    let until = Instant::now() + Duration::from_secs(4 * u64::from(reliability_scale()));
    let mut workers = Vec::new();
    for worker in 0..32u32 {
        let app = app.clone();
        let ids = ids.clone();
        let fake = fake.clone();
        let seen = seen.clone();
        workers.push(tokio::spawn(async move {
            let mut requests = 0usize;
            let mut round = worker as usize;
            while Instant::now() < until {
                round += 7;
                let n = (round % ids.len()) as u32;
                let id = &ids[n as usize];
                let outcome = match round % 10 {
                    0 => test_connection(&app, id).await,
                    1 => token(&app, &fake, n, id, "?min_ttl=1&force_refresh=true").await,
                    _ => token(&app, &fake, n, id, "?min_ttl=1").await,
                };
                let mut seen = seen.lock().unwrap();
                let entry = seen.entry(n).or_default();
                match outcome {
                    Outcome::Hit => entry.tokens += 1,
                    Outcome::Fetched => {
                        entry.tokens += 1;
                        entry.may_have_fetched += 1;
                    }
                    Outcome::Stale => {
                        entry.tokens += 1;
                        entry.stale += 1;
                        entry.may_have_fetched += 1;
                    }
                    Outcome::Tested => entry.may_have_fetched += 1,
                    Outcome::Failed(code) => {
                        *entry.errors.entry(code).or_default() += 1;
                        entry.may_have_fetched += 1;
                    }
                }
                requests += 1;
            }
            requests
        }));
    }
    let mut requests = 0;
    for worker in workers {
        requests += worker.await.expect("a worker's checks held");
    }

    let faults = chaos.faults();
    let faulted: usize = faults
        .iter()
        .filter(|(fault, _)| **fault != Fault::Pass)
        .map(|(_, count)| count)
        .sum();
    for fault in Fault::ALL_FAULTS {
        assert!(
            faults.get(&fault).copied().unwrap_or(0) > 0,
            "{fault:?} never drawn: {faults:?}"
        );
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut errors = 0;
    let mut stale = 0;
    let mut codes: std::collections::BTreeMap<String, usize> = Default::default();
    for (n, seen) in &seen {
        let attempts = chaos.lwa_attempts_for(&refresh_token(*n));
        assert!(
            attempts <= MAX_ATTEMPTS * seen.may_have_fetched,
            "connection {n}: {attempts} LWA attempts for {} fetches at most",
            seen.may_have_fetched
        );
        errors += seen.errors.values().sum::<usize>();
        for (code, count) in &seen.errors {
            *codes.entry(code.clone()).or_default() += count;
        }
        stale += seen.stale;
    }
    assert!(
        errors > 0,
        "the faults reached no caller: the run proves nothing"
    );

    // Amazon recovers: every connection serves a fresh token, and is still active.
    chaos.set_fault_rate(0.0);
    for (n, id) in ids.iter().enumerate() {
        let outcome = token(&app, &fake, n as u32, id, "?min_ttl=1").await;
        assert!(
            matches!(outcome, Outcome::Hit | Outcome::Fetched),
            "connection {n} did not recover"
        );
        let stored = app.get_json(&format!("/connections/{id}")).await;
        assert_eq!(stored["status"], "active", "connection {n}: {stored}");
    }
    assert!(matches!(
        test_connection(&app, &ids[0]).await,
        Outcome::Tested
    ));

    report(
        &format!("faults from Amazon ({backend:?})"),
        &format!(
            "{requests} requests from 32 workers over {connections} connections; {} LWA and \
             {} SP-API requests, {faulted} of them faulted ({} kinds); {errors} errors \
             {codes:?} and {stale} stale tokens handed out",
            chaos.lwa_attempts(),
            chaos.spapi_requests(),
            Fault::ALL_FAULTS.len(),
        ),
        "no 500, no status changed, no expired token, attempts within 3 per fetch, \
         recovered at once",
    );
}

enum Outcome {
    Hit,
    Fetched,
    Stale,
    Tested,
    Failed(String),
}

/// A token request, checked: a token is one the fake issued for this connection's refresh
/// token and not expired when asked for; an error is a transient one.
async fn token(app: &TestApp, fake: &FakeLwa, n: u32, id: &str, query: &str) -> Outcome {
    let sent = Instant::now();
    let response = app
        .get(&format!("/connections/{id}/token{query}"), ADMIN_KEY)
        .await;
    if response.status() != StatusCode::OK {
        return Outcome::Failed(transient_problem(response).await);
    }
    let cache = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let access_token = body["access_token"].as_str().unwrap();
    assert_eq!(
        fake.issued_for(access_token).as_deref(),
        Some(refresh_token(n).as_str()),
        "connection {n} was handed a token not issued for it"
    );
    // Handed out after the request was sent: expired by then is expired when handed out.
    // (Whether it expired on its way back depends on the machine's load, not the service.)
    let expiry = fake.expiry_of(access_token).expect("a refresh-token grant");
    assert!(
        sent < expiry,
        "connection {n} was handed an expired token ({cache})"
    );
    assert!(body["expires_in"].as_i64().unwrap() >= 1, "{body}");
    match cache.as_str() {
        "connection-registry; hit" => Outcome::Hit,
        "connection-registry; fwd=miss" => Outcome::Fetched,
        "connection-registry; hit; detail=stale" => Outcome::Stale,
        other => panic!("unknown cache-status {other}"),
    }
}

/// A connection test, checked: a report, or a transient error.
async fn test_connection(app: &TestApp, id: &str) -> Outcome {
    let response = app
        .post(&format!("/connections/{id}/test"), ADMIN_KEY, &json!({}))
        .await;
    if response.status() != StatusCode::OK {
        return Outcome::Failed(transient_problem(response).await);
    }
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["ok"], true, "{report}");
    Outcome::Tested
}

/// The code of a retry-later problem; fails on anything else.
async fn transient_problem(response: reqwest::Response) -> String {
    let status = response.status();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.expect("a problem+json body");
    let code = body["code"].as_str().unwrap_or_default().to_owned();
    assert!(
        matches!(status.as_u16(), 502..=504) && TRANSIENT.contains(&code.as_str()),
        "a transient fault gave {status}: {body}"
    );
    assert!(retry_after, "{status} {code} without Retry-After");
    assert_eq!(body["status"], status.as_u16());
    code
}

/// Guards, one fault kind at a time with every request faulted: retries stop at
/// `max_attempts` (three LWA requests per caller, counted), unusable answers are not
/// retried, each kind maps to its transient error, and the connection stays `active`.
async fn each_fault_is_retried_within_the_bound_then_reported() {
    let fake = FakeLwa::start().await;
    let chaos = Chaos::start(&fake.spapi_url, seed()).await;
    let app = app_behind(Backend::Sqlite, &chaos).await;
    let created = app.create_connection(&connection_body(1)).await;
    let id = created["id"].as_str().unwrap().to_owned();
    // Active first (a first token), then every token request a fresh fetch.
    let first = app
        .get(&format!("/connections/{id}/token"), ADMIN_KEY)
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    // Attempts per caller: failures of the network or of Amazon's service are retried;
    // a complete answer that is not a token (HTML, bad or incomplete JSON) is not, as
    // asking again would bring the same.
    let expected = [
        (Fault::Silence, "lwa_unavailable", MAX_ATTEMPTS),
        (Fault::Reset, "lwa_unavailable", MAX_ATTEMPTS),
        (Fault::Throttle, "lwa_unavailable", MAX_ATTEMPTS),
        (Fault::ServerError, "lwa_unavailable", MAX_ATTEMPTS),
        (Fault::Unavailable, "lwa_unavailable", MAX_ATTEMPTS),
        (Fault::ShortBody, "lwa_unavailable", MAX_ATTEMPTS),
        (Fault::Html, "lwa_protocol_error", 1),
        (Fault::TruncatedJson, "lwa_protocol_error", 1),
        (Fault::MissingFields, "lwa_protocol_error", 1),
    ];
    let mut tried = 0;
    for (fault, code, attempts_expected) in expected {
        chaos.always(fault);
        let before = chaos.lwa_attempts();
        let response = app
            .get(
                &format!("/connections/{id}/token?force_refresh=true"),
                ADMIN_KEY,
            )
            .await;
        assert_eq!(transient_problem(response).await, code, "{fault:?}");
        let attempts = chaos.lwa_attempts() - before;
        tried += attempts;
        assert_eq!(
            attempts, attempts_expected,
            "{fault:?}: LWA attempts for one caller"
        );
    }
    let stored = app.get_json(&format!("/connections/{id}")).await;
    assert_eq!(stored["status"], "active", "{stored}");

    chaos.set_fault_rate(0.0);
    let response = app
        .get(&format!("/connections/{id}/token"), ADMIN_KEY)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    report(
        "faults from Amazon, one kind at a time",
        &format!(
            "{} kinds, each on every LWA request: {tried} attempts",
            expected.len()
        ),
        "3 attempts per caller for transport and 5xx faults, 1 for unusable answers; \
         right error code, status kept",
    );
}
