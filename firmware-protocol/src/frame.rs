//! Binary audio framing: every WebSocket binary message carries exactly one Opus packet.
//!
//! * Version 1: the raw Opus packet, no header.
//! * Version 2: a 16-byte header `version u16 | type u16 | reserved u32 | timestamp u32 |
//!   payload_size u32`, then the payload.
//! * Version 3: a 4-byte header `type u8 | reserved u8 | payload_size u16`, then the payload.
//!
//! All integers are big-endian. Devices trust `payload_size` without checking it, so encoding
//! always writes the exact size; decoding refuses a header whose size disagrees with the
//! message length instead of guessing.

use std::fmt;

/// Length of the version 2 header in bytes.
pub const V2_HEADER_LEN: usize = 16;
/// Length of the version 3 header in bytes.
pub const V3_HEADER_LEN: usize = 4;
/// The only frame type devices send and the gateway accepts: Opus audio.
pub const FRAME_TYPE_OPUS: u16 = 0;

/// The binary protocol version negotiated by the `Protocol-Version` header or the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProtocolVersion {
    /// Raw Opus packets (the default when a device says nothing).
    #[default]
    V1,
    /// 16-byte header with a timestamp (used for server-side echo cancellation).
    V2,
    /// 4-byte header.
    V3,
}

impl ProtocolVersion {
    /// Maps the number a device announces; `0` means "not set" and is version 1.
    pub fn from_number(n: u64) -> Result<Self, FrameError> {
        match n {
            0 | 1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            3 => Ok(Self::V3),
            other => Err(FrameError::UnknownVersion(other)),
        }
    }

    /// The number used on the wire and in `Protocol-Version`.
    pub fn number(self) -> u8 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }

    /// Header length in bytes for this version.
    pub fn header_len(self) -> usize {
        match self {
            Self::V1 => 0,
            Self::V2 => V2_HEADER_LEN,
            Self::V3 => V3_HEADER_LEN,
        }
    }

    /// The largest payload this version can describe.
    pub fn max_payload(self) -> usize {
        match self {
            Self::V1 | Self::V2 => u32::MAX as usize,
            Self::V3 => u16::MAX as usize,
        }
    }

    /// Size of an encoded frame carrying `payload_len` bytes.
    pub fn encoded_len(self, payload_len: usize) -> usize {
        self.header_len() + payload_len
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// One decoded binary message: the Opus payload (borrowed from the message) and, for version 2,
/// the timestamp in milliseconds (0 for the other versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFrame<'a> {
    /// Playback timestamp in ms (version 2 only; devices without server AEC send 0).
    pub timestamp: u32,
    /// The Opus packet. May be empty: some clients end a recording with a 0-byte message.
    pub payload: &'a [u8],
}

/// Why a binary message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("binary protocol version {0} is not supported (expected 1, 2 or 3)")]
    UnknownVersion(u64),
    #[error("binary message of {len} bytes is shorter than the {header}-byte v{version} header")]
    Truncated { version: u8, len: usize, header: usize },
    #[error("v{version} header says the payload is {declared} bytes but the message carries {actual}")]
    SizeMismatch { version: u8, declared: usize, actual: usize },
    #[error("v{version} frame type {frame_type} is not audio (only type 0, Opus, is accepted)")]
    NotAudio { version: u8, frame_type: u16 },
    #[error("payload of {len} bytes does not fit a v{version} frame (at most {max})")]
    PayloadTooLarge { version: u8, len: usize, max: usize },
}

/// Decodes one binary message in the given version.
pub fn decode(version: ProtocolVersion, data: &[u8]) -> Result<AudioFrame<'_>, FrameError> {
    let header = version.header_len();
    if data.len() < header {
        return Err(FrameError::Truncated { version: version.number(), len: data.len(), header });
    }
    let (timestamp, frame_type, declared) = match version {
        ProtocolVersion::V1 => {
            return Ok(AudioFrame { timestamp: 0, payload: data });
        }
        ProtocolVersion::V2 => {
            (be_u32(&data[8..12]), u16::from_be_bytes([data[2], data[3]]), be_u32(&data[12..16]) as usize)
        }
        ProtocolVersion::V3 => (0, u16::from(data[0]), usize::from(u16::from_be_bytes([data[2], data[3]]))),
    };
    if frame_type != FRAME_TYPE_OPUS {
        return Err(FrameError::NotAudio { version: version.number(), frame_type });
    }
    let payload = &data[header..];
    if declared != payload.len() {
        return Err(FrameError::SizeMismatch { version: version.number(), declared, actual: payload.len() });
    }
    Ok(AudioFrame { timestamp, payload })
}

