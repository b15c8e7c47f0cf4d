//! Any UTF-8 text as a client text frame: `ClientMessage::parse` never panics, and whatever it
//! accepts survives `to_json` → `parse` unchanged.
//!
//! (serde_json's `float_roundtrip` feature is on, so floats in free-form parts round-trip exactly.)
#![no_main]

use firmware_protocol::ClientMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(msg) = ClientMessage::parse(text) else { return };
    let json = msg.to_json();
    let again = ClientMessage::parse(&json)
        .unwrap_or_else(|e| panic!("re-parsing our own JSON failed: {e}\ninput: {text}\njson:  {json}"));
    if again == msg {
        return;
    }
    panic!(
        "round trip changed the message\ninput: {text}\njson:  {json}\nbefore: {msg:?}\nafter:  {again:?}"
    );
});
