//! Any bytes, decoded as each binary protocol version: decoding never panics, and a frame that
//! decodes re-encodes (same version, same timestamp) to exactly the bytes it came from.
#![no_main]

use firmware_protocol::frame::{self, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V1, ProtocolVersion::V2, ProtocolVersion::V3] {
        let Ok(decoded) = frame::decode(version, data) else { continue };
        assert!(decoded.payload.len() <= version.max_payload());
        if version != ProtocolVersion::V2 {
            assert_eq!(decoded.timestamp, 0, "only v2 carries a timestamp");
        }
        let encoded = frame::encode(version, decoded.timestamp, decoded.payload)
            .expect("a payload that was decoded fits its version");
        assert_eq!(encoded.len(), version.encoded_len(decoded.payload.len()));
        assert_eq!(encoded, data, "v{version}: re-encoding a decoded frame changed its bytes");
    }
});
