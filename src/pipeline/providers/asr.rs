//! Speech recognition: `POST {base}/audio/transcriptions` (OpenAI's Whisper API shape) with the
//! utterance as a 16 kHz mono 16-bit WAV file.

use reqwest::multipart::{Form, Part};
use serde::Deserialize;

use super::{ProviderConfig, ProviderError, authorize, http_client, send};
use crate::audio::UPLINK_RATE;

/// An OpenAI-compatible transcription endpoint.
#[derive(Debug, Clone)]
pub struct Asr {
    cfg: ProviderConfig,
    client: reqwest::Client,
    url: String,
    language: Option<String>,
}

#[derive(Deserialize)]
struct Transcription {
    text: String,
}

impl Asr {
    pub fn new(cfg: ProviderConfig) -> Result<Self, ProviderError> {
        let client = http_client(&cfg)?;
        let url = cfg.url("/audio/transcriptions");
        Ok(Self { cfg, client, url, language: None })
    }

    /// Sends an ISO-639-1 `language` hint (e.g. `zh`) with every request.
    pub fn with_language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// Transcribes one utterance (16 kHz mono samples). Returns the text with surrounding
    /// whitespace trimmed; it may be empty when nothing was recognised. The configured timeout
    /// bounds the whole request.
    pub async fn transcribe(&self, pcm_16k_mono: &[i16]) -> Result<String, ProviderError> {
        let wav = wav_bytes(pcm_16k_mono, UPLINK_RATE)?;
        let file = Part::bytes(wav)
            .file_name("audio.wav")
            .mime_str("audio/wav")
            .map_err(|e| ProviderError::Invalid(e.to_string()))?;
        let mut form = Form::new()
            .part("file", file)
            .text("model", self.cfg.model.clone())
            .text("response_format", "json");
        if let Some(lang) = &self.language {
            form = form.text("language", lang.clone());
        }
        let req = authorize(self.client.post(&self.url), &self.cfg).multipart(form).timeout(self.cfg.timeout);
        let resp = send(req, self.cfg.timeout).await?;
        let body = resp.bytes().await.map_err(ProviderError::from_body)?;
        let parsed: Transcription = serde_json::from_slice(&body).map_err(|e| {
            let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            ProviderError::Malformed(format!("transcription is not {{\"text\": ...}} JSON ({e}): {head}"))
        })?;
        Ok(parsed.text.trim().to_owned())
    }
}

/// A mono 16-bit WAV file of `pcm` at `rate` Hz.
pub fn wav_bytes(pcm: &[i16], rate: u32) -> Result<Vec<u8>, ProviderError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + pcm.len() * 2));
    let mut w = hound::WavWriter::new(&mut out, spec).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    let mut samples = w.get_i16_writer(pcm.len() as u32);
    for &s in pcm {
        samples.write_sample(s);
    }
    samples.flush().map_err(|e| ProviderError::Invalid(e.to_string()))?;
    w.finalize().map_err(|e| ProviderError::Invalid(e.to_string()))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wav_round_trips() {
        let pcm: Vec<i16> = (0..1600).map(|i| (i * 7) as i16).collect();
        let wav = super::wav_bytes(&pcm, 16_000).unwrap();
        assert_eq!(wav.len(), 44 + 3200);
        let mut r = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
        assert_eq!(r.spec().sample_rate, 16_000);
        assert_eq!(r.spec().channels, 1);
        let back: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(back, pcm);
    }
}
