//! xiaozhi-gateway: a low-latency WebSocket voice gateway for xiaozhi ESP32 devices.
//!
//! Module map, from the edge down (`docs/ARCHITECTURE.md` has the layers and the rules):
//! * [`startup`]: builds the gateway from [`config::Settings`] and runs it until stopped; drain.
//! * `server`: the one HTTP listener: WebSocket upgrade on any path, the routes, limits, health
//!   and readiness. Each route takes its own slice of the shared state.
//! * `api`: the admin HTTP API under `/api` (conversations, clips, prompts, push, activation).
//! * `ota`: the OTA endpoint that tells devices where the WebSocket is.
//! * `vision`: the camera tool's upload endpoint (`/mcp/vision/explain`).
//! * `auth`: who may connect: static tokens, OTA-issued HMAC tokens, allowed devices.
//! * [`session`]: one device connection: handshake, the turn-taking state machine, the reply
//!   task and the paced downlink writer. A session never waits on another session, a database or
//!   an upload, and cannot name them.
//! * [`pipeline`]: the conversation brains (echo, the providers' ASR → LLM → TTS) and the
//!   provider clients, the vision model among them.
//! * [`conversation`]: the contract between a session and a brain: the turn, the reply sink
//!   and its progress, the device-tools trait. Depends on neither side.
//! * [`limits`]: rate limits per source address and per device, and the admission pace of
//!   new sessions.
//! * [`devices`]: what the gateway knows about devices (seen through OTA and hellos).
//! * [`store`]: the conversation store (PostgreSQL or SQLite) and its background writer.
//! * [`uploads`]: clips to MinIO/S3 (or a local directory) by a durable background pool.
//! * [`audio`]: Opus decoding and encoding, Ogg muxing, resampling and voice activity
//!   detection, for the uplink and for synthesized downlink speech.
//! * [`telemetry`]: the tracing subscriber and the Prometheus metrics.
//! * [`config`]: typed settings (defaults < TOML file < environment), validated once.
//! * [`loadtest`]: `xiaozhi-gateway loadtest`, simulated talking and idle devices.
//! * `console`: the operator console in the browser at `/console/` (embedded assets).
//! * [`embeddings`]: search by meaning: the embeddings provider and its background worker.
//! * [`export`]: messages as JSON lines or CSV, a conversation as a `.zip` (API and CLI).
//! * [`import`]: `xiaozhi-gateway import`, moving in from the existing servers (the Python
//!   server's MySQL, the Go server's Redis and PostgreSQL).
//! * [`client`]: a simulated device (tests and the load generator).
//!
//! The wire protocol itself lives in the `firmware-protocol` crate.

// The database, object storage and upload pool are denied only where they must not be used
// (`session`); see clippy.toml.
#![allow(clippy::disallowed_types)]
#![warn(unreachable_pub)]

pub(crate) mod api;
pub mod audio;
pub(crate) mod auth;
pub mod client;
pub mod config;
pub mod console;
pub mod conversation;
pub mod devices;
pub mod embeddings;
pub mod export;
pub mod import;
pub mod limits;
pub mod loadtest;
pub(crate) mod ota;
pub mod pipeline;
pub(crate) mod server;
pub mod session;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod uploads;
pub(crate) mod vision;

pub use api::OPENAPI;

/// Installs the process-wide TLS crypto provider (ring) that the database and object-storage
/// clients share. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
