//! The SP-API calls the service makes itself (docs/amazon.md, "SP-API"): testing a
//! connection, and restricted data tokens. Workers make every other call with the tokens
//! the service hands out.
//!
//! Each call carries the access token in `x-amz-access-token` and a user agent naming the
//! service. Nothing is retried here: a test is a person waiting, so a throttled or
//! failing Amazon is reported at once (with `Retry-After`). Answers are untrusted
//! (`answer.rs`): read up to a size, never followed on a redirect, and every text kept
//! from them scrubbed of the token sent and cut short.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{StatusCode, header};
use secrecy::SecretString;
use serde::Deserialize;

use super::answer::{ReadError, Scrubber, describe_transport_error, read_bounded, retry_after};
use super::endpoints::SpApiEndpoint;
use crate::domain::{AccessToken, MAX_TOKEN_LEN, RestrictedDataRequest};

/// Timeouts of one SP-API call.
#[derive(Debug, Clone)]
pub struct SpApiSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for SpApiSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an SP-API call did not succeed, classified on Amazon's error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpApiError {
    /// 403: the access token expired, or is revoked, malformed or invalid. A fresh token
    /// may do.
    #[error("SP-API rejected the access token: {0}")]
    AccessTokenRejected(String),
    /// 403 "The LWA secret token you provided has expired.": the client secret expired.
    #[error("the application's LWA client secret has expired")]
    ClientSecretExpired,
    /// 403 without details: usually a role the app lacks (or the wrong region).
    #[error("SP-API refused the call without details: the app most likely lacks the role")]
    RoleMissing,
    /// 429.
    #[error("SP-API throttled the call")]
    Throttled { retry_after: Option<Duration> },
    /// 400: what we sent was refused.
    #[error("SP-API refused the request as invalid: {0}")]
    InvalidInput(String),
    /// 5xx, timeouts, connection errors.
    #[error("SP-API is unavailable: {0}")]
    Unavailable(String),
    /// An answer we cannot use (a redirect, a body that is not Amazon's JSON, another 4xx).
    #[error("SP-API answered unexpectedly: {0}")]
    Protocol(String),
}

impl SpApiError {
    /// The machine-readable code recorded in `last_error` and problem responses.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AccessTokenRejected(_) => "access_token_rejected",
            Self::ClientSecretExpired => "client_secret_expired",
            Self::RoleMissing => "role_missing",
            Self::Throttled { .. } => "spapi_throttled",
            Self::InvalidInput(_) => "spapi_invalid_input",
            Self::Unavailable(_) => "spapi_unavailable",
            Self::Protocol(_) => "spapi_protocol_error",
        }
    }
}

/// One marketplace a seller takes part in, as `marketplaceParticipations` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participation {
    pub marketplace_id: String,
    pub name: String,
    pub country_code: String,
    pub default_currency_code: String,
    pub is_participating: bool,
}

#[derive(Clone)]
pub struct SpApiClient {
    http: reqwest::Client,
}

impl SpApiClient {
    pub fn new(settings: &SpApiSettings) -> Self {
        // The hosts may be overridden by a loopback fake (`REGISTRY_SPAPI_URL`, checked
        // to be https or loopback), so plain http is not refused here.
        let http = super::http_client(settings.connect_timeout, settings.request_timeout, false);
        Self { http }
    }

    /// `GET /sellers/v1/marketplaceParticipations`: the seller's marketplaces.
    pub async fn marketplace_participations(
        &self,
        endpoint: &SpApiEndpoint,
        token: &AccessToken,
    ) -> Result<Vec<Participation>, SpApiError> {
        let body = self
            .get(
                endpoint,
                "/sellers/v1/marketplaceParticipations",
                &[],
                token,
            )
            .await?;
        parse_participations(&body)
    }

    /// `GET /vendor/orders/v1/purchaseOrders` for the last week, one order at most: the
    /// cheapest vendor call, used only to learn whether the token and role work.
    pub async fn probe_vendor_orders(
        &self,
        endpoint: &SpApiEndpoint,
        token: &AccessToken,
        now: DateTime<Utc>,
    ) -> Result<(), SpApiError> {
        let format = |at: DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let query = [
            ("limit", "1".to_owned()),
            ("createdAfter", format(now - chrono::TimeDelta::days(7))),
            ("createdBefore", format(now)),
        ];
        self.get(endpoint, "/vendor/orders/v1/purchaseOrders", &query, token)
            .await
            .map(|_| ())
    }

    /// `createRestrictedDataToken`: a token for the restricted operations in `request`,
    /// and how long it lives.
    pub async fn create_restricted_data_token(
        &self,
        endpoint: &SpApiEndpoint,
        token: &AccessToken,
        request: &RestrictedDataRequest,
    ) -> Result<(SecretString, Duration), SpApiError> {
        let url = format!(
            "{}/tokens/2021-03-01/restrictedDataToken",
            endpoint.sp_api_endpoint
        );
        let body = self.send(self.http.post(url).json(request), token).await?;
        parse_restricted_data_token(&body)
    }

