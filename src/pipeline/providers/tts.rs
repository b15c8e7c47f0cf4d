//! Speech synthesis: `POST {base}/audio/speech` (OpenAI's shape), asking for raw PCM (16-bit
//! little-endian mono at 24 kHz, OpenAI's convention) or WAV; the audio is resampled to the
//! downlink rate and encoded to 60 ms Opus frames off the async threads.
//!
//! Whatever was asked for, a body that starts with a RIFF/WAVE header is read as WAV (any rate,
//! 8 to 32 bits, mono or downmixed), anything else as 24 kHz PCM. A body that is plainly not
//! PCM (text, MP3, Ogg, FLAC, an odd number of bytes) is [`ProviderError::Malformed`].

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{ProviderConfig, ProviderError, authorize, http_client, join_error, read_body, send};
use crate::audio::ogg::{ClipFormat, DEFAULT_PRE_SKIP};
use crate::audio::opus::FrameEncoder;
use crate::audio::resample::resample;
use crate::conversation::Speech;

/// The rate of `response_format: "pcm"` audio.
pub const PCM_RATE: u32 = 24_000;

/// The largest audio body accepted (about 20 minutes of 24 kHz PCM).
const MAX_AUDIO_BYTES: usize = 64 * 1024 * 1024;

/// The Opus frame length of the downlink.
const FRAME_MS: u32 = 60;

/// What to ask the provider for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtsFormat {
    /// Raw 16-bit little-endian mono at 24 kHz (`response_format: "pcm"`).
    #[default]
    Pcm,
    /// A WAV file (`response_format: "wav"`), for providers that cannot send raw PCM.
    Wav,
}

impl TtsFormat {
    fn wire_name(self) -> &'static str {
        match self {
            Self::Pcm => "pcm",
            Self::Wav => "wav",
        }
    }
}

/// An OpenAI-compatible speech endpoint.
#[derive(Debug, Clone)]
pub struct Tts {
    cfg: ProviderConfig,
    client: reqwest::Client,
    url: String,
    format: TtsFormat,
    params: Map<String, Value>,
}

impl Tts {
    pub fn new(cfg: ProviderConfig) -> Result<Self, ProviderError> {
        let client = http_client(&cfg)?;
        let url = cfg.url("/audio/speech");
        Ok(Self { cfg, client, url, format: TtsFormat::Pcm, params: Map::new() })
    }

    /// Which `response_format` to request (PCM by default).
    pub fn with_format(mut self, format: TtsFormat) -> Self {
        self.format = format;
        self
    }

    /// Adds a request parameter sent with every request (`speed`, `instructions`, ...).
    /// `model`, `input`, `voice` and `response_format` are set per call and win.
    pub fn with_param(mut self, key: impl Into<String>, value: Value) -> Self {
        self.params.insert(key.into(), value);
        self
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// Synthesizes `text` with `voice` as 60 ms Opus packets at `sample_rate` (an Opus rate:
    /// 8, 12, 16, 24 or 48 kHz). The timeout bounds the wait for the response and every gap
    /// in its body. Blank text gives no packets without a request.
    pub async fn synthesize(
        &self,
        text: &str,
        voice: &str,
        sample_rate: u32,
    ) -> Result<Speech, ProviderError> {
        if !matches!(sample_rate, 8_000 | 12_000 | 16_000 | 24_000 | 48_000) {
            return Err(ProviderError::Invalid(format!("{sample_rate} Hz is not an Opus sample rate")));
        }
        if text.trim().is_empty() {
            let format = ClipFormat { input_rate: sample_rate, pre_skip: DEFAULT_PRE_SKIP };
            return Ok(Speech { packets: Vec::new(), format });
        }
        let mut body = self.params.clone();
        body.insert("model".into(), Value::String(self.cfg.model.clone()));
        body.insert("input".into(), Value::String(text.to_owned()));
        body.insert("voice".into(), Value::String(voice.to_owned()));
        body.insert("response_format".into(), Value::String(self.format.wire_name().into()));
        let req = authorize(self.client.post(&self.url), &self.cfg).json(&body);
        let resp = send(req, self.cfg.timeout).await?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let audio = read_body(resp, self.cfg.timeout, MAX_AUDIO_BYTES).await?;
        tokio::task::spawn_blocking(move || {
            let (pcm, rate) = decode_audio(&audio, &content_type)?;
            encode_speech(&pcm, rate, sample_rate)
        })
        .await
        .map_err(join_error)?
    }
}

/// Reads a speech body into mono samples in [-1, 1] and their rate.
pub fn decode_audio(body: &[u8], content_type: &str) -> Result<(Vec<f32>, u32), ProviderError> {
    if body.is_empty() {
        return Err(ProviderError::Malformed("no audio in the response".into()));
    }
    if body.len() >= 12 && &body[..4] == b"RIFF" && &body[8..12] == b"WAVE" {
        return decode_wav(body);
    }
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let compressed =
        ["audio/mpeg", "audio/mp3", "audio/ogg", "audio/opus", "audio/aac", "audio/flac", "audio/webm"];
    if mime.starts_with("text/")
        || mime.contains("json")
        || mime.contains("xml")
        || compressed.contains(&mime)
    {
        return Err(ProviderError::Malformed(format!("expected PCM or WAV audio, got {mime}")));
    }
    for (magic, what) in [
        (&b"ID3"[..], "MP3"),
        (b"OggS", "Ogg"),
        (b"fLaC", "FLAC"),
        (b"RIFF", "RIFF but not WAVE"),
        (b"\x1aE\xdf\xa3", "WebM"),
    ] {
        if body.starts_with(magic) {
            return Err(ProviderError::Malformed(format!("expected PCM or WAV audio, got {what}")));
        }
    }
    let probe = &body[..body.len().min(64)];
    if probe.len() >= 8 && probe.iter().all(|b| matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e)) {
        let head = String::from_utf8_lossy(probe);
        return Err(ProviderError::Malformed(format!("expected PCM audio, got text: {head}")));
    }
    if !body.len().is_multiple_of(2) {
        return Err(ProviderError::Malformed(format!("{} bytes is not 16-bit PCM", body.len())));
    }
    let pcm = body.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0).collect();
    Ok((pcm, PCM_RATE))
}

