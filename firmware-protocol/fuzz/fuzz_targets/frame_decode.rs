//! Any bytes, decoded as each binary protocol version: decoding never panics, and a frame that
//! decodes re-encodes (same version, same timestamp) to the bytes it came from, except for the
//! fields devices ignore and the gateway therefore accepts with any value (the v2 `version`
//! and `reserved` fields, the v3 `reserved` byte), which come back canonical.
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
        assert_eq!(encoded.len(), data.len());
        let mut expected = data.to_vec();
        match version {
            ProtocolVersion::V1 => {}
            ProtocolVersion::V2 => expected[..8].copy_from_slice(&[0, 2, 0, 0, 0, 0, 0, 0]),
            ProtocolVersion::V3 => expected[1] = 0,
        }
        assert_eq!(encoded, expected, "v{version}: re-encoding a decoded frame changed its bytes");
    }
});
