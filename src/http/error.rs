//! `ApiError`: every failure a handler can return, and every conversion into it, turned
//! into `application/problem+json` (RFC 9457) here and nowhere else.
//!
//! Conversions only translate; the cause of a 500 or a 503 from the database is logged
//! once, when the response is rendered, and never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::amazon::lwa::LwaError;
use crate::amazon::spapi::SpApiError;
use crate::api_keys::ApiKeyError;
use crate::client_secrets::SecretError;
use crate::connection_test::TestError;
use crate::connections::ConnectionError;
use crate::crypto::CryptoError;
use crate::domain::Scope;
use crate::store::StoreError;
use crate::tokens::TokenError;
use crate::website_auth::{CallbackError, ConsentError};

/// Seconds a client should wait before retrying when the database is unavailable, or when
/// LWA is and gave no `Retry-After`.
const DEFAULT_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("invalid fields")]
    Validation(Vec<FieldError>),
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("this API key lacks the `{}` scope", .0.as_str())]
    Forbidden(Scope),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// Amazon refused the credentials: a 422 with LWA's error as the code.
    #[error("{detail}")]
    Refused { code: &'static str, detail: String },
    /// Come back later: Amazon is failing (502 for a nonsense answer, 503 when it is
    /// unavailable) or the request lost a race; always with `Retry-After`.
    #[error("{detail}")]
    RetryLater {
        status: StatusCode,
        code: &'static str,
        detail: String,
        retry_after_secs: u64,
    },
    #[error("no route for this method and path")]
    MethodNotAllowed,
    /// The cause is logged, not sent.
    #[error("the database is unavailable")]
    DatabaseUnavailable(String),
    #[error("the request took too long; retry later")]
    Timeout,
    /// A secret of this resource was sealed with a master key this replica lacks.
    #[error(
        "a secret this request needs is encrypted with master key `{0}`, which this replica \
         is not configured with; an operator must add it to REGISTRY_MASTER_KEYS"
    )]
    MasterKeyMissing(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::Refused { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::RetryLater { status, code, .. } => (*status, code),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::DatabaseUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "request_timeout"),
            Self::MasterKeyMissing(_) => (StatusCode::INTERNAL_SERVER_ERROR, "master_key_missing"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed")
            }
            Self::DatabaseUnavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
            }
            Self::MasterKeyMissing(key_id) => {
                tracing::error!(
                    key_id,
                    "a stored secret needs a master key that is not configured"
                );
            }
            _ => {}
        }
        let detail = match &self {
            Self::Validation(errors) => {
                let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
                format!("invalid fields: {}", fields.join(", "))
            }
            other => other.to_string(),
        };
        let problem = Problem {
            type_uri: format!("urn:connection-registry:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            code,
            errors: match &self {
                Self::Validation(errors) => Some(errors),
                _ => None,
            },
        };
        let body = serde_json::to_vec(&problem).expect("a problem always serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::DatabaseUnavailable(_) | Self::Timeout => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(DEFAULT_RETRY_AFTER_SECS),
                );
            }
            Self::RetryLater {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// One mapping for a store error, whether the handler owns it or shares it with the other
/// callers of one token fetch.
fn store_error(err: &StoreError) -> ApiError {
    match err {
        StoreError::NotFound => ApiError::NotFound("resource"),
        StoreError::Unavailable(cause) => ApiError::DatabaseUnavailable(cause.to_string()),
        StoreError::Conflict => ApiError::Conflict {
            code: "conflict",
            detail: "the resource changed concurrently; retry".into(),
        },
        StoreError::Exhausted => ApiError::RetryLater {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "database_busy",
            detail: "every database connection of this replica is busy; retry".into(),
            retry_after_secs: 1,
        },
        // Only token leases wait: another replica's LWA exchange for this connection is slow.
        StoreError::Busy => ApiError::RetryLater {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "token_fetch_in_progress",
            detail: "another replica is still fetching this connection's token; retry".into(),
            retry_after_secs: DEFAULT_RETRY_AFTER_SECS,
        },
        other => ApiError::Internal(anyhow::anyhow!("storage failed: {other}")),
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        store_error(&err)
    }
}

impl From<CryptoError> for ApiError {
    fn from(err: CryptoError) -> Self {
        match err {
            CryptoError::UnknownKey(key_id) => Self::MasterKeyMissing(key_id),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<ConnectionError> for ApiError {
    fn from(err: ConnectionError) -> Self {
        match err {
            ConnectionError::NotFound => Self::NotFound("connection"),
            ConnectionError::IdempotencyKeyReused => Self::Conflict {
                code: "idempotency_key_reused",
                detail: "this Idempotency-Key was already used with a different request body"
                    .into(),
            },
            ConnectionError::CredentialsChanged => Self::Conflict {
                code: "credentials_changed",
                detail: "the connection's credentials changed meanwhile; retry".into(),
            },
            ConnectionError::Store(err) => err.into(),
            ConnectionError::Crypto(err) => err.into(),
        }
    }
}

impl From<ApiKeyError> for ApiError {
    fn from(err: ApiKeyError) -> Self {
        match err {
            ApiKeyError::UnknownKey => Self::Unauthorized,
            ApiKeyError::NotFound => Self::NotFound("API key"),
            ApiKeyError::Store(err) => err.into(),
        }
    }
}

/// How a token failure reads to a sync worker: stop and alert (409), retry later (503 or
/// 502), or not found.
impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::NotFound => Self::NotFound("connection"),
            TokenError::NotAuthorized(status) => not_authorized(status.as_str()),
            TokenError::Rejected(lwa) => not_authorized(match lwa {
                LwaError::InvalidGrant(_) => "refresh_token_invalid",
                _ => "client_credentials_invalid",
            }),
            TokenError::Upstream(lwa) => {
                let (status, retry_after) = match &lwa {
                    LwaError::Unavailable { retry_after, .. } => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        retry_after.map(|wait| wait.as_secs()),
                    ),
                    _ => (StatusCode::BAD_GATEWAY, None),
                };
                Self::RetryLater {
                    status,
                    code: lwa.code(),
                    detail: lwa.to_string(),
                    retry_after_secs: retry_after.unwrap_or(DEFAULT_RETRY_AFTER_SECS).max(1),
                }
            }
            TokenError::ChangedDuringFetch => Self::RetryLater {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "concurrent_update",
                detail: "the connection changed while its token was fetched; retry".into(),
                retry_after_secs: 1,
            },
            TokenError::Store(err) => store_error(&err),
            TokenError::Crypto(err) => err.into(),
            // What the worker asked for (a restricted resource) may be what was refused.
            TokenError::SpApi(err) => spapi_error(
                &err,
                format!("createRestrictedDataToken: {err}"),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        }
    }
}

/// How a test's failure reads to the person who asked for it: Amazon refusing the call
/// is a 422 saying what to do; Amazon failing or throttling is a 503 (502 for an answer
/// that cannot be used) with `Retry-After`.
impl From<TestError> for ApiError {
    fn from(err: TestError) -> Self {
        let detail = err.to_string();
        match err {
            TestError::Token(err) => Self::from_authorization(err),
            TestError::Connection(err) => err.into(),
            TestError::SpApi { error, .. } => spapi_error(&error, detail, StatusCode::BAD_GATEWAY),
        }
    }
}

/// One SP-API failure: a refusal is a 422 naming it, throttling and failing are 503s
/// with `Retry-After`, an unusable answer a 502. `invalid_input` is the caller's fault
/// when the caller wrote what was sent (a restricted resource: 422), ours otherwise (502).
fn spapi_error(error: &SpApiError, detail: String, invalid_input: StatusCode) -> ApiError {
    let code = error.code();
    let retry_later = |status, retry_after_secs| ApiError::RetryLater {
        status,
        code,
        detail: detail.clone(),
        retry_after_secs,
    };
    match error {
        SpApiError::RoleMissing
        | SpApiError::ClientSecretExpired
        | SpApiError::AccessTokenRejected(_) => ApiError::Refused { code, detail },
        SpApiError::InvalidInput(_) if invalid_input == StatusCode::UNPROCESSABLE_ENTITY => {
            ApiError::Refused { code, detail }
        }
        SpApiError::Throttled { retry_after } => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            retry_after
                .map_or(DEFAULT_RETRY_AFTER_SECS, |wait| wait.as_secs())
                .max(1),
        ),
        SpApiError::Unavailable(_) => {
            retry_later(StatusCode::SERVICE_UNAVAILABLE, DEFAULT_RETRY_AFTER_SECS)
        }
        SpApiError::InvalidInput(_) | SpApiError::Protocol(_) => {
            retry_later(StatusCode::BAD_GATEWAY, DEFAULT_RETRY_AFTER_SECS)
        }
    }
}

