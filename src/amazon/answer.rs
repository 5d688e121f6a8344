//! What comes back from Amazon is untrusted: read here up to a size, with its texts
//! scrubbed of the secrets the call sent (and of anything that looks like a credential)
//! and cut short, before any error, log line or row can hold them. Both Amazon clients
//! (LWA, SP-API) use these at the one place an answer enters.

use std::time::Duration;

use reqwest::header;

/// How much of a text from Amazon (a description, a message) is kept.
const MAX_TEXT_LEN: usize = 300;
/// The most of an answer that is read; Amazon's token and test answers are a few KB.
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// `Retry-After` in seconds, if given so.
pub fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// A transport failure in words that name neither the URL nor the body.
pub fn describe_transport_error(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".into()
    } else if err.is_connect() {
        "could not connect".into()
    } else {
        "connection failed".into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the answer is larger than {MAX_BODY_LEN} bytes")]
    TooLarge,
    /// Why the body could not be read (no URL, no body: safe to show).
    #[error("{0}")]
    Transport(String),
}

/// Reads an answer's body, up to `MAX_BODY_LEN` bytes.
pub async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_LEN as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|err| ReadError::Transport(describe_transport_error(&err)))?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > MAX_BODY_LEN {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
}

/// Cleans text from Amazon of the secrets one call sent (`sent`).
pub struct Scrubber<'a> {
    sent: &'a [&'a str],
}

impl<'a> Scrubber<'a> {
    pub fn new(sent: &'a [&'a str]) -> Self {
        Self { sent }
    }

    /// Free text (a description, a message): bounded, with no secret.
    pub fn text(&self, text: &str) -> String {
        scrub(text, self.sent)
    }

    /// An error code: one safe word, with no secret.
    pub fn code(&self, code: &str) -> String {
        scrub_code(&self.text(code))
    }
}

/// What Amazon said, bounded and without anything we sent it.
/// Secrets are replaced before the text is cut (a cut secret would no longer match), as
/// sent and as form-encoded; any other word that looks like a credential goes too.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|secret| !secret.is_empty()) {
        text = text.replace(secret, "[redacted]");
        text = text.replace(&form_encode(secret), "[redacted]");
    }
    let words: Vec<&str> = text
        .split(' ')
        .map(|word| {
            let lower = word.to_ascii_lowercase();
            let looks_secret = ["atzr|", "atza|", "atzr%7c", "atza%7c", "amzn1.oa2-cs."]
                .iter()
                .any(|marker| lower.contains(marker));
            if looks_secret { "[redacted]" } else { word }
        })
        .collect();
    words.join(" ").chars().take(MAX_TEXT_LEN).collect()
}

/// `application/x-www-form-urlencoded` as the request body carried it.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// An error code from the other side, fit for a log line.
pub fn scrub_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_what_we_sent_and_bounds_length() {
        assert_eq!(
            scrub(
                "bad token Atzr|abc for secret s3cr3t",
                &["Atzr|abc", "s3cr3t"]
            ),
            "bad token [redacted] for secret [redacted]"
        );
        assert_eq!(scrub(&"x".repeat(1000), &[]).len(), MAX_TEXT_LEN);
        // A long secret late in a long text is replaced whole, not cut into a fragment.
        let long = format!("Atzr|{}", "t".repeat(400));
        let text = format!("{} {long}", "x".repeat(250));
        assert!(!scrub(&text, &[&long]).contains("ttt"));
        assert_eq!(
            scrub("got Atzr%7Cabc and atza|zzz", &["Atzr|abc"]),
            "got [redacted] and [redacted]"
        );
    }

    #[test]
    fn form_encoding_matches_the_request_body() {
        assert_eq!(form_encode("Atzr|a-b_c.d*e f/g"), "Atzr%7Ca-b_c.d*e+f%2Fg");
    }
}
