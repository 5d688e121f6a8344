//! API keys: who may call the service, and for what.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ApiKeyId, ParseError, parse_enum};

/// Recognisable in a leak scan (like GitHub's `ghp_`).
pub const API_KEY_PREFIX: &str = "crk_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    #[serde(rename = "admin")]
    Admin,
    #[serde(rename = "connections:write")]
    ConnectionsWrite,
    #[serde(rename = "connections:read")]
    ConnectionsRead,
    #[serde(rename = "tokens:read")]
    TokensRead,
}

impl Scope {
    const ALL: [(&'static str, Scope); 4] = [
        ("admin", Scope::Admin),
        ("connections:write", Scope::ConnectionsWrite),
        ("connections:read", Scope::ConnectionsRead),
        ("tokens:read", Scope::TokensRead),
    ];

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        parse_enum(input, &Self::ALL)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, scope)| *scope == self)
            .map(|(name, _)| *name)
            .expect("every scope is listed in ALL")
    }

    /// Whether a key holding `self` may do what `required` guards.
    /// `admin` grants everything; writing connections includes reading them.
    pub fn grants(self, required: Scope) -> bool {
        self == required
            || self == Scope::Admin
            || (self == Scope::ConnectionsWrite && required == Scope::ConnectionsRead)
    }
}

/// What an operator calls a key ("frontend", "sync-workers").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ApiKeyName(String);

impl ApiKeyName {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let trimmed = input.trim();
        if trimmed.is_empty()
            || trimmed.chars().count() > 100
            || trimmed.chars().any(char::is_control)
        {
            return Err(ParseError::new(
                "must be 1 to 100 characters without control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored key, as listed: never the key itself, only its first characters.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: ApiKeyName,
    pub scopes: Vec<Scope>,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
}

impl ApiKey {
    pub fn allows(&self, required: Scope) -> bool {
        self.scopes.iter().any(|scope| scope.grants(required))
    }
}

/// A key's plaintext: shown once at creation, then only its hash is kept.
pub struct ApiKeyToken(SecretString);

impl ApiKeyToken {
    /// 32 random bytes: far beyond guessing, so a plain SHA-256 is a safe hash to store.
    pub fn generate() -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(SecretString::from(format!(
            "{API_KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes.as_ref())
        )))
    }

    /// An operator-chosen key (the bootstrap admin key).
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        check_key_text(input.as_bytes())?;
        Ok(Self(SecretString::from(input)))
    }

    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash::of(self.0.expose_secret().as_bytes())
    }

    /// Enough of the key to recognise it in a list, too little to matter: `crk_` and 4
    /// more of a generated key; of an operator-chosen one, at most a fifth.
    pub fn display_prefix(&self) -> String {
        let key = self.0.expose_secret();
        let shown = if key.starts_with(API_KEY_PREFIX) && key.len() >= 40 {
            API_KEY_PREFIX.len() + 4
        } else {
            (key.len() / 5).min(8)
        };
        key.chars().take(shown).collect()
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyToken([redacted])")
    }
}

/// What every key must be: 20 to 200 printable ASCII characters without spaces.
fn check_key_text(input: &[u8]) -> Result<(), ParseError> {
    if input.len() < 20 || input.len() > 200 || !input.iter().all(u8::is_ascii_graphic) {
        return Err(ParseError::new(
            "must be 20 to 200 printable characters without spaces",
        ));
    }
    Ok(())
}

/// A key as a caller presents it, checked like any key and hashed where it lies in the
/// request: never copied, since every request on the token path carries one.
pub struct PresentedKey<'a>(&'a [u8]);

impl<'a> PresentedKey<'a> {
    pub fn parse(input: &'a [u8]) -> Result<Self, ParseError> {
        check_key_text(input)?;
        Ok(Self(input))
    }

    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash::of(self.0)
    }
}

/// SHA-256 of a key: what the database stores and the API-key service caches.
#[derive(Clone, Copy, Eq)]
pub struct ApiKeyHash(pub [u8; 32]);

impl std::hash::Hash for ApiKeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Constant time, so lookups reveal nothing about how close a guess came.
impl PartialEq for ApiKeyHash {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl ApiKeyHash {
    fn of(key: &[u8]) -> Self {
        Self(Sha256::digest(key).into())
    }

    pub fn to_base64(self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    pub fn from_base64(encoded: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_prefixed_unique_and_hash_stably() {
        let a = ApiKeyToken::generate();
        let b = ApiKeyToken::generate();
        assert!(a.expose().starts_with(API_KEY_PREFIX));
        assert_eq!(a.expose().len(), API_KEY_PREFIX.len() + 43);
        assert_ne!(a.expose(), b.expose());
        assert!(a.hash() == ApiKeyToken::parse(a.expose()).unwrap().hash());
        let hash = a.hash();
        assert!(ApiKeyHash::from_base64(&hash.to_base64()) == Some(hash));
        assert_eq!(format!("{a:?}"), "ApiKeyToken([redacted])");
    }

    #[test]
    fn a_presented_key_is_checked_and_hashed_as_a_stored_one_is() {
        let key = ApiKeyToken::generate();
        let presented = PresentedKey::parse(key.expose().as_bytes()).unwrap();
        assert!(presented.hash() == key.hash());
        let long = "k".repeat(200);
        assert!(PresentedKey::parse(long.as_bytes()).is_ok());
        assert!(PresentedKey::parse(&long.as_bytes()[..20]).is_ok());
        for refused in [
            &long.as_bytes()[..19],
            format!("{long}k").as_bytes(),
            b"crk_with a space 000000",
            b"crk_\xff_not_ascii_000000",
            b"crk_\t_a_tab_0000000000",
        ] {
            assert!(PresentedKey::parse(refused).is_err(), "{refused:?}");
            let text = String::from_utf8_lossy(refused);
            assert!(ApiKeyToken::parse(&text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn admin_grants_all_and_write_includes_read() {
        assert!(Scope::Admin.grants(Scope::TokensRead));
        assert!(Scope::ConnectionsWrite.grants(Scope::ConnectionsRead));
        assert!(!Scope::ConnectionsRead.grants(Scope::ConnectionsWrite));
        assert!(!Scope::TokensRead.grants(Scope::ConnectionsRead));
        assert!(!Scope::ConnectionsWrite.grants(Scope::Admin));
    }
}
