//! What an Opus packet's table-of-contents byte says about it (RFC 6716 §3.1), without
//! decoding: the gateway uses it to pace downlink audio and to time Ogg granule positions.

/// Why a packet's duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TocError {
    #[error("empty Opus packet")]
    Empty,
    #[error("code-3 Opus packet has no frame-count byte")]
    MissingFrameCount,
    #[error("Opus packet declares {0} frames")]
    BadFrameCount(u8),
    #[error("Opus packet lasts {0} samples at 48 kHz, more than the 120 ms the format allows")]
    TooLong(u32),
}

/// Samples per frame at 48 kHz for each of the 32 TOC configurations.
const FRAME_SAMPLES_48K: [u32; 32] = [
    480, 960, 1920, 2880, // SILK narrowband 10/20/40/60 ms
    480, 960, 1920, 2880, // SILK mediumband
    480, 960, 1920, 2880, // SILK wideband
    480, 960, // Hybrid super-wideband 10/20 ms
    480, 960, // Hybrid fullband
    120, 240, 480, 960, // CELT narrowband 2.5/5/10/20 ms
    120, 240, 480, 960, // CELT wideband
    120, 240, 480, 960, // CELT super-wideband
    120, 240, 480, 960, // CELT fullband
];

/// The packet's duration in samples at 48 kHz (the unit of Ogg-Opus granule positions).
pub fn packet_samples_48k(packet: &[u8]) -> Result<u32, TocError> {
    let toc = *packet.first().ok_or(TocError::Empty)?;
    let per_frame = FRAME_SAMPLES_48K[usize::from(toc >> 3)];
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => {
            let count = packet.get(1).ok_or(TocError::MissingFrameCount)? & 0x3F;
            if count == 0 {
                return Err(TocError::BadFrameCount(count));
            }
            u32::from(count)
        }
    };
    let total = per_frame * frames;
    if total > 5760 {
        return Err(TocError::TooLong(total));
    }
    Ok(total)
}

/// The packet's duration in microseconds.
pub fn packet_duration_us(packet: &[u8]) -> Result<u32, TocError> {
    // 48 kHz samples → µs: × 1_000_000 / 48_000 = × 125 / 6.
    packet_samples_48k(packet).map(|s| s * 125 / 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_from_toc() {
        // config 11 (SILK WB 60 ms), code 0: what the firmware sends.
        assert_eq!(packet_samples_48k(&[11 << 3, 0]), Ok(2880));
        assert_eq!(packet_duration_us(&[11 << 3]), Ok(60_000));
        // config 31 (CELT FB 20 ms), code 3 with three frames: the browser page's packets.
        assert_eq!(packet_duration_us(&[(31 << 3) | 3, 3]), Ok(60_000));
        // config 16 (CELT 2.5 ms), code 1: two frames.
        assert_eq!(packet_samples_48k(&[(16 << 3) | 1]), Ok(240));
        assert_eq!(packet_samples_48k(&[]), Err(TocError::Empty));
        assert_eq!(packet_samples_48k(&[3]), Err(TocError::MissingFrameCount));
        assert_eq!(packet_samples_48k(&[(3 << 3) | 3, 3]), Err(TocError::TooLong(8640)));
        assert_eq!(packet_samples_48k(&[3, 0]), Err(TocError::BadFrameCount(0)));
    }
}
