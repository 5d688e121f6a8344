//! Bad input: a clear problem+json naming every bad field, and nothing changes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    ADMIN_KEY, Backend, TestApp, connection_body, invalid_fields, problem, spawn_app,
};

both_backends!(
    every_invalid_create_field_is_named_and_nothing_is_stored,
    each_field_rule_is_enforced,
    malformed_oversized_and_mistyped_bodies_are_refused,
    invalid_patch_names_fields_and_changes_nothing,
    invalid_list_parameters_are_named,
);

async fn assert_nothing_stored(app: &TestApp) {
    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"], json!([]), "a failed request stored nothing");
}

async fn every_invalid_create_field_is_named_and_nothing_is_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({
        "name": "",
        "account_type": "buyer",
        "region": "us",
        "environment": "prod",
        "client_id": "amzn1.application-oa2-client.XYZ",
        "client_secret": "short",
        "client_secret_expires_at": "tomorrow",
        "refresh_token": "Atza|not-a-refresh-token",
        "merchant_token": "seller-1",
        "application_id": "app-1",
        "status": "active",
    });
    let problem = problem(
        app.post("/connections", ADMIN_KEY, &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        invalid_fields(&problem),
        [
            "account_type",
            "application_id",
            "client_id",
            "client_secret",
            "client_secret_expires_at",
            "environment",
            "merchant_token",
            "name",
            "refresh_token",
            "region",
            "status"
        ]
    );
    for error in problem["errors"].as_array().unwrap() {
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    // The rejected secret is not echoed back.
    assert!(!problem.to_string().contains("Atza|not-a-refresh-token"));

    let missing = super::helpers::problem(
        app.post("/connections", ADMIN_KEY, &json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        invalid_fields(&missing),
        [
            "client_id",
            "client_secret",
            "environment",
            "merchant_token",
            "refresh_token",
            "region"
        ]
    );
    assert_nothing_stored(&app).await;
}

/// One field at a time: (field, bad value, accepted neighbour value).
async fn each_field_rule_is_enforced(backend: Backend) {
    let app = spawn_app(backend).await;
    let long_token = format!("Atzr|{}", "x".repeat(2044));
    let cases: Vec<(&str, Value)> = vec![
        ("region", json!("EU")),
        ("region", json!(1)),
        ("environment", json!("Production")),
        ("account_type", json!("Vendor")),
        (
            "client_id",
            json!("amzn1.application-oa2-client.0123456789ABCDEF0123456789abcdef"),
        ),
        ("client_id", json!("amzn1.application-oa2-client.0123")),
        ("client_secret", json!("secret with spaces in it")),
        ("client_secret", json!(["amzn1.oa2-cs.v1.x"])),
        ("refresh_token", json!("Atzr|")),
        ("refresh_token", json!(long_token)),
        ("refresh_token", json!("Atzr|has space")),
        ("merchant_token", json!("A12345678")),
        ("merchant_token", json!("A1234567890123456")),
        ("merchant_token", json!("a1exampleseller")),
        // Amazon.com's marketplace id: the shape of a merchant token, but not one.
        ("merchant_token", json!("ATVPDKIKX0DER")),
        ("application_id", json!("amzn1.sp.solution.not-a-uuid")),
        ("client_secret_expires_at", json!("2027-13-01T00:00:00Z")),
        ("name", json!("x".repeat(201))),
        ("name", json!("line\nbreak")),
    ];
    for (field, value) in cases {
        let mut body = connection_body(1);
        body[field] = value.clone();
        let problem = problem(
            app.post("/connections", ADMIN_KEY, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(invalid_fields(&problem), [field], "{field} = {value}");
    }
    // A marketplace id is named as what it is.
    let mut body = connection_body(1);
    body["merchant_token"] = json!("A1PA6795UKMFR9");
    let refused = problem(
        app.post("/connections", ADMIN_KEY, &body).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        refused["errors"],
        json!([{"field": "merchant_token", "message":
            "this is the marketplace id of Amazon.de, not a seller's merchant token"}])
    );
    assert_nothing_stored(&app).await;

    // What the formats allow at their edges.
    let mut body = connection_body(1);
    body["merchant_token"] = json!("A123456789012345");
    body["client_secret"] = json!("a-future-secret-format-0001");
    body["refresh_token"] = json!(format!("Atzr|{}", "x".repeat(2043)));
    body["application_id"] = json!("amzn1.sellerapps.app.1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9");
    body["region"] = json!("fe");
    body["environment"] = json!("sandbox");
    let created = app.create_connection(&body).await;
    assert_eq!(created["client_secret_hint"], "0001");
}

async fn malformed_oversized_and_mistyped_bodies_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let post_raw = |body: Vec<u8>, content_type: &'static str| {
        let request = app
            .client
            .post(app.url("/connections"))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", content_type)
            .body(body);
        async move { request.send().await.unwrap() }
    };
    problem(
        post_raw(b"{\"region\": ".to_vec(), "application/json").await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    problem(
        post_raw(b"[1, 2]".to_vec(), "application/json").await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
    problem(
        post_raw(connection_body(1).to_string().into_bytes(), "text/plain").await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    // The limit's edge: a body of exactly 64 KiB (padded with JSON whitespace) is read,
    // one byte more is refused before it is parsed.
    let padded = |len: usize| {
        let mut body = connection_body(1).to_string().into_bytes();
        body.resize(len, b' ');
        body
    };
    let body = problem(
        post_raw(padded(64 * 1024 + 1), "application/json").await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert_eq!(body["detail"], "request body is larger than 65536 bytes");
    assert_nothing_stored(&app).await;
    let at_limit = post_raw(padded(64 * 1024), "application/json").await;
    assert_eq!(at_limit.status(), StatusCode::CREATED);
    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // Only JSON media types: `application/*+json` is JSON, `application/xml` is not.
    problem(
        post_raw(
            connection_body(1).to_string().into_bytes(),
            "application/xml",
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    problem(
        post_raw(connection_body(1).to_string().into_bytes(), "text/json").await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let vendor = post_raw(
        connection_body(1).to_string().into_bytes(),
        "application/vnd.registry+json",
    )
    .await;
    assert_eq!(vendor.status(), StatusCode::CREATED);
    // A charset parameter is still JSON.
    let ok = post_raw(
        connection_body(1).to_string().into_bytes(),
        "application/json; charset=utf-8",
    )
    .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let list: Value = app.get_json("/connections").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
}

async fn invalid_patch_names_fields_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_connection(&connection_body(1)).await;
    let path = format!("/connections/{}", created["id"].as_str().unwrap());
    let problem = problem(
        app.patch(
            &path,
            ADMIN_KEY,
            &json!({
                "name": "Fine name",
                "region": null,
                "client_secret": null,
                "merchant_token": "nope",
                "id": "01234567-0000-7000-8000-000000000000",
                "marketplace_ids": ["ATVPDKIKX0DER"],
            }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        invalid_fields(&problem),
        [
            "client_secret",
            "id",
            "marketplace_ids",
            "merchant_token",
            "region"
        ]
    );
    let read: Value = app.get_json(&path).await;
    assert_eq!(
        read, created,
        "a failed PATCH changes nothing, not even the valid name"
    );

    let raw = app
        .client
        .patch(app.url(&path))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    super::helpers::problem(raw, StatusCode::BAD_REQUEST, "malformed_json").await;
}

async fn invalid_list_parameters_are_named(backend: Backend) {
    let app = spawn_app(backend).await;
    let problem = problem(
        app.get(
            "/connections?limit=201&cursor=garbage&status=broken&region=us&environment=x&merchant_token=1&colour=red",
            ADMIN_KEY,
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(
        invalid_fields(&problem),
        [
            "colour",
            "cursor",
            "environment",
            "limit",
            "merchant_token",
            "region",
            "status"
        ]
    );
    for limit in ["0", "-1", "abc", "1.5"] {
        problem_for_limit(&app, limit).await;
    }
}

async fn problem_for_limit(app: &TestApp, limit: &str) {
    let body = problem(
        app.get(&format!("/connections?limit={limit}"), ADMIN_KEY)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(invalid_fields(&body), ["limit"], "limit={limit}");
}
