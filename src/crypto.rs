//! Secrets at rest: AES-256-GCM under a keyring of master keys.
//!
//! A sealed value is the text `v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`. The nonce is
//! 96 random bits per encryption. The additional authenticated data names the owning row and
//! the field, so a ciphertext copied to another row or column fails to open.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use secrecy::SecretString;
use zeroize::Zeroizing;

const ENVELOPE_VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// Which secret a ciphertext holds; part of the authenticated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ClientSecret,
    RefreshToken,
    AccessToken,
    /// The known plaintext that proves at start-up that a key is the right one.
    KeyCheck,
    /// A webhook endpoint's signing secret.
    WebhookSecret,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::ClientSecret => "client_secret",
            Field::RefreshToken => "refresh_token",
            Field::AccessToken => "access_token",
            Field::KeyCheck => "key_check",
            Field::WebhookSecret => "webhook_secret",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("expected comma-separated `key_id:base64(32 bytes)` entries, got an empty list")]
    Empty,
    #[error("entry {position} is not `key_id:base64(32 bytes)`")]
    MissingSeparator { position: usize },
    /// By position: a malformed entry may be the key itself, which must not be echoed.
    #[error(
        "entry {position}: the key id (before `:`) must be 1 to 32 letters, digits, `-` or `_`"
    )]
    BadKeyId { position: usize },
    #[error("key `{0}` is not valid base64")]
    BadBase64(String),
    #[error("key `{id}` is {len} bytes; AES-256 needs exactly 32")]
    BadLength { id: String, len: usize },
    #[error("key id `{0}` appears twice")]
    DuplicateId(String),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed with key `{0}`, which is not configured")]
    UnknownKey(String),
    #[error("sealed value does not open with key `{0}` for this owner and field")]
    Tampered(String),
}

/// A ciphertext as stored: safe to log, print and dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed(String);

impl Sealed {
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the key that made this ciphertext.
    pub fn key_id(&self) -> Option<&str> {
        let mut parts = self.0.splitn(3, ':');
        match (parts.next(), parts.next()) {
            (Some(ENVELOPE_VERSION), Some(id)) => Some(id),
            _ => None,
        }
    }
}

struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The configured master keys: the first encrypts, every one decrypts.
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|key| key.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses `REGISTRY_MASTER_KEYS`: `id:base64,id:base64,…`.
    pub fn parse(spec: &str) -> Result<Self, KeyringError> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (index, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let (id, encoded) = entry
                .split_once(':')
                .ok_or(KeyringError::MissingSeparator {
                    position: index + 1,
                })?;
            let valid_id = !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_id {
                return Err(KeyringError::BadKeyId {
                    position: index + 1,
                });
            }
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| KeyringError::BadBase64(id.to_owned()))?,
            );
            if bytes.len() != 32 {
                return Err(KeyringError::BadLength {
                    id: id.to_owned(),
                    len: bytes.len(),
                });
            }
            if keys.iter().any(|key| key.id == id) {
                return Err(KeyringError::DuplicateId(id.to_owned()));
            }
            keys.push(MasterKey {
                id: id.to_owned(),
                cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
            });
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Self { keys })
    }

    /// A new random key in `REGISTRY_MASTER_KEYS` form, for the embedded default.
    pub fn generate_spec(id: &str) -> SecretString {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        SecretString::from(format!("{id}:{}", STANDARD.encode(bytes.as_ref())))
    }

    pub fn primary_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.id.as_str())
    }

    pub fn seal(&self, owner: &str, field: Field, plaintext: &str) -> Sealed {
        self.seal_with(&self.keys[0], owner, field, plaintext)
    }

    /// Seals under a specific key; used to write each key's start-up check.
    pub fn seal_with_key(
        &self,
        key_id: &str,
        owner: &str,
        field: Field,
        plaintext: &str,
    ) -> Option<Sealed> {
        let key = self.keys.iter().find(|key| key.id == key_id)?;
        Some(self.seal_with(key, owner, field, plaintext))
    }

    fn seal_with(&self, key: &MasterKey, owner: &str, field: Field, plaintext: &str) -> Sealed {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(owner, field);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption cannot fail for inputs under 64 GiB");
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Sealed(format!(
            "{ENVELOPE_VERSION}:{}:{}",
            key.id,
            STANDARD.encode(blob)
        ))
    }

    pub fn open(
        &self,
        owner: &str,
        field: Field,
        sealed: &Sealed,
    ) -> Result<SecretString, CryptoError> {
        let mut parts = sealed.0.splitn(3, ':');
        let (Some(ENVELOPE_VERSION), Some(key_id), Some(encoded)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|key| key.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = STANDARD
            .decode(encoded)
            .map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let aad = associated_data(owner, field);
        let plaintext = Zeroizing::new(
            key.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| CryptoError::Tampered(key_id.to_owned()))?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| CryptoError::Malformed)?;
        Ok(SecretString::from(text))
    }
}