    /// Asks Amazon for a new client secret of the application whose grantless token
    /// (scope `sellingpartnerapi::client_credential:rotation`) is `token`. Amazon answers
    /// 204 and delivers the secret only by notification; an application not subscribed
    /// to that notification gets 400 `InvalidInput`.
    pub async fn rotate_client_secret(
        &self,
        endpoint: &SpApiEndpoint,
        token: &AccessToken,
    ) -> Result<(), SpApiError> {
        let url = format!(
            "{}/applications/2023-11-30/clientSecret",
            endpoint.sp_api_endpoint
        );
        self.send(self.http.post(url), token).await.map(drop)
    }

    async fn get(
        &self,
        endpoint: &SpApiEndpoint,
        path: &str,
        query: &[(&str, String)],
        token: &AccessToken,
    ) -> Result<Vec<u8>, SpApiError> {
        let request = self
            .http
            .get(format!("{}{path}", endpoint.sp_api_endpoint))
            .query(query);
        self.send(request, token).await
    }

    /// Sends `request` with `token`; the body of a 2xx, or the error it means. Counted in
    /// `registry_spapi_requests_total{outcome}` and timed.
    #[tracing::instrument(name = "spapi", skip_all)]
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        token: &AccessToken,
    ) -> Result<Vec<u8>, SpApiError> {
        let started = std::time::Instant::now();
        let result = self.send_once(request, token).await;
        metrics::histogram!("registry_spapi_request_seconds")
            .record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.code(),
        };
        metrics::counter!("registry_spapi_requests_total", "outcome" => outcome).increment(1);
        result
    }

    async fn send_once(
        &self,
        request: reqwest::RequestBuilder,
        token: &AccessToken,
    ) -> Result<Vec<u8>, SpApiError> {
        let response = request
            .header("x-amz-access-token", token.expose())
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| SpApiError::Unavailable(describe_transport_error(&err)))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(SpApiError::Protocol(format!(
                "HTTP {status}: a redirect, which is never followed"
            )));
        }
        let retry_after = retry_after(response.headers());
        let body = read_bounded(response).await.map_err(|err| match err {
            ReadError::TooLarge => SpApiError::Protocol(err.to_string()),
            ReadError::Transport(reason) => SpApiError::Unavailable(reason),
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let sent = [token.expose()];
        Err(classify(status, &body, retry_after, &Scrubber::new(&sent)))
    }
}

#[derive(Deserialize)]
struct ErrorList {
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    code: Option<String>,
    message: Option<String>,
    details: Option<String>,
}

