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
}

impl AccessToken {
    pub fn new(secret: SecretString, fetched_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> Self {
        Self {
            secret,
            expires_at,
            fetched_at,
        }
    }

    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Seconds of life left at `now` (negative once expired).
    pub fn remaining_secs(&self, now: DateTime<Utc>) -> i64 {
        (self.expires_at - now).num_seconds()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}