impl ApiError {
    /// How a token failure reads to whoever asked to authorize: Amazon refusing the
    /// credentials is the answer to the request (422 with LWA's code), not a broken
    /// connection to stop on.
    pub fn from_authorization(err: TokenError) -> Self {
        match err {
            TokenError::Rejected(lwa) => Self::Refused {
                code: lwa.code(),
                detail: lwa.to_string(),
            },
            other => other.into(),
        }
    }
}

fn not_authorized(status: &str) -> ApiError {
    ApiError::Conflict {
        code: "connection_not_authorized",
        detail: format!(
            "the connection's status is `{status}`: Amazon refused its credentials; stop and \
             alert, a person must re-authorize or fix the connection"
        ),
    }
}

impl From<ConsentError> for ApiError {
    fn from(err: ConsentError) -> Self {
        match err {
            ConsentError::NotConfigured => Self::Conflict {
                code: "website_authorization_off",
                detail: "website authorization is off on this service: an operator must set \
                         REGISTRY_PUBLIC_URL (and register its /oauth/callback as the \
                         application's OAuth redirect URI)"
                    .into(),
            },
            ConsentError::NoApplicationId => Self::Conflict {
                code: "application_id_required",
                detail: "the connection has no application_id: PATCH it with the application \
                         id shown in Developer Central (amzn1.sp.solution.…) first"
                    .into(),
            },
            ConsentError::MarketplaceOutsideRegion { marketplace } => Self::invalid(
                "marketplace_id",
                format!("{marketplace} is not a marketplace of the connection's region"),
            ),
            ConsentError::Connection(err) => err.into(),
            ConsentError::Store(err) => err.into(),
        }
    }
}

