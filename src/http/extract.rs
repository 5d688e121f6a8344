//! Extractors that speak the house error format: JSON bodies, query strings, path ids and
//! API-key authentication.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::fields::Fields;
use crate::app::AppState;
use crate::domain::{ApiKey, PresentedKey, ResourceId, Scope};

/// Largest request body accepted; a connection's form is a few kilobytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON object body. Wrong content type → 415, too large → 413, not JSON or not an
/// object → 400.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: BODY_LIMIT }
            } else {
                ApiError::MalformedJson(format!("could not read the body: {rejection}"))
            }
        })?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::MalformedJson(
                "the body must be a JSON object".into(),
            )),
            Err(err) => Err(ApiError::MalformedJson(format!(
                "the body is not valid JSON: {err}"
            ))),
        }
    }
}

/// A JSON object body that may be left out: no body (and no `Content-Type`) is `{}`.
pub struct OptionalJsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if req.headers().contains_key(header::CONTENT_TYPE) {
            return JsonObject::from_request(req, state)
                .await
                .map(|JsonObject(map)| Self(map));
        }
        match Bytes::from_request(req, state).await {
            Ok(bytes) if bytes.is_empty() => Ok(Self(Map::new())),
            Ok(_) => Err(ApiError::UnsupportedMediaType),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge { limit: BODY_LIMIT })
            }
            Err(rejection) => Err(ApiError::MalformedJson(format!(
                "could not read the body: {rejection}"
            ))),
        }
    }
}

/// The query string as `Fields`, so bad parameters are named like bad body fields.
pub struct QueryFields(pub Fields);

impl<S: Send + Sync> FromRequestParts<S> for QueryFields {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|err| ApiError::invalid("query", err.body_text()))?;
        let map = pairs
            .into_iter()
            .map(|(name, value)| (name, Value::String(value)))
            .collect();
        Ok(Self(Fields::new(map)))
    }
}

/// The `{id}` of a path, parsed into its resource's id type. A malformed id, or a path
/// that is not even text (`/connections/%FF`), names nothing: 404, like an unknown id.
pub struct Id<T>(pub T);

/// An id a route served ahead of the router (`super::token_first`) has already parsed
/// from the path; `Id` takes it from the request's extensions instead of the router's
/// path parameters, which that route never had.
#[derive(Clone, Copy)]
pub struct ParsedId<T>(pub T);

impl<S: Send + Sync, T: ResourceId + Send + Sync + 'static> FromRequestParts<S> for Id<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(&ParsedId(id)) = parts.extensions.get::<ParsedId<T>>() {
            return Ok(Self(id));
        }
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound(T::RESOURCE))?;
        T::parse(&raw)
            .map(Self)
            .map_err(|_| ApiError::NotFound(T::RESOURCE))
    }
}

/// The scope a handler needs, as a type, so authorization happens before the body is read.
/// `None`: any valid key will do.
pub trait RequiredScope {
    const SCOPE: Option<Scope>;
}

macro_rules! required_scope {
    ($($name:ident => $scope:expr),* $(,)?) => {
        $(
            pub struct $name;
            impl RequiredScope for $name {
                const SCOPE: Option<Scope> = $scope;
            }
        )*
    };
}

required_scope! {
    Admin => Some(Scope::Admin),
    ConnectionsWrite => Some(Scope::ConnectionsWrite),
    ConnectionsRead => Some(Scope::ConnectionsRead),
    TokensRead => Some(Scope::TokensRead),
    // Metrics scrapers and a key asking what it is: whoever holds a key, whatever its scope.
    AnyKey => None,
}

/// The caller's API key, known to hold scope `S`: missing or unknown key → 401, a key
/// without the scope → 403.
pub struct Caller<S> {
    pub key: std::sync::Arc<ApiKey>,
    scope: PhantomData<S>,
}

impl<S: RequiredScope> FromRequestParts<AppState> for Caller<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // `Bearer <key>`, as bytes: the key is checked to be printable ASCII as it is
        // parsed, so the header need not be checked as text first.
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| {
                let value = value.as_bytes();
                let space = value.iter().position(|&b| b == b' ')?;
                let (scheme, token) = (&value[..space], &value[space + 1..]);
                scheme.eq_ignore_ascii_case(b"bearer").then_some(token)
            })
            .and_then(|token| PresentedKey::parse(token.trim_ascii()).ok())
            .ok_or(ApiError::Unauthorized)?;
        let key = state.api_keys.verify(&presented).await?;
        crate::events::set_caller(key.id);
        tracing::Span::current().record("api_key_id", tracing::field::display(key.id));
        if let Some(scope) = S::SCOPE.filter(|scope| !key.allows(*scope)) {
            return Err(ApiError::Forbidden(scope));
        }
        Ok(Self {
            key,
            scope: PhantomData,
        })
    }
}
