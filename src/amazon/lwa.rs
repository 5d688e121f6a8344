//! The Login with Amazon token exchange: `grant_type=refresh_token` for a seller's token,
//! `client_credentials` for grantless ones, `authorization_code` for website authorization.
//!
//! Every answer is classified on LWA's `error` field, not the HTTP status (docs/amazon.md):
//! a rejected refresh token or client is final; an outage is retried here a few times
//! with jittered exponential backoff, then reported as `Unavailable`.
//!
//! LWA's answer is untrusted input, handled once where it enters (`attempt`): the body is
//! read up to `MAX_BODY_LEN`, a redirect is never followed (it would re-send the client
//! secret and refresh token elsewhere) and is a protocol error, and every text kept from
//! it (`error`, `error_description`) is scrubbed of what we sent and bounded before any
//! error, log line or row can hold it.

use std::time::Duration;

use rand::Rng;
use reqwest::{StatusCode, Url, header};
use secrecy::SecretString;
use serde::Deserialize;

use super::answer::{ReadError, Scrubber, describe_transport_error, read_bounded, retry_after};
use crate::domain::{
    AccessToken, AuthorizationCode, ClientId, ClientSecret, ClientSecrets, MAX_TOKEN_LEN,
    RefreshToken, now,
};

/// Timeouts and retry policy for the token exchange.
#[derive(Debug, Clone)]
pub struct LwaSettings {
    pub connect_timeout: Duration,
    /// Per attempt, connect to last byte.
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    /// Also the longest `Retry-After` honoured by waiting.
    pub max_backoff: Duration,
}

impl Default for LwaSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LwaError {
    /// `invalid_grant`: the refresh token is revoked, expired, malformed or another client's.
    #[error("LWA rejected the refresh token (invalid_grant): {0}")]
    InvalidGrant(String),
    /// `invalid_client` or `unauthorized_client`: wrong client id or secret.
    #[error("LWA rejected the client credentials ({code}): {description}")]
    InvalidClient { code: String, description: String },
    /// Timeouts, connection errors, 429, 5xx, `server_error`, `temporarily_unavailable`.
    #[error("LWA is unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// An answer we cannot use: our request was refused as malformed, or the body is not
    /// LWA's JSON. Not retried.
    #[error("LWA answered unexpectedly: {0}")]
    Protocol(String),
}

impl LwaError {
    /// The machine-readable code recorded in `last_error` and problem responses.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidGrant(_) => "invalid_grant",
            Self::InvalidClient { .. } => "invalid_client",
            Self::Unavailable { .. } => "lwa_unavailable",
            Self::Protocol(_) => "lwa_protocol_error",
        }
    }
}

/// A successful exchange.
#[derive(Debug)]
pub struct LwaGrant {
    pub access_token: AccessToken,
    /// LWA echoes the refresh token; if it ever sends another, that one is to be stored.
    pub refresh_token: Option<RefreshToken>,
}

#[derive(Clone)]
pub struct LwaClient {
    http: reqwest::Client,
    token_url: Url,
    settings: LwaSettings,
}

