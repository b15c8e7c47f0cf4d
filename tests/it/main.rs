//! Integration tests: a real gateway on a random port, driven by real clients.
//! One binary for every integration test (faster to build than one per file).
#![allow(clippy::disallowed_types)] // the session-only rule of clippy.toml

mod admin_api;
mod bad_input;
mod binary_e2e;
mod brain;
mod brain_resilience;
mod fake_openai;
mod fidelity;
mod go_config;
mod helpers;
mod import_mysql;
mod import_pg;
mod import_redis;
mod interop;
mod ops;
mod ota_auth;
mod persistence;
mod providers;
mod storage_suite;
mod store_batches;
mod store_suite;
mod turns;
mod uploads;
mod vision;
