//! Speech without a network: `espeak-ng` (Debian package) synthesizes, rubato resamples to the
//! downlink rate, libopus encodes 60 ms frames. Used for server-initiated speech with the echo
//! brain, offline demos, and the spoken apology when every provider fails. Without espeak-ng
//! installed it plays a short two-tone chime, so a device always hears something.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;

use crate::audio::ogg::ClipFormat;
use crate::audio::opus::FrameEncoder;
use crate::audio::resample::resample;

pub(crate) use crate::conversation::Speech;

/// The local synthesizer.
#[derive(Debug, Clone)]
pub(crate) struct LocalTts {
    espeak: Option<PathBuf>,
    voice: String,
    rate: u32,
}

/// How long espeak-ng may take for one text.
const ESPEAK_TIMEOUT: Duration = Duration::from_secs(10);

impl LocalTts {
    /// Looks for `espeak-ng` on `PATH`; `rate` is the downlink sample rate.
    pub(crate) fn new(rate: u32, voice: &str) -> Self {
        let espeak = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths).map(|p| p.join("espeak-ng")).find(|p| p.is_file())
        });
        Self { espeak, voice: voice.to_owned(), rate }
    }

    /// Synthesizes `text`; encoding runs off the async threads.
    pub(crate) async fn speak(&self, text: &str) -> Result<Speech, String> {
        let (pcm, rate) = match &self.espeak {
            Some(bin) => espeak(bin, &self.voice, text).await?,
            None => (chime(self.rate), self.rate),
        };
        let target = self.rate;
        tokio::task::spawn_blocking(move || encode(&pcm, rate, target)).await.map_err(|e| e.to_string())?
    }
}

/// Resamples to `target` Hz and encodes 60 ms Opus frames.
fn encode(pcm: &[f32], rate: u32, target: u32) -> Result<Speech, String> {
    let pcm = resample(pcm, rate, target)?;
    let samples: Vec<i16> = pcm.iter().map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16).collect();
    let mut enc = FrameEncoder::new(target, 60).map_err(|e| e.to_string())?;
    let pre_skip = (enc.lookahead() * 48_000 / target) as u16;
    let packets = enc.encode_all(&samples).map_err(|e| e.to_string())?.into_iter().map(Bytes::from).collect();
    Ok(Speech { packets, format: ClipFormat { input_rate: target, pre_skip } })
}

/// Runs espeak-ng with the text on stdin (never as an argument); returns mono samples and
/// their rate. Killed after [`ESPEAK_TIMEOUT`].
async fn espeak(bin: &PathBuf, voice: &str, text: &str) -> Result<(Vec<f32>, u32), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(bin)
        .args(["--stdout", "-v", voice])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run espeak-ng: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).await.map_err(|e| e.to_string())?;
    }
    let out = tokio::time::timeout(ESPEAK_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| "espeak-ng took too long".to_owned())?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("espeak-ng failed ({})", out.status));
    }
    let reader = hound::WavReader::new(std::io::Cursor::new(out.stdout)).map_err(|e| e.to_string())?;
    let rate = reader.spec().sample_rate;
    // espeak-ng streams its WAV with an unknown (maximal) data length: read until the bytes end.
    let samples: Vec<f32> =
        reader.into_samples::<i16>().map_while(Result::ok).map(|s| f32::from(s) / 32768.0).collect();
    if samples.is_empty() {
        return Err("espeak-ng produced no audio".into());
    }
    Ok((samples, rate))
}

/// A soft two-tone chime (~0.5 s).
fn chime(rate: u32) -> Vec<f32> {
    let tone = |freq: f32, ms: u32| {
        let n = (rate * ms / 1000) as usize;
        (0..n).map(move |i| {
            let t = i as f32 / rate as f32;
            let env = (1.0 - i as f32 / n as f32).powi(2);
            0.3 * env * (2.0 * std::f32::consts::PI * freq * t).sin()
        })
    };
    tone(880.0, 220).chain(tone(660.0, 300)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn speaks_or_chimes() {
        let tts = LocalTts::new(24_000, "en");
        let speech = tts.speak("Dinner is ready.").await.unwrap();
        assert!(speech.packets.len() >= 5);
        assert_eq!(speech.format.input_rate, 24_000);
    }
}
