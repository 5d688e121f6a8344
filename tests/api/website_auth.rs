//! Website authorization: the consent URL a connection gets, and the browser's return to
//! `/oauth/callback` with the code the fake LWA issued for a seller's consent, over HTTP.
//! A failed callback changes nothing but using up its state.

use chrono::{Duration, Utc};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

use connection_registry::domain::ConnectionId;

use crate::both_backends;
use crate::fake_amazon::{FakeLwa, LwaMode};
use crate::helpers::{
    ADMIN_KEY, APPLICATION_ID, Backend, MASTER_KEYS, PUBLIC_URL, TestApp, TestDb, connection_body,
    problem, refresh_token, settings, spawn_app, spawn_with_amazon,
};
use crate::tokens::{authorize, read, token_ok};

both_backends!(
    a_consent_returns_an_active_connection_with_the_new_refresh_token,
    every_failed_return_changes_nothing_and_says_why,
    without_a_return_url_the_browser_gets_a_page,
    consent_urls_follow_the_account_the_region_and_the_draft,
    a_consent_url_needs_the_feature_an_application_and_good_input,
);

const RETURN_URL: &str = "https://app.example.com/amazon/done?tab=2";
const REDIRECT_URI: &str = "https://registry.example.com/oauth/callback";
const SELLER: &str = "A1EXAMPLESELLER";

/// An app with website authorization on and, if given, a return URL.
async fn spawn(backend: Backend, fake: &FakeLwa, return_url: Option<&str>) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut settings = settings(&db, Some(MASTER_KEYS));
    settings.lwa_token_url = fake.token_url.clone();
    settings.spapi_url = Some(fake.spapi_url.clone());
    settings.public_url = Some(PUBLIC_URL.into());
    settings.oauth_return_url = return_url.map(str::to_owned);
    TestApp::start_with(db, settings).await.expect("app starts")
}

