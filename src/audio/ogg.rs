//! Ogg-Opus muxing (RFC 7845) of packets exactly as they went over the wire: no transcoding.
//! OpusHead alone on the first page, OpusTags on the second, then the audio with granule
//! positions in 48 kHz samples taken from each packet's TOC byte (RFC 6716 §3.1), so the
//! file plays in any Ogg-Opus player and reports the clip's real length.

use bytes::Bytes;
use firmware_protocol::opus::packet_samples_48k;
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// libopus's usual encoder lookahead (6.5 ms) in 48 kHz samples: the pre-skip for packets
/// whose encoder we did not run.
pub const DEFAULT_PRE_SKIP: u16 = 312;

/// Where a packet stream came from, for the OpusHead.
#[derive(Debug, Clone, Copy)]
pub struct ClipFormat {
    /// The rate the audio was encoded from (informational for players).
    pub input_rate: u32,
    /// Samples (48 kHz) the decoder drops at the start.
    pub pre_skip: u16,
}

/// A muxed clip and what it holds.
#[derive(Debug, Clone)]
pub struct OggClip {
    pub bytes: Bytes,
    /// Playable length (granule total minus pre-skip), in milliseconds.
    pub duration_ms: u32,
    pub packets: usize,
}

/// Why packets could not be muxed.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("no packets to mux")]
    Empty,
    #[error("packet {index}: {source}")]
    BadPacket { index: usize, source: firmware_protocol::opus::TocError },
    #[error("ogg: {0}")]
    Io(#[from] std::io::Error),
}

/// Muxes mono Opus packets into an Ogg-Opus file. Unreadable packets are refused rather than
/// written into a file that players would choke on.
pub fn mux(packets: &[Bytes], format: ClipFormat, serial: u32) -> Result<OggClip, MuxError> {
    if packets.is_empty() {
        return Err(MuxError::Empty);
    }
    let total: usize = packets.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total + total / 8 + 256);
    let mut w = PacketWriter::new(&mut out);
    w.write_packet(opus_head(format).to_vec(), serial, PacketWriteEndInfo::EndPage, 0)?;
    w.write_packet(opus_tags(), serial, PacketWriteEndInfo::EndPage, 0)?;
    let mut granule: u64 = 0;
    let mut since_page: u64 = 0;
    for (index, p) in packets.iter().enumerate() {
        let samples = packet_samples_48k(p).map_err(|source| MuxError::BadPacket { index, source })?;
        granule += u64::from(samples);
        since_page += u64::from(samples);
        let end = if index + 1 == packets.len() {
            PacketWriteEndInfo::EndStream
        } else if since_page >= 48_000 {
            // About one page per second keeps pages small enough for streaming players.
            since_page = 0;
            PacketWriteEndInfo::EndPage
        } else {
            PacketWriteEndInfo::NormalPacket
        };
        w.write_packet(p.to_vec(), serial, end, granule)?;
    }
    drop(w);
    let playable = granule.saturating_sub(u64::from(format.pre_skip));
    Ok(OggClip { bytes: Bytes::from(out), duration_ms: (playable / 48) as u32, packets: packets.len() })
}

/// The 19-byte identification header: version 1, mono, channel mapping family 0.
fn opus_head(f: ClipFormat) -> [u8; 19] {
    let mut h = [0u8; 19];
    h[..8].copy_from_slice(b"OpusHead");
    h[8] = 1;
    h[9] = 1;
    h[10..12].copy_from_slice(&f.pre_skip.to_le_bytes());
    h[12..16].copy_from_slice(&f.input_rate.to_le_bytes());
    // Output gain 0 and mapping family 0 are already zero.
    h
}

fn opus_tags() -> Vec<u8> {
    let vendor = concat!("xiaozhi-gateway ", env!("CARGO_PKG_VERSION"));
    let mut t = Vec::with_capacity(8 + 4 + vendor.len() + 4);
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor.as_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_layout() {
        let h = opus_head(ClipFormat { input_rate: 16_000, pre_skip: 312 });
        assert_eq!(&h[..8], b"OpusHead");
        assert_eq!(h[8], 1);
        assert_eq!(u16::from_le_bytes([h[10], h[11]]), 312);
        assert_eq!(u32::from_le_bytes([h[12], h[13], h[14], h[15]]), 16_000);
    }

    #[test]
    fn durations_and_errors() {
        let packets: Vec<Bytes> = (0..50).map(|_| Bytes::from_static(&[11 << 3, 0xAA, 0xBB])).collect();
        let clip = mux(&packets, ClipFormat { input_rate: 16_000, pre_skip: 312 }, 7).unwrap();
        assert_eq!(clip.duration_ms, (50 * 2880 - 312) / 48);
        assert_eq!(&clip.bytes[..4], b"OggS");
        assert!(matches!(mux(&[], ClipFormat { input_rate: 16_000, pre_skip: 0 }, 1), Err(MuxError::Empty)));
        let bad = [Bytes::from_static(&[11 << 3]), Bytes::new()];
        assert!(matches!(
            mux(&bad, ClipFormat { input_rate: 16_000, pre_skip: 0 }, 1),
            Err(MuxError::BadPacket { index: 1, .. })
        ));
    }
}
