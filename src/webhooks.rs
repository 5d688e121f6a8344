//! Webhooks: endpoints an operator registers, and the delivery of events to them as the
//! Standard Webhooks specification describes (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, secrets
//! `whsec_<base64>`).
//!
//! A delivery is queued in the transaction that records its event, so it is sent at least
//! once, and never for a change that did not commit. Each replica runs a deliverer that
//! claims due deliveries for a short while (one replica sends each), sends them with a
//! short timeout and no redirects, and retries failures with exponential backoff and
//! jitter for 24 hours. The API never waits for a receiver.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::crypto::{Field, Keyring};
use crate::domain::{ParseError, now};
use crate::events::{NewEvent, Target};
use crate::store::{
    AttemptOutcome, DeliveryRecord, DueDelivery, Store, StoreError, WebhookEndpointRow,
};

/// The event types an endpoint may take.
pub const EVENT_TYPES: &[&str] = &[
    "connection.created",
    "connection.updated",
    "connection.deleted",
    "connection.status_changed",
    "connection.client_secret_expiring",
    "client_secret.replaced",
    "client_secret.expiry_updated",
    "api_key.created",
    "api_key.revoked",
    "webhook_endpoint.created",
    "webhook_endpoint.deleted",
];

/// Days ahead of a client secret's expiry at which `connection.client_secret_expiring`
/// is sent, once each.
pub const EXPIRY_WARNINGS: [i32; 2] = [14, 3];

/// How deliveries are paced.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// How often a replica looks for due deliveries.
    pub poll_interval: Duration,
    /// The first retry's delay; it doubles (with jitter) up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// After this long a delivery is given up.
    pub give_up_after: chrono::Duration,
    /// One attempt, connect to last byte.
    pub timeout: Duration,
    /// How often expiring client secrets are looked for.
    pub expiry_check_interval: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            give_up_after: chrono::Duration::hours(24),
            timeout: Duration::from_secs(10),
            expiry_check_interval: Duration::from_secs(300),
        }
    }
}

/// A webhook URL: https, or plain http to a loopback host (a local receiver), written
/// plainly (`is_plain_url`).
pub fn parse_url(input: &str) -> Result<Url, ParseError> {
    if !is_plain_url(input) {
        return Err(ParseError::new(
            "must be an absolute URL: https:// (or http://), a host name, IPv4 address or \
             [::1], an optional port, then printable ASCII without spaces",
        ));
    }
    let url = Url::parse(input).map_err(|_| ParseError::new("must be an absolute URL"))?;
    let loopback = url.host_str().is_some_and(crate::config::is_loopback);
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(ParseError::new(
            "must be an https:// URL (plain http:// only to localhost or a loopback address)",
        )),
    }
    .and_then(|url| {
        if url.username().is_empty() && url.password().is_none() && input.len() <= 2048 {
            Ok(url)
        } else {
            Err(ParseError::new(
                "must be at most 2048 characters, without credentials",
            ))
        }
    })
}

/// The grammar `openapi.yaml` states for a webhook URL: `https://` or `http://`; a host
/// that is a DNS name (labels of letters, digits and hyphens, the last starting with a
/// letter), a dotted-quad IPv4 address or `[::1]`; an optional port (up to 65535); then
/// path, query and fragment in printable ASCII. URL parsing alone takes far more
/// (`https:host`, `https://a*`, spaces, tabs, backslashes, `0x7f.1`, Unicode hosts): no
/// receiver's address, and nothing a schema can state.
fn is_plain_url(input: &str) -> bool {
    let Some(rest) = input
        .strip_prefix("https://")
        .or_else(|| input.strip_prefix("http://"))
    else {
        return false;
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (host, port) = match authority.strip_prefix("[::1]") {
        Some(port) => ("[::1]", port),
        None => authority.split_at(authority.find(':').unwrap_or(authority.len())),
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            (1..=5).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u32>().is_ok_and(|port| port <= 65_535)
        });
    let ipv4 = || {
        let octets: Vec<&str> = host.split('.').collect();
        octets.len() == 4
            && octets.iter().all(|octet| {
                (1..=3).contains(&octet.len())
                    && octet.bytes().all(|b| b.is_ascii_digit())
                    && (octet.len() == 1 || !octet.starts_with('0'))
                    && octet.parse::<u8>().is_ok()
            })
    };
    let dns_name = || {
        let labels: Vec<&str> = host.split('.').collect();
        labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) && labels
            .last()
            .is_some_and(|last| last.starts_with(|c: char| c.is_ascii_alphabetic()))
    };
    port_ok
        && tail.bytes().all(|b| b.is_ascii_graphic())
        && (host == "[::1]" || ipv4() || dns_name())
}

