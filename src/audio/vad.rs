//! Voice activity detection on 16 kHz PCM with `earshot` (pure Rust, 256-sample frames) and
//! the end-of-utterance rule built on it: speech starts after a short run of voiced audio and
//! ends after a configured span of silence, both measured in audio time so the outcome does
//! not depend on network timing.

use std::time::Duration;

/// earshot works on exactly 256 samples (16 ms at 16 kHz).
const VAD_FRAME: usize = 256;
/// Voiced audio needed before we call it speech (ignores clicks and coughs).
const MIN_SPEECH: Duration = Duration::from_millis(120);

/// Duration of one detector frame.
const FRAME_DURATION: Duration = Duration::from_millis(16);
/// A frame whose RMS is below this (about -56 dBFS, under any microphone's speech level) is
/// silence without asking the model: most of what a device sends between sentences costs
/// one pass over the samples instead of an FFT and a network evaluation.
const SILENCE_RMS: i64 = 50;
/// After this many skipped frames the model's context (3 frames) holds nothing but silence:
/// it is reset once, as if it had heard them.
const SILENCE_RESET_FRAMES: u32 = 3;

/// What the detector made of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub voiced: bool,
    /// Unvoiced frames at the end of the packet.
    pub trailing_silence: Duration,
}

/// Per-packet verdict of the detector.
pub struct VoiceDetector {
    detector: Box<earshot::Detector>,
    pending: [i16; VAD_FRAME],
    pending_len: usize,
    threshold: f32,
    /// Consecutive frames skipped as silence.
    quiet_run: u32,
}

impl VoiceDetector {
    pub fn new(threshold: f32) -> Self {
        Self {
            detector: earshot::Detector::default_boxed(),
            pending: [0; VAD_FRAME],
            pending_len: 0,
            threshold,
            quiet_run: 0,
        }
    }

    /// Feeds one packet's samples; returns whether the packet counts as voiced (at least 40% of
    /// the 16 ms frames completed by it scored above the threshold).
    pub fn is_voiced(&mut self, pcm: &[i16]) -> bool {
        self.analyze(pcm).voiced
    }

    /// Feeds one packet's samples and says whether it is voiced and how much silence ends it
    /// (so that the end of speech is timed to the 16 ms frame, not to the packet).
    pub fn analyze(&mut self, mut pcm: &[i16]) -> Verdict {
        let (mut voiced, mut total, mut trailing) = (0u32, 0u32, 0u32);
        while !pcm.is_empty() {
            let take = (VAD_FRAME - self.pending_len).min(pcm.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&pcm[..take]);
            self.pending_len += take;
            pcm = &pcm[take..];
            if self.pending_len == VAD_FRAME {
                self.pending_len = 0;
                total += 1;
                if self.frame_is_voiced() {
                    voiced += 1;
                    trailing = 0;
                } else {
                    trailing += 1;
                }
            }
        }
        Verdict { voiced: total > 0 && voiced * 5 >= total * 2, trailing_silence: FRAME_DURATION * trailing }
    }

    /// Scores the pending frame: below [`SILENCE_RMS`] it is silence without the model.
    fn frame_is_voiced(&mut self) -> bool {
        let energy: i64 = self.pending.iter().map(|&s| i64::from(s) * i64::from(s)).sum();
        if energy < SILENCE_RMS * SILENCE_RMS * VAD_FRAME as i64 {
            self.quiet_run += 1;
            if self.quiet_run == SILENCE_RESET_FRAMES {
                self.detector.reset();
            }
            return false;
        }
        self.quiet_run = 0;
        self.detector.predict_i16(&self.pending) >= self.threshold
    }

    pub fn reset(&mut self) {
        self.detector.reset();
        self.pending_len = 0;
        self.quiet_run = 0;
    }
}

/// Where a packet left the utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// No speech yet.
    Waiting,
    /// Speech has begun (returned once, on the packet that confirmed it).
    SpeechStarted,
    /// Speech continues (or is in a pause shorter than the silence window).
    InSpeech,
    /// Speech ended: the silence window has passed.
    SpeechEnded,
}