fn associated_data(owner: &str, field: Field) -> String {
    format!(
        "connection-registry:{ENVELOPE_VERSION}:{owner}:{}",
        field.as_str()
    )
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn keyring(spec: &str) -> Keyring {
        Keyring::parse(spec).unwrap()
    }

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn seals_with_first_key_and_opens_with_any() {
        let old = keyring(&format!("old:{}", key(1)));
        let both = keyring(&format!("new:{},old:{}", key(2), key(1)));
        let sealed_old = old.seal("row-1", Field::RefreshToken, "Atzr|secret");
        assert_eq!(sealed_old.key_id(), Some("old"));
        let opened = both
            .open("row-1", Field::RefreshToken, &sealed_old)
            .unwrap();
        assert_eq!(opened.expose_secret(), "Atzr|secret");
        let sealed_new = both.seal("row-1", Field::RefreshToken, "Atzr|secret");
        assert_eq!(sealed_new.key_id(), Some("new"));
        assert!(matches!(
            old.open("row-1", Field::RefreshToken, &sealed_new),
            Err(CryptoError::UnknownKey(id)) if id == "new"
        ));
    }

    #[test]
    fn nonce_is_fresh_per_encryption() {
        let ring = keyring(&format!("k1:{}", key(3)));
        let a = ring.seal("row", Field::ClientSecret, "same");
        let b = ring.seal("row", Field::ClientSecret, "same");
        assert_ne!(a, b);
    }

    #[test]
    fn ciphertext_moved_to_another_row_or_field_does_not_open() {
        let ring = keyring(&format!("k1:{}", key(4)));
        let sealed = ring.seal("row-1", Field::ClientSecret, "amzn1.oa2-cs.v1.x");
        assert!(matches!(
            ring.open("row-2", Field::ClientSecret, &sealed),
            Err(CryptoError::Tampered(_))
        ));
        assert!(matches!(
            ring.open("row-1", Field::RefreshToken, &sealed),
            Err(CryptoError::Tampered(_))
        ));
    }

    #[test]
    fn same_key_id_with_other_bytes_does_not_open() {
        let right = keyring(&format!("k1:{}", key(5)));
        let wrong = keyring(&format!("k1:{}", key(6)));
        let sealed = right.seal("row", Field::AccessToken, "Atza|token");
        assert!(matches!(
            wrong.open("row", Field::AccessToken, &sealed),
            Err(CryptoError::Tampered(_))
        ));
        assert!(matches!(
            right.open("row", Field::AccessToken, &Sealed("v1:k1:@@@".into())),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn rejects_malformed_key_specs_with_a_reason() {
        assert_eq!(Keyring::parse("").unwrap_err(), KeyringError::Empty);
        assert_eq!(
            Keyring::parse("nocolon").unwrap_err(),
            KeyringError::MissingSeparator { position: 1 }
        );
        assert_eq!(
            Keyring::parse("k1:!!!").unwrap_err(),
            KeyringError::BadBase64("k1".into())
        );
        assert_eq!(
            Keyring::parse(&format!("k1:{}", STANDARD.encode([0u8; 16]))).unwrap_err(),
            KeyringError::BadLength {
                id: "k1".into(),
                len: 16
            }
        );
        assert_eq!(
            Keyring::parse(&format!("k1:{},k1:{}", key(1), key(2))).unwrap_err(),
            KeyringError::DuplicateId("k1".into())
        );
        // A swapped entry would put the key where the id goes: it is not repeated.
        let swapped = format!("{}:k1", key(1));
        let err = Keyring::parse(&swapped).unwrap_err();
        assert_eq!(err, KeyringError::BadKeyId { position: 1 });
        assert!(!err.to_string().contains(&key(1)));
        let generated = Keyring::generate_spec("local");
        assert_eq!(keyring(generated.expose_secret()).primary_id(), "local");
    }

    #[test]
    fn key_ids_are_1_to_32_letters_digits_dashes_or_underscores() {
        for good in ["k", "prod-2026_a", &"k".repeat(32)] {
            let ring = keyring(&format!("{good}:{}", key(1)));
            assert_eq!(ring.primary_id(), good);
        }
        for bad in ["", "k.1", "k 1", &"k".repeat(33)] {
            assert_eq!(
                Keyring::parse(&format!("ok:{},{bad}:{}", key(1), key(2))).unwrap_err(),
                KeyringError::BadKeyId { position: 2 },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn seal_with_key_uses_the_named_key() {
        let ring = keyring(&format!("k2:{},k1:{}", key(2), key(1)));
        let sealed = ring
            .seal_with_key("k1", "row", Field::KeyCheck, "text")
            .unwrap();
        assert_eq!(sealed.key_id(), Some("k1"));
        let only_k1 = keyring(&format!("k1:{}", key(1)));
        let opened = only_k1.open("row", Field::KeyCheck, &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "text");
        assert!(
            ring.seal_with_key("k3", "row", Field::KeyCheck, "text")
                .is_none()
        );
    }

    #[test]
    fn truncated_or_foreign_ciphertexts_are_refused_without_panic() {
        let ring = keyring(&format!("k1:{}", key(8)));
        let sealed = ring.seal("row", Field::ClientSecret, "secret");
        let blob = STANDARD
            .decode(sealed.as_str().rsplit(':').next().unwrap())
            .unwrap();
        for len in [0, 5, NONCE_LEN - 1] {
            let truncated = Sealed(format!("v1:k1:{}", STANDARD.encode(&blob[..len])));
            assert!(matches!(
                ring.open("row", Field::ClientSecret, &truncated),
                Err(CryptoError::Malformed)
            ));
        }
        for len in [NONCE_LEN, blob.len() - 1] {
            let truncated = Sealed(format!("v1:k1:{}", STANDARD.encode(&blob[..len])));
            assert!(matches!(
                ring.open("row", Field::ClientSecret, &truncated),
                Err(CryptoError::Tampered(_))
            ));
        }
        for foreign in ["v2:k1:AAAA", "k1:AAAA", "", "v1:k9:AAAA"] {
            let result = ring.open("row", Field::ClientSecret, &Sealed(foreign.into()));
            assert!(result.is_err(), "{foreign:?}");
        }
    }

    #[test]
    fn debug_shows_key_ids_only() {
        let ring = keyring(&format!("k1:{}", key(7)));
        assert_eq!(format!("{ring:?}"), r#"Keyring { key_ids: ["k1"] }"#);
    }
}

/// Properties of the ciphertext decoder over generated inputs: it never panics, and
/// whatever is not exactly what was sealed, for this owner and field, does not open.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    use super::*;

    fn ring() -> Keyring {
        Keyring::parse(&format!(
            "k2:{},k1:{}",
            STANDARD.encode([2u8; 32]),
            STANDARD.encode([1u8; 32])
        ))
        .unwrap()
    }

    const FIELDS: [Field; 5] = [
        Field::ClientSecret,
        Field::RefreshToken,
        Field::AccessToken,
        Field::KeyCheck,
        Field::WebhookSecret,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn what_is_sealed_opens_for_its_owner_and_field_only(
            plaintext in "[ -~]{0,600}",
            owner in "[a-z0-9-]{1,40}",
            other_owner in "[a-z0-9-]{1,40}",
            field in 0usize..5,
            other_field in 0usize..5,
        ) {
            let ring = ring();
            let sealed = ring.seal(&owner, FIELDS[field], &plaintext);
            prop_assert_eq!(sealed.key_id(), Some("k2"));
            let opened = ring.open(&owner, FIELDS[field], &sealed).unwrap();
            prop_assert_eq!(opened.expose_secret(), plaintext.as_str());
            if other_owner != owner {
                prop_assert!(ring.open(&other_owner, FIELDS[field], &sealed).is_err());
            }
            if other_field != field {
                prop_assert!(ring.open(&owner, FIELDS[other_field], &sealed).is_err());
            }
        }

        #[test]
        fn any_changed_or_cut_ciphertext_is_refused(
            plaintext in "[ -~]{1,200}",
            position in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let ring = ring();
            let sealed = ring.seal("row", Field::RefreshToken, &plaintext);
            let (prefix, encoded) = sealed.as_str().rsplit_once(':').unwrap();
            let mut blob = STANDARD.decode(encoded).unwrap();
            let at = position.index(blob.len());
            blob[at] ^= flip;
            let tampered = Sealed::from_stored(format!("{prefix}:{}", STANDARD.encode(&blob)));
            prop_assert!(matches!(
                ring.open("row", Field::RefreshToken, &tampered),
                Err(CryptoError::Tampered(_))
            ));
            let text = sealed.as_str();
            let truncated = Sealed::from_stored(text[..cut.index(text.len())].to_owned());
            prop_assert!(ring.open("row", Field::RefreshToken, &truncated).is_err());
        }

        #[test]
        fn another_key_id_is_named_and_garbage_never_panics(
            key_id in "[a-z0-9]{1,12}",
            garbage in "\\PC{0,300}",
        ) {
            let ring = ring();
            let sealed = ring.seal("row", Field::AccessToken, "Atza|token");
            let (_, rest) = sealed.as_str().split_once(':').unwrap();
            let (_, encoded) = rest.split_once(':').unwrap();
            let moved = Sealed::from_stored(format!("v1:{key_id}:{encoded}"));
            let opened = ring.open("row", Field::AccessToken, &moved);
            match key_id.as_str() {
                "k2" => prop_assert!(opened.is_ok()),
                "k1" => prop_assert!(matches!(opened, Err(CryptoError::Tampered(_)))),
                other => prop_assert_eq!(opened.unwrap_err(), CryptoError::UnknownKey(other.to_owned())),
            }
            let _ = ring.open("row", Field::AccessToken, &Sealed::from_stored(garbage));
        }
    }
}
