//! JSON written straight into a buffer, for the bodies served most: the token body and
//! pages of connections. serde_json scans every string for characters to escape, and
//! serialises instants through `Serialize`; here the strings this service makes (enum
//! names, ids, instants) are copied as they are, and every other string is checked once
//! with a test the compiler vectorises, going through serde_json only if it needs
//! escaping. On a page of 50 connections that was about a third of the server's work
//! (callgrind). Unit tests hold each output byte for byte to serde_json's.

use chrono::{DateTime, Utc};

use crate::domain::timestamp::Rfc3339;
use crate::domain::{Connection, is_json_plain};

/// A page of `GET /connections`: `{"items":[…],"next_cursor":…}`.
pub(super) fn connection_page(items: &[Connection], next_cursor: Option<&str>) -> Vec<u8> {
    // A connection is under 700 bytes: one allocation for a full page.
    let mut out = Vec::with_capacity(64 + 700 * items.len());
    out.extend_from_slice(b"{\"items\":[");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        connection(&mut out, item);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match next_cursor {
        Some(cursor) => string(&mut out, cursor),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

/// One connection, its fields in `Connection`'s order (what its `Serialize` writes).
fn connection(out: &mut Vec<u8>, c: &Connection) {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.extend_from_slice(b"{\"id\":");
    plain_string(out, c.id.as_uuid().hyphenated().encode_lower(&mut id));
    out.extend_from_slice(b",\"name\":");
    optional(out, c.name.as_ref(), |out, name| string(out, name.as_str()));
    out.extend_from_slice(b",\"account_type\":");
    plain_string(out, c.account_type.as_str());
    out.extend_from_slice(b",\"region\":");
    plain_string(out, c.region.as_str());
    out.extend_from_slice(b",\"environment\":");
    plain_string(out, c.environment.as_str());
    out.extend_from_slice(b",\"client_id\":");
    string(out, c.client_id.as_str());
    out.extend_from_slice(b",\"client_secret_hint\":");
    string(out, &c.client_secret_hint);
    out.extend_from_slice(b",\"client_secret_expires_at\":");
    instant(out, c.client_secret_expires_at);
    out.extend_from_slice(b",\"client_secret_expires_at_estimated\":");
    boolean(out, c.client_secret_expires_at_estimated);
    out.extend_from_slice(b",\"client_secret_updated_at\":");
    instant(out, c.client_secret_updated_at);
    out.extend_from_slice(b",\"merchant_token\":");
    string(out, c.merchant_token.as_str());
    out.extend_from_slice(b",\"application_id\":");
    optional(out, c.application_id.as_ref(), |out, id| {
        string(out, id.as_str())
    });
    out.extend_from_slice(b",\"marketplace_ids\":");
    strings(out, &c.marketplace_ids);
    out.extend_from_slice(b",\"status\":");
    plain_string(out, c.status.as_str());
    out.extend_from_slice(b",\"last_error\":");
    optional(out, c.last_error.as_ref(), |out, error| {
        out.extend_from_slice(b"{\"code\":");
        string(out, &error.code);
        out.extend_from_slice(b",\"message\":");
        string(out, &error.message);
        out.extend_from_slice(b",\"at\":");
        instant(out, error.at);
        out.push(b'}');
    });
    out.extend_from_slice(b",\"authorized_at\":");
    optional(out, c.authorized_at, instant);
    out.extend_from_slice(b",\"last_tested_at\":");
    optional(out, c.last_tested_at, instant);
    out.extend_from_slice(b",\"created_at\":");
    instant(out, c.created_at);
    out.extend_from_slice(b",\"updated_at\":");
    instant(out, c.updated_at);
    out.push(b'}');
}

fn optional<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        Some(value) => write(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// A JSON array of strings.
pub(super) fn strings(out: &mut Vec<u8>, items: &[String]) {
    out.push(b'[');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        string(out, item);
    }
    out.push(b']');
}

/// A JSON string: copied as it is when nothing in it needs escaping (what serde_json
/// escapes: control characters, `"` and `\`), else escaped by serde_json.
pub(super) fn string(out: &mut Vec<u8>, text: &str) {
    if is_json_plain(text) {
        plain_string(out, text);
    } else {
        serde_json::to_writer(out, text).expect("writing to a Vec cannot fail");
    }
}

/// A JSON string of `text`, known to need no escaping.
pub(super) fn plain_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// An instant as a JSON string, as `crate::domain::timestamp::serialize` writes it:
/// what `Rfc3339` does not cover goes through chrono's `Serialize`, as it does there.
pub(super) fn instant(out: &mut Vec<u8>, at: DateTime<Utc>) {
    match Rfc3339::new(at) {
        Some(text) => plain_string(out, text.as_str()),
        None => serde_json::to_writer(out, &at).expect("writing to a Vec cannot fail"),
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::domain::{
        AccountType, ApplicationId, ClientId, ConnectionId, ConnectionName, ConnectionStatus,
        Environment, LastError, MerchantToken, Region,
    };

    #[derive(Serialize)]
    struct Page<'a> {
        items: &'a [Connection],
        next_cursor: Option<&'a str>,
    }

    /// The `n`th sample: each instant field takes another of `instants`, so a field
    /// written under another's name fails the comparison.
    fn sample(n: usize, instants: &[DateTime<Utc>]) -> Connection {
        let odd = n % 2 == 1;
        let at = |field: usize| instants[(n + field) % instants.len()];
        Connection {
            id: ConnectionId::generate(),
            name: odd.then(|| ConnectionName::parse("Shop \"EU\" \\ ünïcode").unwrap()),
            account_type: if odd {
                AccountType::Vendor
            } else {
                AccountType::Seller
            },
            region: [Region::Na, Region::Eu, Region::Fe][n % 3],
            environment: if odd {
                Environment::Sandbox
            } else {
                Environment::Production
            },
            client_id: ClientId::parse(
                "amzn1.application-oa2-client.0123456789abcdef0123456789abcdef",
            )
            .unwrap(),
            client_secret_hint: if odd { "…cdef".into() } else { "cdef".into() },
            client_secret_expires_at: at(0),
            client_secret_expires_at_estimated: odd,
            client_secret_updated_at: at(1),
            merchant_token: MerchantToken::parse("A1EXAMPLESELLER").unwrap(),
            application_id: (!odd).then(|| {
                ApplicationId::parse("amzn1.sp.solution.01234567-89ab-cdef-0123-456789abcdef")
                    .unwrap()
            }),
            marketplace_ids: match n % 3 {
                0 => vec![],
                1 => vec!["A1PA6795UKMFR9".into()],
                _ => vec!["A1PA6795UKMFR9".into(), "q\"uote\u{1}".into()],
            },
            status: [
                ConnectionStatus::Pending,
                ConnectionStatus::Active,
                ConnectionStatus::RefreshTokenInvalid,
                ConnectionStatus::ClientCredentialsInvalid,
                ConnectionStatus::ClientSecretExpired,
            ][n % 5],
            last_error: odd.then(|| LastError {
                code: "invalid_grant".into(),
                message: "LWA said: \"revoked\"\nsee \\docs".into(),
                at: at(2),
            }),
            authorized_at: odd.then(|| at(3)),
            last_tested_at: (!odd).then(|| at(4)),
            created_at: at(5),
            updated_at: at(6),
        }
    }

    #[test]
    fn a_page_is_written_as_serde_json_writes_it() {
        let instants = crate::domain::timestamp::sample_instants();
        // Enough connections for every instant in every field, and every status.
        let items: Vec<Connection> = (0..instants.len().max(5) * 2)
            .map(|n| sample(n, &instants))
            .collect();
        for page in [&items[..], &items[..1], &[][..]] {
            for cursor in [None, Some("AZ3n-x_0"), Some("odd \"cursor\"")] {
                let expected = serde_json::to_vec(&Page {
                    items: page,
                    next_cursor: cursor,
                })
                .unwrap();
                assert_eq!(
                    String::from_utf8(connection_page(page, cursor)).unwrap(),
                    String::from_utf8(expected).unwrap(),
                );
            }
        }
    }
}