fn decode_wav(body: &[u8]) -> Result<(Vec<f32>, u32), ProviderError> {
    let bad = |e: hound::Error| ProviderError::Malformed(format!("unreadable WAV: {e}"));
    let reader = hound::WavReader::new(std::io::Cursor::new(body)).map_err(bad)?;
    let spec = reader.spec();
    if spec.sample_rate == 0 || spec.channels == 0 {
        return Err(ProviderError::Malformed("WAV without a sample rate or channels".into()));
    }
    // Streamed WAVs carry a placeholder data length: read samples until the bytes end.
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader.into_samples::<f32>().map_while(Result::ok).collect(),
        (hound::SampleFormat::Int, bits @ 8..=16) => {
            let scale = (1u32 << (bits - 1)) as f32;
            reader.into_samples::<i16>().map_while(Result::ok).map(|s| f32::from(s) / scale).collect()
        }
        (hound::SampleFormat::Int, bits @ 17..=32) => {
            let scale = (1u64 << (bits - 1)) as f32;
            reader.into_samples::<i32>().map_while(Result::ok).map(|s| s as f32 / scale).collect()
        }
        (format, bits) => {
            return Err(ProviderError::Malformed(format!("unsupported WAV samples: {bits}-bit {format:?}")));
        }
    };
    let channels = usize::from(spec.channels);
    let mono: Vec<f32> = if channels == 1 {
        interleaved
    } else {
        interleaved.chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32).collect()
    };
    if mono.is_empty() {
        return Err(ProviderError::Malformed("WAV without samples".into()));
    }
    Ok((mono, spec.sample_rate))
}

/// Resamples to `target` Hz and encodes 60 ms Opus frames (blocking: call off the runtime).
pub fn encode_speech(pcm: &[f32], rate: u32, target: u32) -> Result<Speech, ProviderError> {
    let pcm = resample(pcm, rate, target).map_err(|e| ProviderError::Invalid(format!("resampling: {e}")))?;
    let samples: Vec<i16> = pcm.iter().map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16).collect();
    let mut enc = FrameEncoder::new(target, FRAME_MS).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    let pre_skip = (enc.lookahead() * 48_000 / target) as u16;
    let packets = enc
        .encode_all(&samples)
        .map_err(|e| ProviderError::Invalid(e.to_string()))?
        .into_iter()
        .map(Bytes::from)
        .collect();
    Ok(Speech { packets, format: ClipFormat { input_rate: target, pre_skip } })
}

/// How long `speech` plays (60 ms per packet).
pub fn speech_duration(speech: &Speech) -> Duration {
    Duration::from_millis(u64::from(FRAME_MS) * speech.packets.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn raw_pcm_is_24k() {
        let (pcm, rate) = decode_audio(&pcm_bytes(&[0, 16384, -16384, 0]), "audio/pcm").unwrap();
        assert_eq!(rate, 24_000);
        assert_eq!(pcm, vec![0.0, 0.5, -0.5, 0.0]);
    }

    #[test]
    fn stereo_wav_is_downmixed() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22_050,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for _ in 0..100 {
            w.write_sample(16384i16).unwrap();
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        let (pcm, rate) = decode_audio(&out.into_inner(), "audio/wav").unwrap();
        assert_eq!(rate, 22_050);
        assert_eq!(pcm.len(), 100);
        assert!(pcm.iter().all(|s| (s - 0.25).abs() < 1e-6));
    }

    #[test]
    fn not_pcm_is_refused() {
        for (body, ct) in [
            (&b"<html><body>Bad gateway</body></html>"[..], ""),
            (b"ID3\x04\x00\x00\x00\x00\x00\x00", "application/octet-stream"),
            (b"\x01\x02\x03", "audio/pcm"),
            (b"\x01\x02\x03\x04", "audio/mpeg"),
            (b"", "audio/pcm"),
            (b"{\"error\": {\"message\": \"no\"}}", "application/octet-stream"),
        ] {
            assert!(matches!(decode_audio(body, ct), Err(ProviderError::Malformed(_))), "{body:?}");
        }
    }
}