/// Amazon's error body (`{"errors":[{code, message, details}]}`) and status, as one error.
fn classify(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    scrubber: &Scrubber<'_>,
) -> SpApiError {
    let first = serde_json::from_slice::<ErrorList>(body)
        .ok()
        .and_then(|list| list.errors.into_iter().next());
    let (code, message, details) = match &first {
        Some(item) => (
            scrubber.code(item.code.as_deref().unwrap_or("")),
            scrubber.text(item.message.as_deref().unwrap_or("")),
            scrubber.text(item.details.as_deref().unwrap_or("")),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    let said = || {
        let mut said = format!("HTTP {status}");
        for part in [&code, &message, &details] {
            if !part.is_empty() {
                said.push_str(": ");
                said.push_str(part);
            }
        }
        said
    };
    match status {
        StatusCode::FORBIDDEN => {
            let details_lower = details.to_ascii_lowercase();
            if details_lower.contains("lwa secret token you provided has expired") {
                SpApiError::ClientSecretExpired
            } else if details_lower.contains("access token you provided has expired")
                || details_lower.contains("revoked, malformed or invalid")
            {
                SpApiError::AccessTokenRejected(details)
            } else if first.is_some() && details.trim().is_empty() {
                SpApiError::RoleMissing
            } else {
                SpApiError::Protocol(said())
            }
        }
        StatusCode::TOO_MANY_REQUESTS => SpApiError::Throttled { retry_after },
        StatusCode::BAD_REQUEST => SpApiError::InvalidInput(said()),
        status if status.is_server_error() => SpApiError::Unavailable(said()),
        _ => SpApiError::Protocol(said()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestrictedDataTokenBody {
    restricted_data_token: String,
    expires_in: u64,
}

fn parse_restricted_data_token(body: &[u8]) -> Result<(SecretString, Duration), SpApiError> {
    let parsed: RestrictedDataTokenBody = serde_json::from_slice(body).map_err(|_| {
        SpApiError::Protocol("the answer is not a restrictedDataToken response".into())
    })?;
    let token = parsed.restricted_data_token;
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(SpApiError::Protocol(
            "restrictedDataToken is not a token".into(),
        ));
    }
    if !(1..=86_400).contains(&parsed.expires_in) {
        return Err(SpApiError::Protocol(
            "expiresIn is not a number of seconds".into(),
        ));
    }
    Ok((
        SecretString::from(token),
        Duration::from_secs(parsed.expires_in),
    ))
}

#[derive(Deserialize)]
struct ParticipationsBody {
    payload: Vec<ParticipationItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParticipationItem {
    marketplace: MarketplaceItem,
    participation: ParticipationFlags,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MarketplaceItem {
    id: String,
    name: Option<String>,
    country_code: Option<String>,
    default_currency_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParticipationFlags {
    is_participating: bool,
}

/// Longest marketplace name kept; Amazon's are a dozen characters.
const MAX_NAME_LEN: usize = 100;

fn parse_participations(body: &[u8]) -> Result<Vec<Participation>, SpApiError> {
    let parsed: ParticipationsBody = serde_json::from_slice(body).map_err(|_| {
        SpApiError::Protocol("the answer is not a marketplaceParticipations response".into())
    })?;
    parsed
        .payload
        .into_iter()
        .map(|item| {
            let id = item.marketplace.id;
            // Stored and shown: an id must look like one.
            let plausible = (1..=20).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
            if !plausible {
                return Err(SpApiError::Protocol(
                    "a marketplace id in the answer is not an id".into(),
                ));
            }
            let clean = |text: Option<String>, max: usize| -> String {
                text.unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(max)
                    .collect()
            };
            Ok(Participation {
                marketplace_id: id,
                name: clean(item.marketplace.name, MAX_NAME_LEN),
                country_code: clean(item.marketplace.country_code, 2),
                default_currency_code: clean(item.marketplace.default_currency_code, 3),
                is_participating: item.participation.is_participating,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn classified(status: u16, body: serde_json::Value) -> SpApiError {
        let sent = ["Atza|sent-access-token"];
        classify(
            StatusCode::from_u16(status).unwrap(),
            body.to_string().as_bytes(),
            Some(Duration::from_secs(7)),
            &Scrubber::new(&sent),
        )
    }

    fn error(code: &str, message: &str, details: &str) -> serde_json::Value {
        json!({"errors": [{"code": code, "message": message, "details": details}]})
    }

    #[test]
    fn errors_are_classified_on_status_and_details() {
        let unauthorized = "Access to requested resource is denied.";
        assert_eq!(
            classified(
                403,
                error(
                    "Unauthorized",
                    unauthorized,
                    "The access token you provided has expired."
                )
            )
            .code(),
            "access_token_rejected"
        );
        assert_eq!(
            classified(
                403,
                error(
                    "Unauthorized",
                    unauthorized,
                    "The access token you provided is revoked, malformed or invalid."
                )
            )
            .code(),
            "access_token_rejected"
        );
        assert_eq!(
            classified(
                403,
                error(
                    "Unauthorized",
                    unauthorized,
                    "The LWA secret token you provided has expired."
                )
            ),
            SpApiError::ClientSecretExpired
        );
        assert_eq!(
            classified(403, error("Unauthorized", unauthorized, "")),
            SpApiError::RoleMissing
        );
        assert_eq!(
            classified(429, error("QuotaExceeded", "You exceeded your quota", "")),
            SpApiError::Throttled {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classified(400, error("InvalidInput", "bad", "")).code(),
            "spapi_invalid_input"
        );
        assert_eq!(classified(503, json!({})).code(), "spapi_unavailable");
        assert_eq!(classified(404, json!({})).code(), "spapi_protocol_error");
        // A 403 that is not Amazon's error body is no proof of a missing role.
        assert_eq!(
            classified(403, json!("denied")).code(),
            "spapi_protocol_error"
        );
    }

    #[test]
    fn what_amazon_says_back_is_scrubbed() {
        let echoed = classified(
            400,
            error(
                "InvalidInput",
                "token Atza|sent-access-token is bad",
                "Atza|other",
            ),
        );
        let SpApiError::InvalidInput(said) = echoed else {
            panic!("invalid input")
        };
        assert_eq!(
            said,
            "HTTP 400 Bad Request: InvalidInput: token [redacted] is bad: [redacted]"
        );
    }

    #[test]
    fn participations_are_parsed_and_checked() {
        let body = json!({"payload": [{
            "marketplace": {"id": "ATVPDKIKX0DER", "name": "Amazon.com", "countryCode": "US",
                "defaultCurrencyCode": "USD", "defaultLanguageCode": "en_US",
                "domainName": "www.amazon.com"},
            "participation": {"isParticipating": true, "hasSuspendedListings": false},
            "storeName": "BestSellerStore"
        }]});
        let parsed = parse_participations(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            parsed,
            [Participation {
                marketplace_id: "ATVPDKIKX0DER".into(),
                name: "Amazon.com".into(),
                country_code: "US".into(),
                default_currency_code: "USD".into(),
                is_participating: true,
            }]
        );
        let bad_id = json!({"payload": [{"marketplace": {"id": "<script>"},
            "participation": {"isParticipating": true}}]});
        assert_eq!(
            parse_participations(bad_id.to_string().as_bytes())
                .unwrap_err()
                .code(),
            "spapi_protocol_error"
        );
        assert!(parse_participations(b"<html>").is_err());
    }
}