/// What an exchange asks LWA for.
enum GrantRequest<'a> {
    Refresh(&'a RefreshToken),
    ClientCredentials(&'a str),
    AuthorizationCode {
        code: &'a AuthorizationCode,
        redirect_uri: &'a str,
    },
}

/// One attempt's failure: retry it or not.
enum Attempt {
    Retry(LwaError),
    Final(LwaError),
}

impl LwaClient {
    /// `token_url` is https, or http on a loopback host (fakes); `config` checks it.
    pub fn new(token_url: Url, settings: LwaSettings) -> Self {
        let http = super::http_client(
            settings.connect_timeout,
            settings.request_timeout,
            token_url.scheme() == "https",
        );
        Self {
            http,
            token_url,
            settings,
        }
    }

    /// Exchanges a refresh token for an access token, retrying transient failures.
    #[tracing::instrument(skip_all, fields(client_id = %client_id))]
    pub async fn refresh(
        &self,
        client_id: &ClientId,
        secrets: &ClientSecrets,
        refresh_token: &RefreshToken,
    ) -> Result<LwaGrant, LwaError> {
        self.with_fallback(client_id, secrets, &GrantRequest::Refresh(refresh_token))
            .await
    }

    /// A grantless access token for `scope` (`grant_type=client_credentials`): for the
    /// operations that act for the application rather than for a seller.
    #[tracing::instrument(skip_all, fields(client_id = %client_id, scope))]
    pub async fn client_credentials(
        &self,
        client_id: &ClientId,
        secrets: &ClientSecrets,
        scope: &str,
    ) -> Result<LwaGrant, LwaError> {
        self.with_fallback(client_id, secrets, &GrantRequest::ClientCredentials(scope))
            .await
    }

    /// Exchanges the `spapi_oauth_code` of a website authorization for the seller's
    /// refresh token (and a first access token). `redirect_uri` must be the one the
    /// consent URL named. The code is valid for five minutes and only once.
    #[tracing::instrument(skip_all, fields(client_id = %client_id))]
    pub async fn authorization_code(
        &self,
        client_id: &ClientId,
        secrets: &ClientSecrets,
        code: &AuthorizationCode,
        redirect_uri: &str,
    ) -> Result<LwaGrant, LwaError> {
        let request = GrantRequest::AuthorizationCode { code, redirect_uri };
        self.with_fallback(client_id, secrets, &request).await
    }

    /// One exchange with the current secret and, if LWA refuses that as `invalid_client`
    /// while a replaced secret is in its grace, one more with that one: a new secret
    /// stored too early, or wrongly, does not stop the application.
    async fn with_fallback(
        &self,
        client_id: &ClientId,
        secrets: &ClientSecrets,
        request: &GrantRequest<'_>,
    ) -> Result<LwaGrant, LwaError> {
        let first = self
            .exchange_with(client_id, &secrets.current, request)
            .await;
        let (Err(LwaError::InvalidClient { .. }), Some(previous)) = (&first, &secrets.previous)
        else {
            return first;
        };
        let second = self.exchange_with(client_id, previous, request).await;
        if second.is_ok() {
            tracing::warn!(
                client_id = %client_id,
                "LWA refused the client secret; the one it replaced, still in its grace \
                 period, was accepted. Store the application's current secret before that \
                 grace ends"
            );
            metrics::counter!("registry_lwa_previous_secret_used_total").increment(1);
        }
        second
    }

    async fn exchange_with(
        &self,
        client_id: &ClientId,
        secret: &ClientSecret,
        request: &GrantRequest<'_>,
    ) -> Result<LwaGrant, LwaError> {
        let mut form = vec![
            ("client_id", client_id.as_str()),
            ("client_secret", secret.expose()),
        ];
        let mut sent = vec![secret.expose()];
        // A code is good once: if an attempt may have reached LWA, sending it again can
        // only be refused (and may make LWA revoke what it issued for it).
        let attempts = match request {
            GrantRequest::AuthorizationCode { .. } => 1,
            _ => self.settings.max_attempts,
        };
        match request {
            GrantRequest::Refresh(refresh_token) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", refresh_token.expose()));
                sent.push(refresh_token.expose());
            }
            GrantRequest::ClientCredentials(scope) => {
                form.push(("grant_type", "client_credentials"));
                form.push(("scope", scope));
            }
            GrantRequest::AuthorizationCode { code, redirect_uri } => {
                form.push(("grant_type", "authorization_code"));
                form.push(("code", code.expose()));
                form.push(("redirect_uri", redirect_uri));
                sent.push(code.expose());
            }
        }
        self.exchange(&form, &sent, attempts).await
    }

    /// Posts `form` to the token endpoint, up to `max_attempts` times while failures are
    /// transient; `secrets` are scrubbed from whatever comes back.
    async fn exchange(
        &self,
        form: &[(&str, &str)],
        secrets: &[&str],
        max_attempts: u32,
    ) -> Result<LwaGrant, LwaError> {
        let scrubber = Scrubber::new(secrets);
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let outcome = self.attempt(form, &scrubber).await;
            metrics::histogram!("registry_lwa_request_seconds")
                .record(started.elapsed().as_secs_f64());
            let label = match &outcome {
                Ok(_) => "ok",
                Err(Attempt::Retry(err) | Attempt::Final(err)) => err.code(),
            };
            metrics::counter!("registry_lwa_requests_total", "outcome" => label).increment(1);
            let error = match outcome {
                Ok(grant) => return Ok(grant),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Retry(error)) => error,
            };
            let retry_after = match &error {
                LwaError::Unavailable { retry_after, .. } => *retry_after,
                _ => None,
            };
            let waited_out = retry_after.is_none_or(|wait| wait <= self.settings.max_backoff);
            if attempt >= max_attempts || !waited_out {
                return Err(error);
            }
            let delay = retry_after.unwrap_or_else(|| self.backoff(attempt));
            tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, error = %error, "LWA exchange failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The longest one `refresh` can take: every attempt timing out, with the longest
    /// wait between them.
    pub fn longest_exchange(&self) -> Duration {
        let attempts = self.settings.max_attempts.max(1);
        self.settings.request_timeout * attempts + self.settings.max_backoff * (attempts - 1)
    }

    /// Full jitter: a random wait up to the exponential bound.
    fn backoff(&self, attempt: u32) -> Duration {
        let bound = self
            .settings
            .base_backoff
            .saturating_mul(2u32.saturating_pow(attempt - 1))
            .min(self.settings.max_backoff);
        rand::thread_rng().gen_range(Duration::ZERO..=bound)
    }

    async fn attempt(
        &self,
        form: &[(&str, &str)],
        scrubber: &Scrubber<'_>,
    ) -> Result<LwaGrant, Attempt> {
        let fetched_at = now();
        let response = self
            .http
            .post(self.token_url.clone())
            .header(header::ACCEPT, "application/json")
            .form(form)
            .send()
            .await
            .map_err(|err| {
                // reqwest's errors name the URL, never the body.
                Attempt::Retry(LwaError::Unavailable {
                    reason: describe_transport_error(&err),
                    retry_after: None,
                })
            })?;
        let status = response.status();
        if status.is_redirection() {
            // Where it points is not said: the Location is the other side's text.
            return Err(Attempt::Final(LwaError::Protocol(format!(
                "HTTP {status}: a redirect, which is never followed"
            ))));
        }
        let retry_after = retry_after(response.headers());
        let body = read_bounded(response).await.map_err(|err| match err {
            ReadError::TooLarge => Attempt::Final(LwaError::Protocol(err.to_string())),
            ReadError::Transport(reason) => Attempt::Retry(LwaError::Unavailable {
                reason,
                retry_after: None,
            }),
        })?;

        if let Ok(failure) = serde_json::from_slice::<TokenFailure>(&body) {
            let error = scrubber.code(&failure.error);
            let description = scrubber.text(failure.error_description.as_deref().unwrap_or(""));
            return Err(classify_error(&error, description, status, retry_after));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Attempt::Retry(LwaError::Unavailable {
                reason: format!("HTTP {status}"),
                retry_after,
            }));
        }
        if !status.is_success() {
            return Err(Attempt::Final(LwaError::Protocol(format!(
                "HTTP {status} without an LWA error body"
            ))));
        }
        let success: TokenSuccess = serde_json::from_slice(&body).map_err(|_| {
            Attempt::Final(LwaError::Protocol(format!(
                "HTTP {status} with a body that is not an LWA token response"
            )))
        })?;
        success.into_grant(fetched_at).map_err(Attempt::Final)
    }
}

