//! An LWA access token: what workers come for.

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

/// An access token (`Atza|…`) and when it stops working. Debug prints a redaction.
#[derive(Clone)]
pub struct AccessToken {
    secret: SecretString,
    pub expires_at: DateTime<Utc>,
    /// When LWA issued it; a forced refresh keeps a token this young.
    pub fetched_at: DateTime<Utc>,
    /// Whether the token goes into a JSON string as it is; found out once here, so that
    /// the token endpoint, which writes it into every answer, need not scan it each time.
    json_plain: bool,
}

impl AccessToken {
    pub fn new(secret: SecretString, fetched_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> Self {
        let json_plain = is_json_plain(secret.expose_secret());
        Self {
            secret,
            expires_at,
            fetched_at,
            json_plain,
        }
    }

    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// See `is_json_plain`. Amazon's tokens always are; a token that is not is still
    /// handed out, escaped.
    pub fn is_json_plain(&self) -> bool {
        self.json_plain
    }

    /// Seconds of life left at `now` (negative once expired).
    pub fn remaining_secs(&self, now: DateTime<Utc>) -> i64 {
        (self.expires_at - now).num_seconds()
    }
}

/// Whether `text` needs no escaping inside a JSON string: no control characters, `"` or
/// `\` (what serde_json escapes).
pub fn is_json_plain(text: &str) -> bool {
    // A branch-free fold rather than `any`, so the compiler checks 16 or 32 bytes at a
    // time.
    text.as_bytes().iter().fold(0u8, |found, &b| {
        found | u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\')
    }) == 0
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What a grantless token (`grant_type=client_credentials`) is for: operations that act
/// for the application rather than for one seller. Its token is shared by every
/// connection of the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantlessScope {
    /// The Notifications API's destinations and subscriptions.
    Notifications,
    /// Rotating the application's client secret.
    ClientSecretRotation,
}

impl GrantlessScope {
    const ALL: [(&'static str, GrantlessScope); 2] = [
        (
            "sellingpartnerapi::notifications",
            GrantlessScope::Notifications,
        ),
        (
            "sellingpartnerapi::client_credential:rotation",
            GrantlessScope::ClientSecretRotation,
        ),
    ];

    pub fn parse(input: &str) -> Result<Self, super::ParseError> {
        super::parse_enum(input, &Self::ALL)
    }

    /// As LWA takes it.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, scope)| *scope == self)
            .map(|(name, _)| *name)
            .expect("every scope is listed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::now;

    #[test]
    fn a_token_knows_whether_it_goes_into_json_as_it_is() {
        let token = |text: &str| AccessToken::new(text.to_owned().into(), now(), now());
        let amazons = format!("Atza|{}", "IwEBIx9-_+/=".repeat(40));
        assert!(token(&amazons).is_json_plain());
        assert!(token("Atza|ünïcode").is_json_plain());
        for odd in ["Atza|\"", "Atza|\\", "Atza|\n", "Atza|\u{1f}"] {
            assert!(!token(odd).is_json_plain(), "{odd:?}");
        }
    }

    #[test]
    fn grantless_scopes_are_amazons_names() {
        for (name, scope) in GrantlessScope::ALL {
            assert_eq!(GrantlessScope::parse(name), Ok(scope));
            assert_eq!(scope.as_str(), name);
        }
        assert_eq!(
            GrantlessScope::parse("sellingpartnerapi::migration")
                .unwrap_err()
                .0,
            "must be one of `sellingpartnerapi::notifications`, \
             `sellingpartnerapi::client_credential:rotation`"
        );
    }
}
