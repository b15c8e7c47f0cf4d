//! Audio: Opus decoding to 16 kHz PCM and voice activity detection for the uplink; Opus
//! encoding and resampling for synthesized downlink speech; Ogg-Opus muxing for clips.
//!
//! Everything here is synchronous and cheap per 60 ms frame (decode ~50 µs, VAD ~15 µs per
//! 16 ms), so sessions call it inline; nothing here may block or allocate per frame.

pub mod ogg;
pub mod opus;
pub(crate) mod resample;
pub mod vad;

/// The rate everything on the uplink is processed at.
pub const UPLINK_RATE: u32 = 16_000;