fn classify_error(
    error: &str,
    description: String,
    status: StatusCode,
    retry_after: Option<Duration>,
) -> Attempt {
    match error {
        "invalid_grant" => Attempt::Final(LwaError::InvalidGrant(description)),
        "invalid_client" | "unauthorized_client" => Attempt::Final(LwaError::InvalidClient {
            code: error.to_owned(),
            description,
        }),
        "server_error" | "temporarily_unavailable" => Attempt::Retry(LwaError::Unavailable {
            reason: format!("{error}: {description}"),
            retry_after,
        }),
        _ if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
            Attempt::Retry(LwaError::Unavailable {
                reason: format!("HTTP {status} {error}"),
                retry_after,
            })
        }
        // invalid_request, invalid_scope, unsupported_grant_type: our request is wrong.
        other => {
            tracing::error!(
                error = other,
                description,
                "LWA refused the request as malformed"
            );
            Attempt::Final(LwaError::Protocol(format!("{other}: {description}")))
        }
    }
}

#[derive(Deserialize)]
struct TokenFailure {
    error: String,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct TokenSuccess {
    access_token: String,
    refresh_token: Option<String>,
    token_type: Option<String>,
    expires_in: ExpiresIn,
}

/// Amazon documents a number; some answers carry a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Seconds(u64),
    Text(String),
}