/// A connection of the public application, refresh token `n`.
async fn public_connection(app: &TestApp, n: u32, change: impl FnOnce(&mut Value)) -> String {
    let mut body = connection_body(n);
    body["application_id"] = json!(APPLICATION_ID);
    change(&mut body);
    app.create_connection(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn consent_url(app: &TestApp, id: &str, body: Option<Value>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(&format!("/connections/{id}/authorization-url")))
        .bearer_auth(ADMIN_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// A consent URL's body, its state registered as a secret for the log scan.
async fn consent_ok(app: &TestApp, id: &str, body: Option<Value>) -> Value {
    let response = consent_url(app, id, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    crate::logs::secret(body["state"].as_str().unwrap());
    body
}

/// The browser's return, as Amazon redirects it; redirects are not followed.
async fn callback(app: &TestApp, query: &[(&str, &str)]) -> reqwest::Response {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = Url::parse(&app.url("/oauth/callback")).unwrap();
    url.query_pairs_mut().extend_pairs(query);
    browser.get(url).send().await.unwrap()
}

/// The browser's return with all three parameters Amazon sends.
async fn back(app: &TestApp, state: &str, seller: &str, code: &str) -> reqwest::Response {
    callback(
        app,
        &[
            ("state", state),
            ("selling_partner_id", seller),
            ("spapi_oauth_code", code),
        ],
    )
    .await
}

/// Where a callback sent the browser, as query pairs after the return URL's own.
fn returned_to(response: &reqwest::Response) -> Vec<(String, String)> {
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    let location = Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        location.as_str().split('?').next(),
        Some("https://app.example.com/amazon/done")
    );
    location.query_pairs().into_owned().collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Guards the whole flow, repairing a connection whose refresh token was revoked: the
/// consent URL's parts, the exchange with the redirect URI the URL named, the new
/// refresh token stored (the next LWA exchange sends it), the first access token stored
/// (no refresh call), `active` (workers served again) and `authorized_at`, the browser
/// sent back with the connection and status, and the state single-use.
async fn a_consent_returns_an_active_connection_with_the_new_refresh_token(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn(backend, &fake, Some(RETURN_URL)).await;
    let id = public_connection(&app, 1, |_| {}).await;
    // The seller revoked the app: workers are stopped until a new authorization.
    fake.refuse_refresh_token(&refresh_token(1));
    let response = authorize(&app, &id).await;
    problem(response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_grant").await;
    let response = app
        .get(&format!("/connections/{id}/token"), ADMIN_KEY)
        .await;
    problem(response, StatusCode::CONFLICT, "connection_not_authorized").await;
    assert_eq!(fake.calls(), 1);

    let before = Utc::now();
    let consent = consent_ok(&app, &id, None).await;
    let state = consent["state"].as_str().unwrap();
    assert_eq!(state.len(), 43);
    assert_eq!(consent["redirect_uri"], REDIRECT_URI);
    let expires_at: chrono::DateTime<Utc> =
        serde_json::from_value(consent["expires_at"].clone()).unwrap();
    let lifetime = expires_at - before;
    assert!(
        lifetime > Duration::seconds(595) && lifetime <= Duration::seconds(602),
        "{lifetime}"
    );
    let url = Url::parse(consent["authorization_url"].as_str().unwrap()).unwrap();
    assert_eq!(url.host_str(), Some("sellercentral-europe.amazon.com"));
    assert_eq!(url.path(), "/apps/authorize/consent");
    assert_eq!(
        url.query_pairs().into_owned().collect::<Vec<_>>(),
        pairs(&[
            ("application_id", APPLICATION_ID),
            ("state", state),
            ("redirect_uri", REDIRECT_URI),
        ])
    );
    let store = app.db.store().await;
    let connection_id = ConnectionId::parse(&id).unwrap();
    assert_eq!(store.count_oauth_states(connection_id).await.unwrap(), 1);

    let code = fake.consent(&refresh_token(2), REDIRECT_URI);
    let response = back(&app, state, SELLER, &code).await;
    assert_eq!(
        returned_to(&response),
        pairs(&[("tab", "2"), ("connection_id", &id), ("status", "active")])
    );
    assert_eq!(fake.code_exchanges(), 1);
    assert_eq!(store.count_oauth_states(connection_id).await.unwrap(), 0);

    let connection = read(&app, &id).await;
    assert_eq!(connection["status"], "active");
    assert_eq!(connection["last_error"], Value::Null);
    let authorized_at: chrono::DateTime<Utc> =
        serde_json::from_value(connection["authorized_at"].clone()).unwrap();
    assert!(authorized_at >= before - Duration::seconds(1));

    // The exchange's access token is served; LWA is not asked again.
    let (served, _) = token_ok(&app, &id, "").await;
    let access_token = served["access_token"].as_str().unwrap();
    assert_eq!(fake.issued_for(access_token), Some(refresh_token(2)));
    assert_eq!(
        fake.calls(),
        2,
        "the refused refresh, then only the code exchange"
    );
    // The next exchange sends the new refresh token.
    let response = authorize(&app, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fake.calls_for(&refresh_token(2)), 1);
    assert_eq!(fake.calls_for(&refresh_token(1)), 1, "only the refused one");

    // The same return again: the state is used up, and LWA is not asked.
    let again = back(&app, state, SELLER, &code).await;
    assert_eq!(
        returned_to(&again),
        pairs(&[("tab", "2"), ("error", "invalid_state")])
    );
    assert_eq!(fake.code_exchanges(), 1);
}

/// Guards each refusal: its error code in the return (with the connection once the state
/// named one), no LWA exchange before the state and seller checked out, the state used
/// up by any attempt, and the connection as it was: pending, never authorized, and still
/// refreshing with its first refresh token.
async fn every_failed_return_changes_nothing_and_says_why(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn(backend, &fake, Some(RETURN_URL)).await;
    let id = public_connection(&app, 1, |_| {}).await;
    let connection_id = ConnectionId::parse(&id).unwrap();
    let store = app.db.store().await;
    let before = read(&app, &id).await;
    let good_code = fake.consent(&refresh_token(2), REDIRECT_URI);
    let fail = |code: &'static str, with_connection: bool| {
        let mut expected = vec![("tab", "2")];
        if with_connection {
            expected.push(("connection_id", id.as_str()));
        }
        expected.push(("error", code));
        pairs(&expected)
    };
    let new_state = || async {
        consent_ok(&app, &id, None).await["state"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Nothing Amazon would send.
    let response = callback(&app, &[]).await;
    assert_eq!(returned_to(&response), fail("invalid_request", false));
    let state = new_state().await;
    let response = callback(&app, &[("state", &state), ("selling_partner_id", SELLER)]).await;
    assert_eq!(returned_to(&response), fail("invalid_request", false));
    // That used the state up: complete now, it is refused.
    let response = back(&app, &state, SELLER, &good_code).await;
    assert_eq!(returned_to(&response), fail("invalid_state", false));
    // A state this service never issued (of the right shape), and one of the wrong shape.
    let forged = "A".repeat(43);
    for bad_state in [forged.as_str(), "not-a-state"] {
        let response = back(&app, bad_state, SELLER, &good_code).await;
        let code = if bad_state == forged {
            "invalid_state"
        } else {
            "invalid_request"
        };
        assert_eq!(returned_to(&response), fail(code, false), "{bad_state}");
    }
    assert_eq!(fake.code_exchanges(), 0);

    // Expired: the state is older than its 10 minutes.
    let state = new_state().await;
    app.db
        .execute_at(
            "UPDATE oauth_states SET expires_at = $1",
            Utc::now() - Duration::seconds(1),
        )
        .await;
    let response = back(&app, &state, SELLER, &good_code).await;
    assert_eq!(returned_to(&response), fail("state_expired", true));

    // Another seller consented.
    let state = new_state().await;
    let response = back(&app, &state, "A2OTHERSELLER9", &good_code).await;
    assert_eq!(
        returned_to(&response),
        fail("merchant_token_mismatch", true)
    );
    assert_eq!(fake.code_exchanges(), 0, "no exchange for the wrong seller");

    // LWA refuses a code it did not issue.
    let state = new_state().await;
    let response = back(&app, &state, SELLER, "ANforgedcode").await;
    assert_eq!(returned_to(&response), fail("invalid_grant", true));
    assert_eq!(fake.code_exchanges(), 1);

    // LWA refuses the application's secret.
    fake.set_mode(LwaMode::InvalidClient);
    let state = new_state().await;
    let response = back(&app, &state, SELLER, &good_code).await;
    assert_eq!(returned_to(&response), fail("invalid_client", true));

    // LWA is down: one attempt only (a code is good once; the fake keeps it unused).
    fake.set_mode(LwaMode::ServerError);
    let state = new_state().await;
    let exchanges = fake.code_exchanges();
    let response = back(&app, &state, SELLER, &good_code).await;
    assert_eq!(returned_to(&response), fail("lwa_unavailable", true));
    assert_eq!(
        fake.code_exchanges(),
        exchanges + 1,
        "the code is not sent twice"
    );
    fake.set_mode(LwaMode::Issue);

    // Every attempt used its state up; the connection is as it was.
    assert_eq!(store.count_oauth_states(connection_id).await.unwrap(), 0);
    assert_eq!(read(&app, &id).await, before);
    let (served, _) = token_ok(&app, &id, "").await;
    assert_eq!(
        fake.issued_for(served["access_token"].as_str().unwrap()),
        Some(refresh_token(1))
    );

    // A state of a connection deleted since.
    let state = new_state().await;
    let response = app.delete(&format!("/connections/{id}"), ADMIN_KEY).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = back(&app, &state, SELLER, &good_code).await;
    assert_eq!(returned_to(&response), fail("invalid_state", false));
}

/// Guards the page answered without a return URL: its status, what it says, that it
/// repeats nothing from the request, and the headers that keep the URL's secrets in.
async fn without_a_return_url_the_browser_gets_a_page(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = public_connection(&app, 1, |_| {}).await;
    let state = consent_ok(&app, &id, None).await["state"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = fake.consent(&refresh_token(2), REDIRECT_URI);
    let query = [
        ("state", state.as_str()),
        ("selling_partner_id", SELLER),
        ("spapi_oauth_code", code.as_str()),
    ];

    let page = |response: reqwest::Response| async move {
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["content-security-policy"], "default-src 'none'");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["cache-control"], "no-store");
        (response.status(), response.text().await.unwrap())
    };
    let (status, text) = page(callback(&app, &query).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("<h1>Authorization complete</h1>"), "{text}");
    assert!(
        text.contains(&format!("The connection {id} is active.")),
        "{text}"
    );
    assert_eq!(read(&app, &id).await["status"], "active");

    let (status, text) = page(callback(&app, &query).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("<h1>Authorization failed</h1>"), "{text}");
    assert!(text.contains("unknown or was already used"), "{text}");
    assert!(!text.contains(&state) && !text.contains(&code), "{text}");

    let (status, text) = page(callback(&app, &[("state", "<script>")]).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        text.contains("`state` is not a state this service issued"),
        "{text}"
    );
    assert!(!text.contains("<script>"), "{text}");
}

/// Guards the choice of consent page: Vendor Central for vendors, the marketplace asked
/// for (or the region's main one), and `version=beta` only for a draft.
async fn consent_urls_follow_the_account_the_region_and_the_draft(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let host_and_version = |consent: Value| {
        let url = Url::parse(consent["authorization_url"].as_str().unwrap()).unwrap();
        let version = url
            .query_pairs()
            .find(|(name, _)| name == "version")
            .map(|(_, value)| value.into_owned());
        (url.host_str().unwrap().to_owned(), version)
    };
    let vendor = public_connection(&app, 1, |body| {
        body["account_type"] = json!("vendor");
        body["region"] = json!("na");
    })
    .await;
    assert_eq!(
        host_and_version(consent_ok(&app, &vendor, None).await),
        ("vendorcentral.amazon.com".to_owned(), None)
    );
    assert_eq!(
        host_and_version(
            consent_ok(
                &app,
                &vendor,
                Some(json!({"draft": true, "marketplace_id": "A2EUQ1WTGCTBG2"}))
            )
            .await
        ),
        (
            "vendorcentral.amazon.ca".to_owned(),
            Some("beta".to_owned())
        )
    );
    let seller = public_connection(&app, 2, |body| body["region"] = json!("fe")).await;
    assert_eq!(
        host_and_version(consent_ok(&app, &seller, Some(json!({"draft": false}))).await),
        ("sellercentral.amazon.co.jp".to_owned(), None)
    );
    assert_eq!(
        host_and_version(
            consent_ok(
                &app,
                &seller,
                Some(json!({"marketplace_id": "A39IBJ37TRP1C6"}))
            )
            .await
        ),
        ("sellercentral.amazon.com.au".to_owned(), None)
    );
    // Each URL has its own state.
    let one = consent_ok(&app, &seller, None).await;
    let two = consent_ok(&app, &seller, None).await;
    assert_ne!(one["state"], two["state"]);
    let store = app.db.store().await;
    assert_eq!(
        store
            .count_oauth_states(ConnectionId::parse(&seller).unwrap())
            .await
            .unwrap(),
        4
    );
}

/// Guards the refusals of `authorization-url`: off without REGISTRY_PUBLIC_URL, a
/// connection without an application id, bad fields named, an unknown connection; none
/// of them stores a state.
async fn a_consent_url_needs_the_feature_an_application_and_good_input(backend: Backend) {
    let fake = FakeLwa::start().await;
    let app = spawn_with_amazon(backend, &fake).await;
    let id = public_connection(&app, 1, |body| body["region"] = json!("na")).await;
    let store = app.db.store().await;

    let cases = [
        (json!({"draft": "yes"}), "draft", "must be true or false"),
        (
            json!({"marketplace_id": "XXXX"}),
            "marketplace_id",
            "is not a known marketplace id",
        ),
        (
            json!({"marketplace_id": "A1PA6795UKMFR9"}),
            "marketplace_id",
            "A1PA6795UKMFR9 is not a marketplace of the connection's region",
        ),
        (json!({"state": "mine"}), "state", "is not a known field"),
    ];
    for (body, field, message) in cases {
        let response = consent_url(&app, &id, Some(body.clone())).await;
        let problem = problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(
            problem["errors"],
            json!([{"field": field, "message": message}]),
            "{body}"
        );
    }
    let response = app
        .client
        .post(app.url(&format!("/connections/{id}/authorization-url")))
        .bearer_auth(ADMIN_KEY)
        .body("draft=true")
        .send()
        .await
        .unwrap();
    problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    let without_application = app.create_connection(&connection_body(2)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = consent_url(&app, &without_application, None).await;
    let body = problem(response, StatusCode::CONFLICT, "application_id_required").await;
    assert!(
        body["detail"].as_str().unwrap().contains("PATCH it"),
        "{body}"
    );

    let unknown = uuid::Uuid::now_v7().to_string();
    let response = consent_url(&app, &unknown, None).await;
    problem(response, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        store
            .count_oauth_states(ConnectionId::parse(&id).unwrap())
            .await
            .unwrap(),
        0
    );

    // Without REGISTRY_PUBLIC_URL the feature is off, and so is the callback.
    let plain = spawn_app(backend).await;
    let id = public_connection(&plain, 3, |_| {}).await;
    let response = consent_url(&plain, &id, None).await;
    let body = problem(response, StatusCode::CONFLICT, "website_authorization_off").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("REGISTRY_PUBLIC_URL"),
        "{body}"
    );
    let response = callback(&plain, &[("state", &"A".repeat(43))]).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
