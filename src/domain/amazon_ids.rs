//! Amazon's identifiers and credentials, in the formats docs/amazon.md lists.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{Marketplace, ParseError};

const CLIENT_ID_PREFIX: &str = "amzn1.application-oa2-client.";
const CLIENT_SECRET_PREFIX: &str = "amzn1.oa2-cs.v1.";
const REFRESH_TOKEN_PREFIX: &str = "Atzr|";
/// Amazon documents tokens of at most 2048 bytes.
pub const MAX_TOKEN_LEN: usize = 2048;
const MAX_SECRET_LEN: usize = 512;

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Printable ASCII without spaces: what every Amazon credential is made of.
fn is_printable_token(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

/// LWA client identifier: `amzn1.application-oa2-client.` + 32 lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        match input.strip_prefix(CLIENT_ID_PREFIX) {
            Some(rest) if is_lower_hex(rest, 32) => Ok(Self(input.to_owned())),
            _ => Err(ParseError::new(format!(
                "must be `{CLIENT_ID_PREFIX}` followed by 32 lowercase hex digits"
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An application's client secret, with the one it replaced while Amazon may still
/// accept that one (for 7 days after a rotation).
#[derive(Clone, Debug)]
pub struct ClientSecrets {
    pub current: ClientSecret,
    pub previous: Option<ClientSecret>,
}

impl ClientSecrets {
    pub fn only(current: ClientSecret) -> Self {
        Self {
            current,
            previous: None,
        }
    }
}

/// LWA client secret. Debug prints a redaction; the memory is zeroed on drop.
#[derive(Clone)]
pub struct ClientSecret(SecretString);

impl ClientSecret {
    /// Accepts Amazon's documented format and, since formats change, any other
    /// printable secret of sensible length (`is_documented_format` tells which).
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if input.len() < 16 || input.len() > MAX_SECRET_LEN || !is_printable_token(input) {
            return Err(ParseError::new(format!(
                "must be an LWA client secret: 16 to {MAX_SECRET_LEN} printable characters without \
                 spaces (Amazon's are `{CLIENT_SECRET_PREFIX}` followed by 64 lowercase hex digits)"
            )));
        }
        Ok(Self(SecretString::from(input)))
    }

    /// A secret this service stored after parsing it; not checked again.
    pub fn from_stored(secret: SecretString) -> Self {
        Self(secret)
    }

    pub fn is_documented_format(&self) -> bool {
        self.0
            .expose_secret()
            .strip_prefix(CLIENT_SECRET_PREFIX)
            .is_some_and(|rest| is_lower_hex(rest, 64))
    }

    /// The last four characters, safe to show so people can tell secrets apart.
    pub fn hint(&self) -> String {
        let secret = self.0.expose_secret();
        secret[secret.len() - 4..].to_owned()
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret([redacted])")
    }
}

/// LWA refresh token (`Atzr|…`). Debug prints a redaction; zeroed on drop.
#[derive(Clone)]
pub struct RefreshToken(SecretString);

impl RefreshToken {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let valid = input.len() > REFRESH_TOKEN_PREFIX.len()
            && input.len() <= MAX_TOKEN_LEN
            && input.starts_with(REFRESH_TOKEN_PREFIX)
            && is_printable_token(input);
        if !valid {
            return Err(ParseError::new(format!(
                "must be an LWA refresh token: `{REFRESH_TOKEN_PREFIX}` followed by printable characters, at most {MAX_TOKEN_LEN} bytes"
            )));
        }
        Ok(Self(SecretString::from(input)))
    }

    /// A token this service stored after parsing it; not checked again.
    pub fn from_stored(token: SecretString) -> Self {
        Self(token)
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

/// The seller's merchant token (seller id): `A` + 9–15 uppercase letters or digits.
///
/// Kept inline (17 bytes), not on the heap: every cached grant holds one and every token
/// answer writes it. As a `String` it took 24 bytes and a heap block of its own, one
/// more cache miss per token request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MerchantToken {
    len: u8,
    bytes: [u8; MerchantToken::MAX_LEN],
}

impl MerchantToken {
    const MAX_LEN: usize = 16;

    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let rest_ok = |rest: &str| {
            (9..=15).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        };
        // Marketplace ids have the same shape; a seller pasting one is a common mistake.
        if let Some(marketplace) = Marketplace::find(input) {
            return Err(ParseError::new(format!(
                "this is the marketplace id of {}, not a seller's merchant token",
                marketplace.name
            )));
        }
        match input.strip_prefix('A') {
            Some(rest) if rest_ok(rest) => {
                let mut bytes = [0; Self::MAX_LEN];
                bytes[..input.len()].copy_from_slice(input.as_bytes());
                Ok(Self {
                    len: input.len() as u8,
                    bytes,
                })
            }
            _ => Err(ParseError::new(
                "must be a merchant token: `A` followed by 9 to 15 uppercase letters or digits",
            )),
        }
    }

    /// Uppercase letters and digits only: never needs escaping in JSON.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("a merchant token is ASCII")
    }
}

impl fmt::Debug for MerchantToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MerchantToken")
            .field(&self.as_str())
            .finish()
    }
}

