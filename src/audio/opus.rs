//! Opus decoding through libopus (the `opus2` binding, linked to the system library).

use super::UPLINK_RATE;

/// The longest packet Opus allows (120 ms) at 16 kHz.
pub const MAX_PACKET_SAMPLES: usize = (UPLINK_RATE as usize) * 120 / 1000;

/// A mono 16 kHz decoder with its own output buffer, so decoding allocates nothing.
pub struct UplinkDecoder {
    decoder: opus2::Decoder,
    pcm: Box<[i16; MAX_PACKET_SAMPLES]>,
}

/// A packet libopus refused.
#[derive(Debug, thiserror::Error)]
#[error("undecodable Opus packet: {0}")]
pub struct DecodeError(String);

impl UplinkDecoder {
    pub fn new() -> Result<Self, DecodeError> {
        let decoder = opus2::Decoder::new(UPLINK_RATE, opus2::Channels::Mono)
            .map_err(|e| DecodeError(e.to_string()))?;
        Ok(Self { decoder, pcm: Box::new([0; MAX_PACKET_SAMPLES]) })
    }

    /// Decodes one packet and returns its samples (valid until the next call).
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16], DecodeError> {
        let n =
            self.decoder.decode(packet, &mut self.pcm[..], false).map_err(|e| DecodeError(e.to_string()))?;
        Ok(&self.pcm[..n])
    }

    /// Forgets inter-packet state (between turns).
    pub fn reset(&mut self) {
        let _ = self.decoder.reset_state();
    }
}

/// A mono Opus encoder for 60 ms frames (the test client, the load generator and TTS).
pub struct FrameEncoder {
    encoder: opus2::Encoder,
    out: Vec<u8>,
    samples_per_frame: usize,
}

impl FrameEncoder {
    pub fn new(sample_rate: u32, frame_ms: u32) -> Result<Self, DecodeError> {
        let mut encoder = opus2::Encoder::new(sample_rate, opus2::Channels::Mono, opus2::Application::Voip)
            .map_err(|e| DecodeError(e.to_string()))?;
        let _ = encoder.set_complexity(5);
        Ok(Self { encoder, out: vec![0; 4000], samples_per_frame: (sample_rate * frame_ms / 1000) as usize })
    }

    /// The encoder's lookahead in samples at its rate (the Ogg pre-skip source).
    pub fn lookahead(&mut self) -> u32 {
        self.encoder.get_lookahead().map_or(0, |l| l.max(0) as u32)
    }

    pub fn samples_per_frame(&self) -> usize {
        self.samples_per_frame
    }

    /// Encodes exactly one frame (shorter input is padded with silence).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, DecodeError> {
        let mut frame;
        let input = if pcm.len() == self.samples_per_frame {
            pcm
        } else {
            frame = vec![0i16; self.samples_per_frame];
            let n = pcm.len().min(self.samples_per_frame);
            frame[..n].copy_from_slice(&pcm[..n]);
            &frame[..]
        };
        let n = self.encoder.encode(input, &mut self.out).map_err(|e| DecodeError(e.to_string()))?;
        Ok(self.out[..n].to_vec())
    }

    /// Encodes a whole signal into 60 ms packets.
    pub fn encode_all(&mut self, pcm: &[i16]) -> Result<Vec<Vec<u8>>, DecodeError> {
        pcm.chunks(self.samples_per_frame).map(|c| self.encode(c)).collect()
    }
}
