//! Integration tests: a real gateway on a random port, driven by real clients.
//! One binary for every integration test (faster to build than one per file).
#![allow(clippy::disallowed_types)] // the session-only rule of clippy.toml

mod admin_api;
mod backup;
mod bad_input;
mod binary_e2e;
mod brain;
mod brain_resilience;
mod console;
mod fake_openai;
mod faults;
mod fidelity;
mod go_config;
mod helpers;
mod housekeeping;
mod import_mysql;
mod import_pg;
mod import_redis;
mod interop;
mod limits;
mod operator_api;
mod ops;
mod ota_auth;
mod persistence;
mod providers;
mod startup_log;
mod storage_suite;
mod store_search;
mod store_semantic;
mod store_suite;
mod store_views;
mod turns;
mod uploads;
mod vision;
