//! Black-box tests: the real server on a random port, against real Postgres and SQLite.

mod helpers;

mod api_keys;
mod connections;
mod secrets;
mod startup;
mod storage;
mod validation;
