//! Any bytes that are a JSON value, as the `payload` of a device `mcp` message:
//! `mcp::Incoming::parse` never panics.
#![no_main]

use firmware_protocol::mcp::Incoming;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = Incoming::parse(&value);
});
