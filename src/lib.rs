//! connection-registry: keeps Amazon SP-API connection credentials, encrypted, and hands
//! short-lived Login-with-Amazon access tokens to sync workers. See README.md and docs/.

pub mod amazon;
pub mod api_keys;
pub mod app;
pub mod cli;
pub mod client_secrets;
pub mod commands;
pub mod config;
pub mod connection_test;
pub mod connections;
pub mod crypto;
pub mod domain;
pub mod events;
pub mod handouts;
pub mod http;
pub mod master_keys;
pub mod metrics;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod webhooks;
pub mod website_auth;
