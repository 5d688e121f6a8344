//! Amazon's side: Login with Amazon (the token exchange), the SP-API calls the service
//! makes itself, and where SP-API lives. `answer` is what both clients do with what
//! Amazon sends back.

pub mod answer;
pub mod endpoints;
pub mod lwa;
pub mod spapi;