/// How a website authorization's failure reads to the seller's browser: its status and
/// code, and a sentence saying what to do. Nothing the browser or Amazon sent is repeated.
pub fn callback_failure(err: &CallbackError) -> (StatusCode, &'static str, String) {
    let again = "Start the authorization again from the application.";
    match err {
        CallbackError::NotConfigured => (
            StatusCode::NOT_FOUND,
            "not_found",
            "Website authorization is not enabled on this service.".into(),
        ),
        CallbackError::InvalidRequest { field, problem } => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("The link Amazon sent back is incomplete: `{field}` {problem}. {again}"),
        ),
        CallbackError::UnknownState => (
            StatusCode::BAD_REQUEST,
            "invalid_state",
            format!("This authorization link is unknown or was already used. {again}"),
        ),
        CallbackError::StateExpired { .. } => (
            StatusCode::BAD_REQUEST,
            "state_expired",
            format!("This authorization link expired (they last 10 minutes). {again}"),
        ),
        CallbackError::ConnectionGone { .. } => (
            StatusCode::NOT_FOUND,
            "connection_not_found",
            "The connection this authorization was for no longer exists.".into(),
        ),
        CallbackError::MerchantMismatch { .. } => (
            StatusCode::CONFLICT,
            "merchant_token_mismatch",
            "The Amazon account that gave consent is not the one this connection is for. Sign \
             in to Seller Central as the connection's seller and start again."
                .into(),
        ),
        CallbackError::CredentialsChanged { .. } => (
            StatusCode::CONFLICT,
            "credentials_changed",
            format!("The connection's credentials changed during the authorization. {again}"),
        ),
        CallbackError::Refused { error, .. } => match error {
            LwaError::InvalidGrant(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                format!(
                    "Amazon did not accept the authorization code (it is valid for five \
                     minutes, once). {again}"
                ),
            ),
            LwaError::InvalidClient { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_client",
                "Amazon refused the application's client id or secret: update the \
                 connection's client secret, then start again."
                    .into(),
            ),
            other => (
                StatusCode::BAD_GATEWAY,
                other.code(),
                format!("Amazon answered the code exchange unexpectedly. {again}"),
            ),
        },
        CallbackError::Unavailable { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "lwa_unavailable",
            format!("Amazon could not be reached to finish the authorization. {again}"),
        ),
        // The cause is logged by the handler.
        CallbackError::Internal(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("Something went wrong on our side. {again}"),
        ),
    }
}

impl From<SecretError> for ApiError {
    fn from(err: SecretError) -> Self {
        let detail = err.to_string();
        match err {
            SecretError::UnknownClient => Self::NotFound("client id"),
            SecretError::NoUsableConnection => Self::Conflict {
                code: "no_usable_connection",
                detail,
            },
            SecretError::KeptChanging => Self::RetryLater {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "concurrent_update",
                detail,
                retry_after_secs: 1,
            },
            SecretError::Token(err) => Self::from_authorization(err),
            // Amazon's 400 here is about the application (not enrolled for the
            // notification that carries the new secret): the caller's to fix.
            SecretError::SpApi(err) => spapi_error(
                &err,
                format!(
                    "{detail}. Rotation needs the application subscribed to \
                     APPLICATION_OAUTH_CLIENT_NEW_SECRET notifications"
                ),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            SecretError::Store(err) => err.into(),
            SecretError::Crypto(err) => err.into(),
        }
    }
}