/// An endpoint as the API shows it (never its secret, except once at creation).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    pub events: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl From<&WebhookEndpointRow> for Endpoint {
    fn from(row: &WebhookEndpointRow) -> Self {
        Self {
            id: row.id,
            url: row.url.clone(),
            description: row.description.clone(),
            events: row.event_types.clone(),
            created_at: row.created_at,
        }
    }
}

#[derive(Clone)]
pub struct Webhooks {
    store: Store,
    keyring: Arc<Keyring>,
    http: reqwest::Client,
    settings: WebhookSettings,
}

impl Webhooks {
    pub fn new(store: Store, keyring: Arc<Keyring>, settings: WebhookSettings) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .timeout(settings.timeout)
            // A receiver's redirect is an error, never followed with our signature.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "connection-registry/",
                env!("CARGO_PKG_VERSION"),
                " webhooks"
            ))
            .build()
            .expect("a client with static settings builds");
        Self {
            store,
            keyring,
            http,
            settings,
        }
    }

    /// Registers an endpoint; its signing secret is returned this once.
    pub async fn create(
        &self,
        url: Url,
        events: Vec<String>,
        description: Option<String>,
    ) -> Result<(Endpoint, SecretString), StoreError> {
        let id = Uuid::now_v7();
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        let secret = SecretString::from(format!("whsec_{}", STANDARD.encode(bytes.as_ref())));
        let row = WebhookEndpointRow {
            id,
            url: url.to_string(),
            description,
            secret: self.keyring.seal(
                &id.to_string(),
                Field::WebhookSecret,
                secret.expose_secret(),
            ),
            event_types: events,
            created_at: now(),
        };
        // A receiver may authenticate us by a token in its URL's query: the audit trail
        // (read by every admin, kept for good) gets the URL without it.
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        let event = NewEvent::new(
            "webhook_endpoint.created",
            Target::WebhookEndpoint(id),
            json!({"url": shown.as_str(), "events": row.event_types}),
        );
        self.store.insert_webhook_endpoint(&row, &[event]).await?;
        Ok((Endpoint::from(&row), secret))
    }

    pub async fn list(&self) -> Result<Vec<Endpoint>, StoreError> {
        Ok(self
            .store
            .webhook_endpoints()
            .await?
            .iter()
            .map(Endpoint::from)
            .collect())
    }

    pub async fn delete(&self, id: Uuid) -> Result<(), StoreError> {
        let event = NewEvent::new(
            "webhook_endpoint.deleted",
            Target::WebhookEndpoint(id),
            json!({}),
        );
        self.store.delete_webhook_endpoint(id, &[event]).await
    }

    pub async fn deliveries(&self, id: Uuid) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.store.webhook_deliveries(id, 100).await
    }

    /// Sends due deliveries, for good.
    pub async fn deliver_periodically(self) {
        let mut tick = tokio::time::interval(self.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = self.deliver_due().await {
                tracing::warn!(error = %err, "webhook deliveries could not be claimed");
            }
        }
    }

    /// Claims and sends what is due now, a few at a time.
    async fn deliver_due(&self) -> Result<(), StoreError> {
        let lock_secs = (self.settings.timeout.as_secs() as i64) * 3 + 5;
        loop {
            let due = self.store.claim_due_deliveries(16, lock_secs).await?;
            if due.is_empty() {
                return Ok(());
            }
            let sends = due.into_iter().map(|delivery| self.attempt(delivery));
            futures_util::future::join_all(sends).await;
        }
    }

    #[tracing::instrument(skip_all, fields(event_id = %delivery.event_id, endpoint_id = %delivery.endpoint_id))]
    async fn attempt(&self, delivery: DueDelivery) {
        let (outcome, status, error) = if delivery.endpoint_deleted {
            (
                AttemptOutcome::Failed,
                None,
                Some("the endpoint was deleted".to_owned()),
            )
        } else {
            match self.send(&delivery).await {
                Ok(status) if status.is_success() => {
                    (AttemptOutcome::Delivered, Some(status.as_u16()), None)
                }
                Ok(status) => (
                    self.retry_or_give_up(&delivery),
                    Some(status.as_u16()),
                    Some(format!("HTTP {status}")),
                ),
                Err(reason) => (self.retry_or_give_up(&delivery), None, Some(reason)),
            }
        };
        let label = match outcome {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry { .. } => "retry",
            AttemptOutcome::Failed => "failed",
        };
        metrics::counter!("registry_webhook_deliveries_total", "outcome" => label).increment(1);
        if let Some(error) = &error {
            tracing::warn!(error, outcome = label, "webhook delivery failed");
        }
        if let Err(err) = self
            .store
            .record_delivery_attempt(&delivery, &outcome, status, error.as_deref())
            .await
        {
            // The claim runs out and the delivery is sent again: at least once.
            tracing::warn!(error = %err, "could not record a webhook delivery");
        }
    }

    fn retry_or_give_up(&self, delivery: &DueDelivery) -> AttemptOutcome {
        let now = now();
        if now - delivery.created_at >= self.settings.give_up_after {
            return AttemptOutcome::Failed;
        }
        AttemptOutcome::Retry {
            at: now
                + chrono::Duration::from_std(self.backoff(delivery.attempts + 1))
                    .unwrap_or_default(),
        }
    }

    /// Full jitter up to a doubling bound.
    fn backoff(&self, attempt: i32) -> Duration {
        let bound = self
            .settings
            .base_backoff
            .saturating_mul(2u32.saturating_pow(attempt.clamp(1, 30) as u32 - 1))
            .min(self.settings.max_backoff);
        let half = bound / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    /// One signed POST; the receiver's status, or why there is none. Its body is never
    /// read.
    async fn send(&self, delivery: &DueDelivery) -> Result<reqwest::StatusCode, String> {
        let secret = self
            .keyring
            .open(
                &delivery.endpoint_id.to_string(),
                Field::WebhookSecret,
                &delivery.secret,
            )
            .map_err(|err| err.to_string())?;
        let body = payload(&delivery.event).to_string();
        let id = delivery.event_id.to_string();
        let timestamp = now().timestamp();
        let signature = sign(secret.expose_secret(), &id, timestamp, &body)
            .ok_or("the endpoint's secret is not a whsec_ secret")?;
        let response = self
            .http
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|err| crate::amazon::answer::describe_transport_error(&err))?;
        Ok(response.status())
    }

    /// Sends `connection.client_secret_expiring` 14 and 3 days ahead, once each per
    /// connection and expiry date, for good.
    pub async fn warn_expiring_periodically(self) {
        let mut tick = tokio::time::interval(self.settings.expiry_check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = self.warn_expiring().await {
                tracing::warn!(error = %err, "could not look for expiring client secrets");
            }
        }
    }

    pub async fn warn_expiring(&self) -> Result<(), StoreError> {
        // Nearest first: a secret found inside 3 days is warned at 3, not also at 14.
        for days in [EXPIRY_WARNINGS[1], EXPIRY_WARNINGS[0]] {
            for (id, expires_at) in self.store.secrets_to_warn(days).await? {
                let nearer_given = days == EXPIRY_WARNINGS[0]
                    && expires_at - now() <= chrono::Duration::days(i64::from(EXPIRY_WARNINGS[1]));
                if nearer_given {
                    continue;
                }
                let event = NewEvent::new(
                    "connection.client_secret_expiring",
                    Target::Connection(id),
                    json!({"expires_at": expires_at, "days_ahead": days}),
                );
                self.store
                    .record_secret_warning(id, expires_at, days, &[event])
                    .await?;
            }
        }
        Ok(())
    }
}

