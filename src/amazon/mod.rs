//! Amazon's side: Login with Amazon (token exchange) and where SP-API lives.

pub mod endpoints;
pub mod lwa;
