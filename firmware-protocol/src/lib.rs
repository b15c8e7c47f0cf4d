//! The xiaozhi device protocol as a pure library: no sockets, no runtime.
//!
//! Module map:
//! * [`message`]: the JSON text messages in both directions (hello, listen, abort, stt, llm,
//!   tts, mcp, system, alert, legacy iot), tagged by `"type"`. Parsing is strict about what
//!   the gateway acts on (the type, the listen state and mode) and tolerant of what real
//!   clients vary (unknown fields, a missing `session_id`, a hello without `audio_params`).
//! * [`frame`]: binary audio framing for protocol versions 1 (raw Opus), 2 (16-byte header)
//!   and 3 (4-byte header), big-endian, with exact sizes.
//! * [`mcp`]: the JSON-RPC 2.0 shapes the device's MCP server speaks (integer ids, errors
//!   that may carry only a `message`).
//! * [`ota`]: the OTA request bodies devices and clients send and the response the gateway
//!   returns (never an `mqtt` object).
//! * [`opus`]: what an Opus packet's TOC byte says about its duration (RFC 6716 §3.1).
//!
//! The whole protocol in the project's own words is in `PROTOCOL.md` beside this crate.

pub mod frame;
pub mod mcp;
pub mod message;
pub mod opus;
pub mod ota;

pub use frame::{AudioFrame, FrameError, ProtocolVersion};
pub use message::{
    AbortMessage, AudioParams, ClientHello, ClientMessage, Features, ListenMessage, ListenMode, ListenState,
    MessageError, ServerHello, ServerMessage, TtsState,
};