impl Serialize for MerchantToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// SP-API application id: `amzn1.sp.solution.<uuid>` or `amzn1.sellerapps.app.<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ApplicationId(String);

impl ApplicationId {
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let uuid = input
            .strip_prefix("amzn1.sp.solution.")
            .or_else(|| input.strip_prefix("amzn1.sellerapps.app."));
        match uuid {
            Some(uuid) if uuid.len() == 36 && uuid::Uuid::try_parse(uuid).is_ok() => {
                Ok(Self(input.to_owned()))
            }
            _ => Err(ParseError::new(
                "must be `amzn1.sp.solution.<uuid>` or `amzn1.sellerapps.app.<uuid>`",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_ID: &str = "amzn1.application-oa2-client.0123456789abcdef0123456789abcdef";

    #[test]
    fn client_id_needs_prefix_and_32_lowercase_hex() {
        assert!(ClientId::parse(CLIENT_ID).is_ok());
        assert!(ClientId::parse(&CLIENT_ID.to_uppercase()).is_err());
        assert!(ClientId::parse(&CLIENT_ID[..CLIENT_ID.len() - 1]).is_err());
        assert!(ClientId::parse("amzn1.application-oa2-client.").is_err());
    }

    #[test]
    fn client_secret_accepts_other_printable_formats_and_redacts() {
        let documented = format!("amzn1.oa2-cs.v1.{}", "ab".repeat(32));
        let secret = ClientSecret::parse(&documented).unwrap();
        assert!(secret.is_documented_format());
        assert_eq!(secret.hint(), "abab");
        assert_eq!(format!("{secret:?}"), "ClientSecret([redacted])");

        let other = ClientSecret::parse("some-future-secret-format-1234").unwrap();
        assert!(!other.is_documented_format());
        assert!(ClientSecret::parse("short").is_err());
        assert!(ClientSecret::parse("has a space in the middle!").is_err());
    }

    #[test]
    fn refresh_token_needs_atzr_prefix_and_bounded_length() {
        let token = RefreshToken::parse("Atzr|IwEBIA-example").unwrap();
        assert_eq!(format!("{token:?}"), "RefreshToken([redacted])");
        assert!(RefreshToken::parse("Atzr|").is_err());
        assert!(RefreshToken::parse("Atza|access-token").is_err());
        assert!(RefreshToken::parse(&format!("Atzr|{}", "x".repeat(2044))).is_err());
        assert!(RefreshToken::parse(&format!("Atzr|{}", "x".repeat(2043))).is_ok());
    }

    #[test]
    fn merchant_token_is_a_then_9_to_15_uppercase_alphanumerics() {
        assert!(MerchantToken::parse("A1EXAMPLESELLER").is_ok());
        assert!(MerchantToken::parse("A123456789").is_ok());
        assert!(MerchantToken::parse("A12345678").is_err());
        assert!(MerchantToken::parse("A1exampleseller").is_err());
        assert!(MerchantToken::parse("B1EXAMPLESELLER").is_err());
        assert!(
            MerchantToken::parse("A1234567890ABCDEF").is_err(),
            "16 after the A"
        );
    }

    #[test]
    fn a_merchant_token_of_any_allowed_length_reads_and_writes_as_given() {
        for input in ["A123456789", "A1EXAMPLESELLER", "A123456789ABCDEF"] {
            let token = MerchantToken::parse(input).unwrap();
            assert_eq!(token.as_str(), input);
            assert_eq!(
                serde_json::to_string(&token).unwrap(),
                format!("\"{input}\"")
            );
            assert_eq!(format!("{token:?}"), format!("MerchantToken(\"{input}\")"));
        }
        assert_ne!(
            MerchantToken::parse("A123456789").unwrap(),
            MerchantToken::parse("A1234567890").unwrap()
        );
    }

    #[test]
    fn application_id_accepts_both_documented_forms() {
        let uuid = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9";
        assert!(ApplicationId::parse(&format!("amzn1.sp.solution.{uuid}")).is_ok());
        assert!(ApplicationId::parse(&format!("amzn1.sellerapps.app.{uuid}")).is_ok());
        assert!(ApplicationId::parse("amzn1.sp.solution.not-a-uuid").is_err());
    }
}

/// Properties of the credential and id parsers over generated inputs: no input panics,
/// what parses prints back as given, and every well-formed value parses.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{Marketplace, Region, parse_period};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn no_input_panics_and_what_parses_round_trips(input in "\\PC{0,80}") {
            if let Ok(id) = ClientId::parse(&input) {
                prop_assert_eq!(id.as_str(), input.as_str());
            }
            if let Ok(token) = MerchantToken::parse(&input) {
                prop_assert_eq!(token.as_str(), input.as_str());
            }
            if let Ok(token) = RefreshToken::parse(&input) {
                prop_assert_eq!(token.expose(), input.as_str());
            }
            if let Ok(secret) = ClientSecret::parse(&input) {
                prop_assert_eq!(secret.expose(), input.as_str());
            }
            if let Ok(id) = ApplicationId::parse(&input) {
                prop_assert_eq!(id.as_str(), input.as_str());
            }
            if let Ok(region) = Region::parse(&input) {
                prop_assert_eq!(region.as_str(), input.as_str());
            }
            let _ = parse_period(&input);
            let _ = crate::domain::OAuthStateToken::parse(&input);
            let _ = crate::domain::AuthorizationCode::parse(&input);
        }

        #[test]
        fn well_formed_values_parse(
            hex in "[0-9a-f]{32}",
            merchant in "A[0-9A-Z]{9,15}",
            refresh in "[!-~]{1,1000}",
        ) {
            let client_id = format!("amzn1.application-oa2-client.{hex}");
            prop_assert!(ClientId::parse(&client_id).is_ok());
            // A marketplace id has a merchant token's shape and is refused by name.
            prop_assert_eq!(
                MerchantToken::parse(&merchant).is_ok(),
                Marketplace::find(&merchant).is_none()
            );
            if let Ok(token) = MerchantToken::parse(&merchant) {
                prop_assert_eq!(token.as_str(), merchant.as_str());
            }
            let refresh_token = format!("Atzr|{refresh}");
            prop_assert!(RefreshToken::parse(&refresh_token).is_ok());
            let secret = format!("amzn1.oa2-cs.v1.{hex}{hex}");
            prop_assert!(ClientSecret::parse(&secret).is_ok());
        }
    }
}
