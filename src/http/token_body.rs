//! The body of `GET /connections/{id}/token`, written straight into a buffer of the right
//! size. This is the hot path: serde_json scans every byte of the 400-character token
//! for characters to escape, and chrono formats the expiry through `fmt` machinery
//! (`crate::domain::timestamp` does without); together that was over a tenth of the
//! whole request's cost (callgrind). The output is
//! byte for byte what serde_json makes of `TokenBody` (a unit test holds it to that), and
//! any string that would need escaping goes through serde_json after all.

use chrono::{DateTime, Utc};
#[cfg(test)]
use serde::Serialize;

use super::json_out::{instant, plain_string, string, strings};
use crate::domain::{Environment, MerchantToken, Region};

#[cfg_attr(test, derive(Serialize))]
pub(super) struct TokenBody<'a> {
    pub access_token: &'a str,
    /// `AccessToken::is_json_plain`: copied as it is, not scanned again.
    #[cfg_attr(test, serde(skip))]
    pub access_token_is_plain: bool,
    /// This and the other `&'static str`s and enums are this service's own names, plain
    /// by construction: written without a scan.
    pub token_type: &'static str,
    pub expires_at: DateTime<Utc>,
    pub expires_in: i64,
    pub sp_api_endpoint: &'a str,
    pub aws_region: &'static str,
    pub region: Region,
    pub environment: Environment,
    pub merchant_token: &'a MerchantToken,
    pub marketplace_ids: &'a [String],
}

impl TokenBody<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            256 + self.access_token.len()
                + self.sp_api_endpoint.len()
                + self
                    .marketplace_ids
                    .iter()
                    .map(|id| id.len() + 3)
                    .sum::<usize>(),
        );
        out.extend_from_slice(b"{\"access_token\":");
        if self.access_token_is_plain {
            plain_string(&mut out, self.access_token);
        } else {
            string(&mut out, self.access_token);
        }
        out.extend_from_slice(b",\"token_type\":");
        plain_string(&mut out, self.token_type);
        out.extend_from_slice(b",\"expires_at\":");
        instant(&mut out, self.expires_at);
        out.extend_from_slice(b",\"expires_in\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.expires_in).as_bytes());
        out.extend_from_slice(b",\"sp_api_endpoint\":");
        string(&mut out, self.sp_api_endpoint);
        out.extend_from_slice(b",\"aws_region\":");
        plain_string(&mut out, self.aws_region);
        out.extend_from_slice(b",\"region\":");
        plain_string(&mut out, self.region.as_str());
        out.extend_from_slice(b",\"environment\":");
        plain_string(&mut out, self.environment.as_str());
        out.extend_from_slice(b",\"merchant_token\":");
        plain_string(&mut out, self.merchant_token.as_str());
        out.extend_from_slice(b",\"marketplace_ids\":");
        strings(&mut out, self.marketplace_ids);
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::AccessToken;

    fn body<'a>(
        token: &'a str,
        at: DateTime<Utc>,
        merchant: &'a MerchantToken,
        ids: &'a [String],
        endpoint: &'a str,
    ) -> TokenBody<'a> {
        TokenBody {
            access_token: token,
            // As the endpoint has it: from the token as it was received.
            access_token_is_plain: AccessToken::new(token.to_owned().into(), at, at)
                .is_json_plain(),
            token_type: "bearer",
            expires_at: at,
            expires_in: (at - Utc::now()).num_seconds(),
            sp_api_endpoint: endpoint,
            aws_region: "eu-west-1",
            region: Region::Eu,
            environment: Environment::Sandbox,
            merchant_token: merchant,
            marketplace_ids: ids,
        }
    }

    #[test]
    fn every_region_and_environment_is_written_as_serde_json_writes_it() {
        let hosts = crate::amazon::endpoints::SpApiHosts::default();
        let merchant = MerchantToken::parse("A1EXAMPLESELLER").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        for region in [Region::Na, Region::Eu, Region::Fe] {
            for environment in [Environment::Production, Environment::Sandbox] {
                let endpoint = hosts.endpoint(region, environment);
                let body = TokenBody {
                    aws_region: endpoint.aws_region,
                    region,
                    environment,
                    ..body("Atza|x", at, &merchant, &[], &endpoint.sp_api_endpoint)
                };
                let expected = serde_json::to_vec(&body).unwrap();
                assert_eq!(
                    String::from_utf8(body.to_json()).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }

    #[test]
    fn the_written_body_is_what_serde_json_writes() {
        let merchant = MerchantToken::parse("A1EXAMPLESELLER").unwrap();
        let ids = ["A1PA6795UKMFR9".to_owned(), "APJ6JRA9NG5V4".to_owned()];
        let tokens = [
            format!("Atza|{}", "IwEBIx9".repeat(57)),
            "Atza|\"quoted\\ and\ncontrol\u{1}".to_owned(),
            "Atza|ünïcode".to_owned(),
            String::new(),
        ];
        let instants = crate::domain::timestamp::sample_instants();
        for token in &tokens {
            for (n, at) in instants.iter().enumerate() {
                for ids in [&ids[..], &ids[..1], &[][..]] {
                    let endpoint = if n % 2 == 0 {
                        "https://sellingpartnerapi-eu.amazon.com"
                    } else {
                        "http://127.0.0.1:9/\"odd\""
                    };
                    let body = body(token, *at, &merchant, ids, endpoint);
                    let expected = serde_json::to_vec(&body).unwrap();
                    assert_eq!(
                        String::from_utf8(body.to_json()).unwrap(),
                        String::from_utf8(expected).unwrap(),
                        "token {token:?} at {at:?}"
                    );
                }
            }
        }
    }
}