/// The body sent: Standard Webhooks' `{type, timestamp, data}`.
pub fn payload(event: &crate::store::StoredEvent) -> Value {
    json!({
        "type": event.kind,
        "timestamp": event.occurred_at,
        "data": {
            "event_id": event.id,
            "actor": event.actor,
            "target_type": event.target_type,
            "target_id": event.target_id,
            "connection_id": event.connection_id,
            "request_id": event.request_id,
            "details": event.body,
        }
    })
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the key a `whsec_` secret
/// holds (base64 after the prefix).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_as_the_specification_does() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(sign("not-whsec", "id", 1, "{}"), None);
    }

    #[test]
    fn webhook_urls_are_https_or_loopback() {
        assert!(parse_url("https://hooks.example.com/registry").is_ok());
        assert!(parse_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(parse_url("http://localhost/hook").is_ok());
        for good in [
            "https://hooks.example.com",
            "https://10.0.0.7:8443/h?a=b#c",
            "https://[::1]/",
            "http://[::1]:65535",
            "http://LOCALHOST/x",
            "https://a-b.c/{x}|y%zz@z",
        ] {
            assert!(parse_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://hooks.example.com/",
            "ftp://x/",
            "hooks.example.com",
            "https://user:pw@hooks.example.com/",
            // What URL parsing alone would take:
            "https://A*",
            "https:hooks.example.com",
            "HTTPS://hooks.example.com/",
            " https://hooks.example.com/",
            "https://hooks.example.com/a b",
            "https://hooks.example.com/\tx",
            "https://hooks.example.com:65536/",
            "https://hooks.example.com:/",
            "https://h\u{e9}.example.com/",
            "https://a.0x1f/",
            "http://127.000.0.1/",
            "https://[2001:db8::1]/",
            "https://hooks_1.example.com/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
