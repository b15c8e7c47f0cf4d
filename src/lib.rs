//! xiaozhi-gateway: a low-latency WebSocket voice gateway for xiaozhi ESP32 devices.
//!
//! Module map:
//! * [`api`]: the admin HTTP API under `/api` (conversations, clips, prompts, push).
//! * [`console`]: the operator console in the browser at `/console/` (embedded assets).
//! * [`config`]: typed settings (defaults < TOML file < environment), validated once.
//! * [`server`]: the one HTTP listener: WebSocket upgrade on any path, OTA, health; limits.
//! * [`auth`]: who may connect: static tokens, OTA-issued HMAC tokens, allowed devices.
//! * [`ota`]: the OTA endpoint that tells devices where the WebSocket is.
//! * [`devices`]: what the gateway knows about devices (seen through OTA and hellos).
//! * [`session`]: one task pair per connection: handshake, turn-taking, abort, idle timeout,
//!   paced downlink. A session never waits on another session, a database or an upload.
//! * [`audio`]: Opus decoding and voice activity detection for the uplink.
//! * [`pipeline`]: the conversation brain behind one [`pipeline::Pipeline`] interface; the
//!   echo ("parrot") brain is the embedded default.
//! * [`loadtest`]: `xiaozhi-gateway loadtest`, simulated talking and idle devices.
//! * [`client`]: a simulated device (tests and the load generator).
//! * [`embeddings`]: search by meaning: the embeddings provider and its background worker.
//! * [`export`]: messages as JSON lines or CSV, a conversation as a `.zip` (API and CLI).
//! * [`store`]: the conversation store (PostgreSQL or SQLite) and its background writer.
//! * [`uploads`]: clips to MinIO/S3 (or a local directory) by a durable background pool.
//! * [`vision`]: the camera tool's upload endpoint (`/mcp/vision/explain`).
//! * [`telemetry`]: the tracing subscriber.
//!
//! The wire protocol itself lives in the `firmware-protocol` crate.

// The database, object storage and upload pool are denied only where they must not be used
// (`session`); see clippy.toml.
#![allow(clippy::disallowed_types)]

pub mod api;
pub mod audio;
pub mod auth;
pub mod client;
pub mod config;
pub mod console;
pub mod conversation;
pub mod devices;
pub mod embeddings;
pub mod export;
pub mod loadtest;
pub mod ota;
pub mod pipeline;
pub mod server;
pub mod session;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod uploads;
pub mod vision;

/// Installs the process-wide TLS crypto provider (ring) that the database and object-storage
/// clients share. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