/// Appends one encoded frame to `out` (which is not cleared).
pub fn encode_into(
    version: ProtocolVersion,
    timestamp: u32,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if payload.len() > version.max_payload() {
        return Err(FrameError::PayloadTooLarge {
            version: version.number(),
            len: payload.len(),
            max: version.max_payload(),
        });
    }
    out.reserve(version.encoded_len(payload.len()));
    match version {
        ProtocolVersion::V1 => {}
        ProtocolVersion::V2 => {
            out.extend_from_slice(&2u16.to_be_bytes());
            out.extend_from_slice(&FRAME_TYPE_OPUS.to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&timestamp.to_be_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        }
        ProtocolVersion::V3 => {
            out.push(FRAME_TYPE_OPUS as u8);
            out.push(0);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    Ok(())
}

/// Encodes one frame into a new buffer.
pub fn encode(version: ProtocolVersion, timestamp: u32, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(version.encoded_len(payload.len()));
    encode_into(version, timestamp, payload, &mut out)?;
    Ok(out)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [ProtocolVersion; 3] = [ProtocolVersion::V1, ProtocolVersion::V2, ProtocolVersion::V3];

    #[test]
    fn v2_layout_is_big_endian_and_exact() {
        let bytes = encode(ProtocolVersion::V2, 0x0102_0304, &[0xAA, 0xBB]).unwrap();
        assert_eq!(bytes, [0, 2, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 2, 0xAA, 0xBB]);
    }

    #[test]
    fn v3_layout_is_big_endian_and_exact() {
        let payload = vec![7u8; 0x0123];
        let bytes = encode(ProtocolVersion::V3, 99, &payload).unwrap();
        assert_eq!(&bytes[..4], &[0, 0, 0x01, 0x23]);
        assert_eq!(bytes.len(), 4 + 0x123);
    }

    #[test]
    fn lying_headers_are_refused() {
        let mut v2 = encode(ProtocolVersion::V2, 0, &[1, 2, 3]).unwrap();
        v2[15] = 200;
        assert_eq!(
            decode(ProtocolVersion::V2, &v2),
            Err(FrameError::SizeMismatch { version: 2, declared: 200, actual: 3 })
        );
        let mut v3 = encode(ProtocolVersion::V3, 0, &[1, 2, 3]).unwrap();
        v3[3] = 1;
        assert_eq!(
            decode(ProtocolVersion::V3, &v3),
            Err(FrameError::SizeMismatch { version: 3, declared: 1, actual: 3 })
        );
        assert_eq!(
            decode(ProtocolVersion::V3, &[0, 0]),
            Err(FrameError::Truncated { version: 3, len: 2, header: 4 })
        );
        let mut json_type = encode(ProtocolVersion::V2, 0, &[1]).unwrap();
        json_type[3] = 1;
        assert_eq!(
            decode(ProtocolVersion::V2, &json_type),
            Err(FrameError::NotAudio { version: 2, frame_type: 1 })
        );
    }

    #[test]
    fn empty_payloads_round_trip() {
        for v in ALL {
            let bytes = encode(v, 0, &[]).unwrap();
            assert_eq!(decode(v, &bytes).unwrap().payload, &[] as &[u8]);
        }
    }

    #[test]
    fn v3_refuses_payloads_it_cannot_describe() {
        let big = vec![0u8; 70_000];
        assert!(matches!(encode(ProtocolVersion::V3, 0, &big), Err(FrameError::PayloadTooLarge { .. })));
    }

    #[test]
    fn version_numbers() {
        assert_eq!(ProtocolVersion::from_number(0), Ok(ProtocolVersion::V1));
        assert_eq!(ProtocolVersion::from_number(3).unwrap().number(), 3);
        assert_eq!(ProtocolVersion::from_number(4), Err(FrameError::UnknownVersion(4)));
    }

    proptest! {
        #[test]
        fn round_trip(v in 0usize..3, ts in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let v = ALL[v];
            let bytes = encode(v, ts, &payload).unwrap();
            prop_assert_eq!(bytes.len(), v.encoded_len(payload.len()));
            let frame = decode(v, &bytes).unwrap();
            prop_assert_eq!(frame.payload, &payload[..]);
            prop_assert_eq!(frame.timestamp, if v == ProtocolVersion::V2 { ts } else { 0 });
        }

        #[test]
        fn decode_never_panics(v in 0usize..3, data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(ALL[v], &data);
        }
    }
}
