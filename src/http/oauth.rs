//! Website authorization over HTTP: `POST /connections/{id}/authorization-url` for the
//! frontend, and `GET /oauth/callback`, where Amazon sends the seller's browser back (no
//! API key: the browser has none; the single-use state is what authorizes it).
//!
//! The callback answers a browser, not a program: a redirect to the operator's return
//! URL, or without one a short page. Its URL carries the state and code, so no answer may
//! be cached or leak it onward (`Referrer-Policy: no-referrer`).

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use reqwest::Url;
use serde::Serialize;

use super::error::{ApiError, callback_failure};
use super::extract::{Caller, ConnectionsWrite, Id, OptionalJsonObject};
use super::fields::{Fields, boolean, string};
use crate::app::AppState;
use crate::domain::{ConnectionId, Marketplace, ParseError};
use crate::website_auth::{Authorized, CallbackError, CallbackQuery, ConsentRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/connections/{id}/authorization-url",
            post(authorization_url),
        )
        .route("/oauth/callback", get(callback))
}

#[derive(Serialize)]
struct AuthorizationUrlBody<'a> {
    authorization_url: &'a str,
    state: &'a str,
    expires_at: DateTime<Utc>,
    /// Must be one of the application's OAuth redirect URIs in Developer Central.
    redirect_uri: &'a str,
}

async fn authorization_url(
    _caller: Caller<ConnectionsWrite>,
    State(state): State<AppState>,
    Id(id): Id<ConnectionId>,
    OptionalJsonObject(body): OptionalJsonObject,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(body);
    let draft = f.optional("draft", boolean);
    let marketplace = f.optional("marketplace_id", string(marketplace));
    f.finish()?;
    let request = ConsentRequest {
        draft: draft.unwrap_or(false),
        marketplace,
    };
    let consent = state.website_auth.consent_url(id, request).await?;
    let redirect_uri = state
        .website_auth
        .redirect_uri()
        .map_or("", Url::as_str)
        .to_owned();
    let mut response = Json(AuthorizationUrlBody {
        authorization_url: consent.authorization_url.as_str(),
        state: consent.state.expose(),
        expires_at: consent.expires_at,
        redirect_uri: &redirect_uri,
    })
    .into_response();
    // The state finishes an authorization: nothing on the way may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn marketplace(id: &str) -> Result<&'static Marketplace, ParseError> {
    Marketplace::find(id).ok_or_else(|| ParseError::new("is not a known marketplace id"))
}

async fn callback(
    State(state): State<AppState>,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let outcome = match query {
        Ok(Query(query)) => state.website_auth.complete(query).await,
        Err(_) => Err(CallbackError::InvalidRequest {
            field: "query",
            problem: "is not a query Amazon sends".into(),
        }),
    };
    let code = match &outcome {
        Ok(_) => "authorized",
        Err(err) => callback_failure(err).1,
    };
    metrics::counter!("registry_website_authorizations_total", "outcome" => code).increment(1);
    if let Err(CallbackError::Internal(cause)) = &outcome {
        tracing::error!(error = format!("{cause:#}"), "website authorization failed");
    }
    let mut response = match state.website_auth.return_url() {
        Some(return_url) => redirect(return_url, &outcome),
        None => page(&outcome),
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// 303 to the return URL with `connection_id` and `status`, or `error` (and the
/// connection, once known).
fn redirect(return_url: &Url, outcome: &Result<Authorized, CallbackError>) -> Response {
    let mut url = return_url.clone();
    {
        let mut query = url.query_pairs_mut();
        match outcome {
            Ok(authorized) => {
                query
                    .append_pair("connection_id", &authorized.connection_id.to_string())
                    .append_pair("status", authorized.status.as_str());
            }
            Err(err) => {
                if let Some(id) = err.connection_id() {
                    query.append_pair("connection_id", &id.to_string());
                }
                query.append_pair("error", callback_failure(err).1);
            }
        }
    }
    let location = HeaderValue::from_str(url.as_str()).expect("a URL is a valid header value");
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// A page that says what happened, for when no return URL is configured.
fn page(outcome: &Result<Authorized, CallbackError>) -> Response {
    let (status, title, message) = match outcome {
        Ok(authorized) => (
            StatusCode::OK,
            "Authorization complete",
            format!(
                "The connection {} is {}. You can close this window.",
                authorized.connection_id,
                authorized.status.as_str()
            ),
        ),
        Err(err) => {
            let (status, _, message) = callback_failure(err);
            (status, "Authorization failed", message)
        }
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title></head>\n<body><h1>{title}</h1>\n<p>{}</p></body></html>\n",
        escape_html(&message)
    );
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'"),
            ),
        ],
        html,
    )
        .into_response()
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}
