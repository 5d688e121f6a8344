//! Website authorization's two values from the seller's browser: the `state` this service
//! handed out, and the `spapi_oauth_code` Amazon issued. Both are secrets: whoever holds
//! them can finish an authorization.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::ParseError;

/// Bytes of randomness in a state: far beyond guessing in its 10 minutes.
const STATE_BYTES: usize = 32;
/// The longest authorization code accepted (Amazon's are about 20 characters).
const MAX_CODE_LEN: usize = 512;

/// The `state` of one consent URL: random, single use, stored only as its hash.
pub struct OAuthStateToken(SecretString);

impl OAuthStateToken {
    pub fn generate() -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; STATE_BYTES]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(SecretString::from(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
    }

    /// A state as the browser brings it back: exactly what `generate` makes, or refused
    /// before any lookup.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let decoded = URL_SAFE_NO_PAD.decode(input).ok();
        if decoded.is_none_or(|bytes| bytes.len() != STATE_BYTES) {
            return Err(ParseError::new("is not a state this service issued"));
        }
        Ok(Self(SecretString::from(input)))
    }

    /// Hex SHA-256: what is stored. A plain hash suffices for 256 random bits.
    pub fn hash(&self) -> String {
        hex_digest(self.0.expose_secret())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for OAuthStateToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OAuthStateToken([redacted])")
    }
}

fn hex_digest(input: &str) -> String {
    Sha256::digest(input.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The `spapi_oauth_code` Amazon appends to the redirect: exchanged once, within five
/// minutes, for the seller's refresh token.
pub struct AuthorizationCode(SecretString);

impl AuthorizationCode {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if input.is_empty()
            || input.len() > MAX_CODE_LEN
            || !input.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ParseError::new(format!(
                "must be 1 to {MAX_CODE_LEN} printable characters"
            )));
        }
        Ok(Self(SecretString::from(input)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizationCode([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_random_and_only_its_own_shape_parses() {
        let one = OAuthStateToken::generate();
        let two = OAuthStateToken::generate();
        assert_ne!(one.expose(), two.expose());
        assert_eq!(one.expose().len(), 43);
        assert_eq!(
            OAuthStateToken::parse(one.expose()).unwrap().hash(),
            one.hash()
        );
        assert_eq!(one.hash().len(), 64);
        assert_ne!(one.hash(), two.hash());
        for bad in ["", "short", &format!("{}A", one.expose()), &"!".repeat(43)] {
            assert!(OAuthStateToken::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format!("{one:?}"), "OAuthStateToken([redacted])");
    }

    #[test]
    fn a_code_is_printable_and_bounded() {
        assert!(AuthorizationCode::parse("ANDbKQhYdXvOaDKVFEkT").is_ok());
        assert!(AuthorizationCode::parse("").is_err());
        assert!(AuthorizationCode::parse("with space").is_err());
        assert!(AuthorizationCode::parse(&"c".repeat(513)).is_err());
        let code = AuthorizationCode::parse("ANDbKQhYdXvOaDKVFEkT").unwrap();
        assert_eq!(format!("{code:?}"), "AuthorizationCode([redacted])");
    }
}
