//! The user's side of a turn: the packets heard since `listen start`, trimmed to a short
//! pre-roll before speech and a short tail after it, capped in length, and the voice detector
//! that decides when speech ends (auto and realtime modes) or begins (barge-in).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use crate::audio::opus::UplinkDecoder;
use crate::audio::vad::{Endpoint, Endpointer, Verdict, VoiceDetector};
use crate::conversation::Utterance;

/// Byte budget per second of the utterance cap (Opus speech is ~2 KB/s; the browser's CELT
/// packets ~40 KB/s stay well under the cap's total for real turns).
const MAX_BYTES_PER_SEC: u64 = 48 * 1024;
/// Audio kept before the first voiced packet, so the utterance does not start mid-syllable.
const PRE_ROLL: Duration = Duration::from_millis(300);
/// Audio kept after the last voiced packet.
const TAIL: Duration = Duration::from_millis(180);

/// What pushing a packet did to the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnEvent {
    /// Nothing worth acting on.
    None,
    /// The user started speaking.
    SpeechStarted,
    /// The turn is complete: silence after speech, or the length cap.
    Complete,
}

/// Uplink audio of the current user turn.
pub(crate) struct TurnBuffer {
    packets: VecDeque<(Bytes, Duration)>,
    duration: Duration,
    /// Bytes held (the memory cap).
    bytes: usize,
    /// Index (into `packets`) one past the last voiced packet.
    voiced_end: usize,
    max: Duration,
    vad: Option<Vad>,
    vad_threshold: f32,
    silence_window: Duration,
}

/// Decoder and detector, created on the first packet that needs them (idle sessions never
/// pay for them).
struct Vad {
    decoder: UplinkDecoder,
    detector: VoiceDetector,
    endpointer: Endpointer,
}

impl TurnBuffer {
    pub(crate) fn new(max: Duration, vad_threshold: f32, silence_window: Duration) -> Self {
        Self {
            packets: VecDeque::new(),
            duration: Duration::ZERO,
            bytes: 0,
            voiced_end: 0,
            max,
            vad: None,
            vad_threshold,
            silence_window,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Whether speech has been heard in this turn.
    pub(crate) fn speech_started(&self) -> bool {
        self.vad.as_ref().is_some_and(|v| v.endpointer.started())
    }

    /// Adds a packet without voice detection (push-to-talk keeps everything).
    pub(crate) fn push_raw(&mut self, packet: Bytes, duration: Duration) -> TurnEvent {
        self.bytes += packet.len();
        self.packets.push_back((packet, duration));
        self.duration += duration;
        self.voiced_end = self.packets.len();
        if self.over_cap() { TurnEvent::Complete } else { TurnEvent::None }
    }

    /// The length cap, in audio time and in bytes (the durations come from packet headers a
    /// peer controls, so the bytes are capped too: 6 KB per second of the cap).
    fn over_cap(&self) -> bool {
        self.duration >= self.max || self.bytes as u64 >= self.max.as_secs().max(1) * MAX_BYTES_PER_SEC
    }

    /// Adds a packet and runs voice detection on it.
    pub(crate) fn push_detect(&mut self, packet: Bytes, duration: Duration) -> TurnEvent {
        let verdict = self.verdict(&packet);
        let voiced = verdict.voiced;
        let endpoint = match self.vad.as_mut() {
            Some(v) => v.endpointer.push_verdict(verdict, duration),
            None => Endpoint::Waiting,
        };
        self.bytes += packet.len();
        self.packets.push_back((packet, duration));
        self.duration += duration;
        if voiced {
            self.voiced_end = self.packets.len();
        }
        match endpoint {
            Endpoint::Waiting => {
                self.trim_pre_roll();
                TurnEvent::None
            }
            Endpoint::SpeechStarted => TurnEvent::SpeechStarted,
            Endpoint::InSpeech if self.over_cap() => TurnEvent::Complete,
            Endpoint::InSpeech => TurnEvent::None,
            Endpoint::SpeechEnded => TurnEvent::Complete,
        }
    }

    fn verdict(&mut self, packet: &[u8]) -> Verdict {
        let vad = self.vad.get_or_insert_with(|| Vad {
            decoder: UplinkDecoder::new().expect("a 16 kHz mono Opus decoder can always be created"),
            detector: VoiceDetector::new(self.vad_threshold),
            endpointer: Endpointer::new(self.silence_window),
        });
        match vad.decoder.decode(packet) {
            Ok(pcm) => vad.detector.analyze(pcm),
            Err(e) => {
                tracing::debug!(error = %e, "uplink packet not decodable; counted as silence");
                Verdict { voiced: false, trailing_silence: Duration::ZERO }
            }
        }
    }

    /// Before speech, keep only the pre-roll.
    fn trim_pre_roll(&mut self) {
        while self.duration > PRE_ROLL + self.packets.front().map_or(Duration::ZERO, |p| p.1) {
            if let Some((p, d)) = self.packets.pop_front() {
                self.duration -= d;
                self.bytes -= p.len();
                self.voiced_end = self.voiced_end.saturating_sub(1);
            }
        }
    }

    /// Takes the utterance (pre-roll, speech, short tail) and starts a fresh turn.
    pub(crate) fn take(&mut self) -> Utterance {
        let mut end = self.voiced_end;
        let mut tail = Duration::ZERO;
        while end < self.packets.len() && tail < TAIL {
            tail += self.packets[end].1;
            end += 1;
        }
        self.packets.truncate(end);
        let duration = self.packets.iter().map(|p| p.1).sum();
        let packets = self.packets.drain(..).map(|p| p.0).collect();
        self.reset();
        Utterance { packets, duration }
    }

    /// Forgets the turn so far (new `listen start`, wake word, abort).
    pub(crate) fn reset(&mut self) {
        self.packets.clear();
        self.duration = Duration::ZERO;
        self.bytes = 0;
        self.voiced_end = 0;
        if let Some(v) = self.vad.as_mut() {
            v.decoder.reset();
            v.detector.reset();
            v.endpointer.reset();
        }
    }
}
