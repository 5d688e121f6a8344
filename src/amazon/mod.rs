//! Amazon's side: Login with Amazon (the token exchange), the SP-API calls the service
//! makes itself, and where SP-API lives. `answer` is what both clients do with what
//! Amazon sends back.

pub mod answer;
pub mod endpoints;
pub mod lwa;
pub mod spapi;

use std::time::Duration;

/// The HTTP client of a call to Amazon: bounded in time, never following a redirect (it
/// would re-send what the call carries elsewhere), and named as Amazon asks.
fn http_client(
    connect_timeout: Duration,
    request_timeout: Duration,
    https_only: bool,
) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(https_only)
        .user_agent(concat!(
            "connection-registry/",
            env!("CARGO_PKG_VERSION"),
            " (Language=Rust)"
        ))
        .build()
        .expect("a TLS backend is compiled in")
}