impl TokenSuccess {
    fn into_grant(self, fetched_at: chrono::DateTime<chrono::Utc>) -> Result<LwaGrant, LwaError> {
        let expires_in = match &self.expires_in {
            ExpiresIn::Seconds(seconds) => Some(*seconds),
            ExpiresIn::Text(text) => text.trim().parse().ok(),
        }
        .filter(|seconds| (1..=86_400).contains(seconds))
        .ok_or_else(|| LwaError::Protocol("expires_in is not a number of seconds".into()))?;
        if let Some(token_type) = &self.token_type {
            if !token_type.eq_ignore_ascii_case("bearer") {
                return Err(LwaError::Protocol("token_type is not bearer".into()));
            }
        }
        let token = &self.access_token;
        if token.is_empty()
            || token.len() > MAX_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(LwaError::Protocol("access_token is not a token".into()));
        }
        Ok(LwaGrant {
            access_token: AccessToken::new(
                SecretString::from(self.access_token),
                fetched_at,
                fetched_at + chrono::Duration::seconds(expires_in as i64),
            ),
            refresh_token: self
                .refresh_token
                .as_deref()
                .and_then(|token| RefreshToken::parse(token).ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_on_the_error_field() {
        let code = |error: &str, status: u16| match classify_error(
            error,
            String::new(),
            StatusCode::from_u16(status).unwrap(),
            None,
        ) {
            Attempt::Final(err) => (err.code(), false),
            Attempt::Retry(err) => (err.code(), true),
        };
        assert_eq!(code("invalid_grant", 400), ("invalid_grant", false));
        assert_eq!(code("invalid_client", 401), ("invalid_client", false));
        assert_eq!(code("unauthorized_client", 400), ("invalid_client", false));
        assert_eq!(code("server_error", 500), ("lwa_unavailable", true));
        assert_eq!(
            code("temporarily_unavailable", 503),
            ("lwa_unavailable", true)
        );
        assert_eq!(code("invalid_request", 400), ("lwa_protocol_error", false));
        assert_eq!(code("something_new", 503), ("lwa_unavailable", true));
    }

    #[test]
    fn backoff_is_a_random_wait_up_to_a_doubling_bound() {
        let settings = LwaSettings {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..LwaSettings::default()
        };
        let client = LwaClient::new(Url::parse("http://127.0.0.1:9/").unwrap(), settings);
        for (attempt, bound_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            let bound = Duration::from_millis(bound_ms);
            let waits: Vec<Duration> = (0..200).map(|_| client.backoff(attempt)).collect();
            assert!(waits.iter().all(|wait| *wait <= bound), "attempt {attempt}");
            // Uniform up to the bound: 200 draws all in its lower half would be a 2^-200 event.
            assert!(
                waits.iter().any(|wait| *wait > bound / 2),
                "attempt {attempt} waits up to {bound:?}"
            );
        }
    }

    #[test]
    fn codes_from_the_other_side_are_cut_to_a_safe_word() {
        use crate::amazon::answer::scrub_code;
        assert_eq!(scrub_code("invalid_request"), "invalid_request");
        assert_eq!(scrub_code("bad code\n<script>"), "badcodescript");
        assert_eq!(scrub_code(&"x".repeat(100)).len(), 64);
        // What we sent is removed before the code is cut to a word (else the secret's
        // letters and digits would survive the cut).
        let sent = ["Atzr|IwEBIsent-refresh-token", "sent-client-secret-0123"];
        let scrubber = Scrubber::new(&sent);
        assert_eq!(
            scrubber.code("Atzr|IwEBIsent-refresh-token sent-client-secret-0123"),
            "redactedredacted"
        );
        assert_eq!(
            scrubber.text("bad: Atzr|IwEBIsent-refresh-token"),
            "bad: [redacted]"
        );
        match classify_error(
            &scrubber.code("invalid request\n"),
            "Missing parameter".into(),
            StatusCode::BAD_REQUEST,
            None,
        ) {
            Attempt::Final(LwaError::Protocol(message)) => {
                assert_eq!(message, "invalidrequest: Missing parameter");
            }
            _ => panic!("a malformed request is a final protocol error"),
        }
    }

    #[test]
    fn an_access_token_must_look_like_one() {
        let parse = |token: &str| {
            serde_json::from_value::<TokenSuccess>(serde_json::json!({
                "access_token": token, "token_type": "bearer", "expires_in": 3600
            }))
            .unwrap()
            .into_grant(now())
            .map(|grant| grant.access_token.expose().len())
        };
        let longest = format!("Atza|{}", "t".repeat(MAX_TOKEN_LEN - 5));
        assert_eq!(parse(&longest).unwrap(), MAX_TOKEN_LEN);
        assert!(parse(&format!("{longest}t")).is_err(), "one byte too long");
        assert!(parse("Atza|with space").is_err());
        assert!(parse("Atza|\u{e9}").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn expires_in_may_be_a_string() {
        let parse = |json: &str| {
            serde_json::from_str::<TokenSuccess>(json)
                .unwrap()
                .into_grant(now())
                .map(|grant| grant.access_token.remaining_secs(now()))
        };
        let seconds =
            parse(r#"{"access_token":"Atza|x","token_type":"bearer","expires_in":"3600"}"#)
                .unwrap();
        assert!((3598..=3600).contains(&seconds));
        assert!(parse(r#"{"access_token":"Atza|x","expires_in":"soon"}"#).is_err());
        assert!(parse(r#"{"access_token":"","expires_in":3600}"#).is_err());
        assert!(
            parse(r#"{"access_token":"Atza|x","token_type":"mac","expires_in":3600}"#).is_err()
        );
    }
}
