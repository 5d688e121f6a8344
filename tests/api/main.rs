//! Black-box tests: the real server on a random port, against real Postgres and SQLite,
//! with a fake Amazon on loopback.

mod chaos;
mod fake_amazon;
mod fake_spapi;
mod helpers;
mod leaks;
mod logs;
mod private_pg;
mod proxy;

mod abuse;
mod amazon_faults;
mod api_keys;
mod audit;
mod client_secrets;
mod connection_tests;
mod connections;
mod crashes;
mod database_faults;
mod grantless;
mod lwa_answers;
mod master_keys;
mod operators;
mod replica_kill;
mod restricted;
mod scopes;
mod secrets;
mod slow_clients;
mod slow_lwa;
mod startup;
mod storage;
mod token_cache;
mod token_failures;
mod tokens;
mod validation;
mod webhooks;
mod website_auth;
