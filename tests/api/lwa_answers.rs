//! What LWA sends back is untrusted: a redirect is never followed, an oversized answer is
//! not read, and secrets echoed back reach no response, row or log line.

use reqwest::StatusCode;
use serde_json::Value;

use crate::both_backends;
use crate::fake_amazon::{Echo, FakeLwa, LwaMode};
use crate::helpers::{Backend, client_secret, problem, refresh_token, spawn_with_lwa};
use crate::tokens::{authorize, connection, read, token};

both_backends!(
    a_redirect_from_lwa_is_a_protocol_error_and_is_not_followed,
    secrets_lwa_echoes_back_reach_no_response_or_row,
    an_oversized_lwa_answer_is_refused,
);

/// Guards `Policy::none()` and the redirect check in `LwaClient::attempt`: reqwest
/// follows a 307 with the same form, so the client secret and refresh token went to the
/// other host and its token was handed to workers.
async fn a_redirect_from_lwa_is_a_protocol_error_and_is_not_followed(backend: Backend) {
    let lwa = FakeLwa::start().await;
    let elsewhere = FakeLwa::start().await;
    lwa.redirect_to(&elsewhere.token_url);
    let app = spawn_with_lwa(backend, &lwa).await;
    let id = connection(&app, 1).await;

    let refused = problem(
        authorize(&app, &id).await,
        StatusCode::BAD_GATEWAY,
        "lwa_protocol_error",
    )
    .await;
    assert_eq!(
        refused["detail"],
        "LWA answered unexpectedly: HTTP 307 Temporary Redirect: a redirect, which is never \
         followed"
    );
    problem(
        token(&app, &id, "").await,
        StatusCode::BAD_GATEWAY,
        "lwa_protocol_error",
    )
    .await;
    assert_eq!(
        elsewhere.calls(),
        0,
        "nothing was sent to the redirect's target"
    );
    assert_eq!(
        lwa.calls(),
        2,
        "one call each, a protocol error is not retried"
    );
    let stored = read(&app, &id).await;
    assert_eq!(stored["status"], "pending");
    assert_eq!(stored["last_error"]["code"], "lwa_protocol_error");
}

/// Guards the scrubbing at the boundary of `LwaClient::attempt`: the `error` field of a
/// 429 or 5xx with an unknown code went into the message raw, so a secret LWA echoed
/// reached the 503's detail and `last_error`. Every status class, every place.
async fn secrets_lwa_echoes_back_reach_no_response_or_row(backend: Backend) {
    let lwa = FakeLwa::start().await;
    let app = spawn_with_lwa(backend, &lwa).await;
    let places = [Echo::ErrorField, Echo::Description, Echo::PlainBody];
    let statuses = [400, 401, 429, 500, 503];
    let mut n = 0;
    for status in statuses {
        for place in places {
            n += 1;
            lwa.set_mode(LwaMode::EchoSecrets { status, place });
            let id = connection(&app, n).await;
            let authorized = authorize(&app, &id).await;
            let answer_status = authorized.status();
            let answer = authorized.text().await.unwrap();
            let worker = token(&app, &id, "").await.text().await.unwrap();
            let stored: Value = read(&app, &id).await;
            let last_error = stored["last_error"].to_string();
            assert!(
                stored["last_error"]["code"].is_string(),
                "{status} {place:?}: the failure is recorded: {stored}"
            );
            let secrets = [refresh_token(n), client_secret(n)];
            for text in [&answer, &worker, &last_error] {
                for secret in &secrets {
                    // Whole, and without the prefix that says what it is.
                    let tail = &secret[secret.len() - 24..];
                    assert!(
                        !text.contains(tail),
                        "{status} {place:?} ({answer_status}): a secret came back: {text}"
                    );
                }
            }
        }
    }
    assert_eq!(n, 15);
}

/// Guards `read_bounded`: LWA's body was read whole, however large.
async fn an_oversized_lwa_answer_is_refused(backend: Backend) {
    let lwa = FakeLwa::start().await;
    lwa.set_mode(LwaMode::Huge);
    let app = spawn_with_lwa(backend, &lwa).await;
    let id = connection(&app, 1).await;
    let refused = problem(
        authorize(&app, &id).await,
        StatusCode::BAD_GATEWAY,
        "lwa_protocol_error",
    )
    .await;
    assert_eq!(
        refused["detail"],
        "LWA answered unexpectedly: the answer is larger than 65536 bytes"
    );
    assert_eq!(read(&app, &id).await["status"], "pending");
}