/// The end-of-utterance rule over per-packet verdicts.
pub struct Endpointer {
    silence_window: Duration,
    voiced_run: Duration,
    silence: Duration,
    started: bool,
}

impl Endpointer {
    pub fn new(silence_window: Duration) -> Self {
        Self { silence_window, voiced_run: Duration::ZERO, silence: Duration::ZERO, started: false }
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Advances by one packet of `duration` that was voiced or not.
    pub fn push(&mut self, voiced: bool, duration: Duration) -> Endpoint {
        let trailing = if voiced { Duration::ZERO } else { duration };
        self.push_verdict(Verdict { voiced, trailing_silence: trailing }, duration)
    }

    /// Advances by one packet, counting the silence that ends a voiced packet too.
    pub fn push_verdict(&mut self, verdict: Verdict, duration: Duration) -> Endpoint {
        let voiced = verdict.voiced;
        if !self.started {
            if voiced {
                self.voiced_run += duration;
                if self.voiced_run >= MIN_SPEECH {
                    self.started = true;
                    self.silence = Duration::ZERO;
                    return Endpoint::SpeechStarted;
                }
            } else {
                self.voiced_run = Duration::ZERO;
            }
            return Endpoint::Waiting;
        }
        if voiced {
            self.silence = verdict.trailing_silence;
            return Endpoint::InSpeech;
        }
        self.silence += duration;
        if self.silence >= self.silence_window { Endpoint::SpeechEnded } else { Endpoint::InSpeech }
    }

    pub fn reset(&mut self) {
        *self = Self::new(self.silence_window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Duration = Duration::from_millis(60);

    #[test]
    fn speech_needs_a_run_and_ends_after_the_window() {
        let mut e = Endpointer::new(Duration::from_millis(300));
        assert_eq!(e.push(true, F), Endpoint::Waiting);
        assert_eq!(e.push(false, F), Endpoint::Waiting);
        assert_eq!(e.push(true, F), Endpoint::Waiting);
        assert_eq!(e.push(true, F), Endpoint::SpeechStarted);
        assert_eq!(e.push(false, F), Endpoint::InSpeech);
        assert_eq!(e.push(false, F), Endpoint::InSpeech);
        assert_eq!(e.push(true, F), Endpoint::InSpeech);
        for _ in 0..4 {
            assert_eq!(e.push(false, F), Endpoint::InSpeech);
        }
        assert_eq!(e.push(false, F), Endpoint::SpeechEnded);
    }

    fn speech_sample() -> Vec<i16> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-16k.wav");
        hound::WavReader::open(path).unwrap().into_samples::<i16>().map(Result::unwrap).collect()
    }

    fn voiced_packets(v: &mut VoiceDetector, pcm: &[i16]) -> usize {
        pcm.chunks(960).filter(|p| v.is_voiced(p)).count()
    }

    #[test]
    fn speech_after_long_quiet_is_heard_as_after_none() {
        let speech = speech_sample();
        let fresh = voiced_packets(&mut VoiceDetector::new(0.5), &speech);
        assert!(fresh >= 5, "the sample is speech: {fresh} voiced packets");
        // Quiet room noise (about -66 dBFS; a whole number of packets and detector frames)
        // skipped by the energy gate, then the same speech.
        let mut v = VoiceDetector::new(0.5);
        let hiss: Vec<i16> = (0..15_360).map(|i| ((i * 7919) % 31) as i16 - 15).collect();
        assert_eq!(voiced_packets(&mut v, &hiss), 0);
        assert_eq!(voiced_packets(&mut v, &speech), fresh);
    }

    #[test]
    fn silence_is_not_voice() {
        let mut v = VoiceDetector::new(0.5);
        assert!(!v.is_voiced(&[0i16; 960]));
        assert!(!v.is_voiced(&[]));
    }
}
