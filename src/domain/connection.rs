//! The connection resource: one linked Seller or Vendor Central account.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::timestamp;
use super::{
    AccountType, ApplicationId, ClientId, ClientSecret, ConnectionId, Environment, MerchantToken,
    ParseError, RefreshToken, Region,
};

/// Amazon expires LWA client secrets after 180 days.
pub const CLIENT_SECRET_LIFETIME: Duration = Duration::days(180);

/// A period such as `14d` or `36h` (up to a year): how far ahead to look for client
/// secrets that expire.
pub fn parse_period(input: &str) -> Result<Duration, ParseError> {
    let refuse =
        || ParseError::new("must be a number of days or hours like `14d` or `36h`, up to a year");
    let (number, hours_per_unit) = match (input.strip_suffix('d'), input.strip_suffix('h')) {
        (Some(days), _) => (days, 24),
        (_, Some(hours)) => (hours, 1),
        _ => return Err(refuse()),
    };
    // Bounded before any arithmetic: a huge number is refused, never overflowed.
    let hours = number
        .parse::<i64>()
        .ok()
        .filter(|n| (1..=366 * 24 / hours_per_unit).contains(n))
        .ok_or_else(refuse)?
        * hours_per_unit;
    Ok(Duration::hours(hours))
}

/// How long Amazon keeps accepting a client secret after a new one was issued.
pub const CLIENT_SECRET_GRACE: Duration = Duration::days(7);

/// A display name: 1–200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ConnectionName(String);

impl ConnectionName {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let trimmed = input.trim();
        if trimmed.is_empty() || trimmed.chars().count() > 200 {
            return Err(ParseError::new("must be 1 to 200 characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ParseError::new("must not contain control characters"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the connection stands with Amazon; see docs/amazon.md, "Connection status".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Pending,
    Active,
    RefreshTokenInvalid,
    ClientCredentialsInvalid,
    ClientSecretExpired,
}

impl ConnectionStatus {
    const ALL: [(&'static str, ConnectionStatus); 5] = [
        ("pending", ConnectionStatus::Pending),
        ("active", ConnectionStatus::Active),
        (
            "refresh_token_invalid",
            ConnectionStatus::RefreshTokenInvalid,
        ),
        (
            "client_credentials_invalid",
            ConnectionStatus::ClientCredentialsInvalid,
        ),
        (
            "client_secret_expired",
            ConnectionStatus::ClientSecretExpired,
        ),
    ];

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        super::parse_enum(input, &Self::ALL)
    }

    /// Amazon refused these credentials: workers must stop until a person fixes them.
    pub fn is_refused(self) -> bool {
        matches!(
            self,
            Self::RefreshTokenInvalid | Self::ClientCredentialsInvalid | Self::ClientSecretExpired
        )
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, status)| *status == self)
            .map(|(name, _)| *name)
            .expect("every status is listed in ALL")
    }
}

/// When the client secret expires, and whether that date is our 180-day estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretExpiry {
    pub at: DateTime<Utc>,
    pub estimated: bool,
}

impl SecretExpiry {
    pub fn known(at: DateTime<Utc>) -> Self {
        Self {
            at,
            estimated: false,
        }
    }

    pub fn estimated_from(stored_at: DateTime<Utc>) -> Self {
        Self {
            at: stored_at + CLIENT_SECRET_LIFETIME,
            estimated: true,
        }
    }
}

/// The last failure talking to Amazon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub code: String,
    pub message: String,
    #[serde(serialize_with = "timestamp::serialize")]
    pub at: DateTime<Utc>,
}

/// A stored connection as callers see it: no secret, only the secret's last characters.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub id: ConnectionId,
    pub name: Option<ConnectionName>,
    pub account_type: AccountType,
    pub region: Region,
    pub environment: Environment,
    pub client_id: ClientId,
    pub client_secret_hint: String,
    #[serde(serialize_with = "timestamp::serialize")]
    pub client_secret_expires_at: DateTime<Utc>,
    pub client_secret_expires_at_estimated: bool,
    #[serde(serialize_with = "timestamp::serialize")]
    pub client_secret_updated_at: DateTime<Utc>,
    pub merchant_token: MerchantToken,
    pub application_id: Option<ApplicationId>,
    pub marketplace_ids: Vec<String>,
    pub status: ConnectionStatus,
    pub last_error: Option<LastError>,
    #[serde(serialize_with = "timestamp::serialize_option")]
    pub authorized_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "timestamp::serialize_option")]
    pub last_tested_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl Connection {
    pub fn secret_expiry(&self) -> SecretExpiry {
        SecretExpiry {
            at: self.client_secret_expires_at,
            estimated: self.client_secret_expires_at_estimated,
        }
    }

    pub fn set_secret_expiry(&mut self, expiry: SecretExpiry) {
        self.client_secret_expires_at = expiry.at;
        self.client_secret_expires_at_estimated = expiry.estimated;
    }
}

/// A parsed create request.
#[derive(Debug)]
pub struct NewConnection {
    pub name: Option<ConnectionName>,
    pub account_type: AccountType,
    pub region: Region,
    pub environment: Environment,
    pub client_id: ClientId,
    pub client_secret: ClientSecret,
    pub client_secret_expires_at: Option<DateTime<Utc>>,
    pub refresh_token: RefreshToken,
    pub merchant_token: MerchantToken,
    pub application_id: Option<ApplicationId>,
}

/// A parsed PATCH: `None` leaves a field alone; `Some(None)` clears an optional one.
#[derive(Debug, Default)]
pub struct ConnectionPatch {
    pub name: Option<Option<ConnectionName>>,
    pub account_type: Option<AccountType>,
    pub region: Option<Region>,
    pub environment: Option<Environment>,
    pub client_id: Option<ClientId>,
    pub client_secret: Option<ClientSecret>,
    /// `Some(None)` goes back to the 180-day estimate.
    pub client_secret_expires_at: Option<Option<DateTime<Utc>>>,
    pub refresh_token: Option<RefreshToken>,
    pub merchant_token: Option<MerchantToken>,
    pub application_id: Option<Option<ApplicationId>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_days_or_hours_within_a_year() {
        assert_eq!(parse_period("14d").unwrap(), Duration::days(14));
        assert_eq!(parse_period("36h").unwrap(), Duration::hours(36));
        assert_eq!(parse_period("366d").unwrap(), Duration::days(366));
        for bad in [
            "",
            "d",
            "0d",
            "367d",
            "-1d",
            "14",
            "14x",
            "1\u{e9}",
            "999999999999d",
            "99999999999999999999h",
            "1.5d",
            " 14d",
        ] {
            assert!(parse_period(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_names_round_trip() {
        for (name, status) in ConnectionStatus::ALL {
            assert_eq!(status.as_str(), name);
            assert_eq!(ConnectionStatus::parse(name), Ok(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(name)
            );
        }
    }

    #[test]
    fn name_is_trimmed_and_bounded() {
        assert_eq!(
            ConnectionName::parse("  EU shop ").unwrap().as_str(),
            "EU shop"
        );
        assert!(ConnectionName::parse("   ").is_err());
        assert!(ConnectionName::parse(&"x".repeat(201)).is_err());
        assert!(ConnectionName::parse("tab\there").is_err());
    }

    #[test]
    fn estimated_expiry_is_180_days_after_storing() {
        let stored = Utc::now();
        let expiry = SecretExpiry::estimated_from(stored);
        assert!(expiry.estimated);
        assert_eq!(expiry.at - stored, Duration::days(180));
    }
}
