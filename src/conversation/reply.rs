//! The mouth a brain speaks through ([`Reply`]) and what it hands the session's writer
//! ([`Downlink`]), with the progress the writer reports back ([`ReplyProgress`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use firmware_protocol::{ServerMessage, TtsState};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{PipelineError, VisionImage};
use crate::audio::ogg::{ClipFormat, DEFAULT_PRE_SKIP};

/// What the session (or a reply it runs) asks the writer to do.
#[derive(Debug)]
pub enum Downlink {
    /// A JSON message, sent as soon as everything before it was sent.
    Text(String),
    /// A JSON message of reply `reply`: dropped, like its audio, once the reply is cancelled
    /// (so nothing of an interrupted reply reaches the device after its `tts stop`).
    ReplyText { reply: u64, text: String },
    /// Opus packets of reply `reply`, each with how long it lasts, paced one by one. A
    /// producer that has a whole sentence (or utterance) hands it over in one command, so it
    /// is not woken again for every frame the writer sends.
    Audio { reply: u64, packets: Vec<(Bytes, Duration)>, progress: Arc<ReplyProgress> },
    /// Reply `reply` has no more audio: send `tts stop` once it has played, then report back.
    EndOfReply { reply: u64, progress: Arc<ReplyProgress> },
    /// Send a Close frame and stop.
    Close { code: u16, reason: &'static str },
}

/// What the writer reports about one reply while sending it.
#[derive(Debug, Default)]
pub struct ReplyProgress {
    /// The reply's packets that actually went out (what the device heard if it is cut short).
    pub sent: AtomicUsize,
    /// When the user's turn ended, and where to record the time to the first reply frame.
    pub first_audio: Option<(Instant, metrics::Histogram)>,
    /// Set by the pipeline: close the session once this reply has played.
    pub end_conversation: AtomicBool,
    /// Notified when the writer is done with the reply: played to its end (or cut short).
    pub played: tokio::sync::Notify,
    /// Set when the reply has played to its end, just before its `tts stop` is sent.
    pub completed: AtomicBool,
}

/// Synthesized speech as Opus packets at the downlink rate.
#[derive(Debug, Clone)]
pub struct Speech {
    pub packets: Vec<Bytes>,
    pub format: ClipFormat,
}

/// The mouth a pipeline speaks through. Audio goes to the session's writer, which paces it;
/// sending waits when the writer is a few frames ahead, so a fast producer never piles up.
pub struct Reply {
    id: u64,
    /// Every message names the session (web clients take the id for `abort` from it).
    session_id: Arc<str>,
    tx: mpsc::Sender<Downlink>,
    /// The downlink frame duration announced in the hello; longer packets would overflow the
    /// device's decoder buffer.
    max_packet: Duration,
    started: bool,
    /// What the user said, as the pipeline understood it.
    transcript: Option<String>,
    /// What has been handed to the writer, for the record of the turn.
    sentences: Vec<String>,
    audio: Vec<Bytes>,
    audio_duration: Duration,
    /// How many of `audio` the writer actually sent (and the first-frame latency probe).
    progress: Arc<ReplyProgress>,
    /// How the reply's packets were encoded (for the clip's header).
    clip_format: ClipFormat,
    /// Tool calls made while answering.
    tools: Vec<ToolExchange>,
}

/// One tool call of a reply and what it returned.
#[derive(Debug, Clone)]
pub struct ToolExchange {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    pub result: String,
    /// Images the device uploaded while running the tool (the camera).
    pub images: Vec<VisionImage>,
}

impl Reply {
    pub fn new(
        id: u64,
        session_id: Arc<str>,
        tx: mpsc::Sender<Downlink>,
        max_packet: Duration,
        progress: Arc<ReplyProgress>,
    ) -> Self {
        Self {
            id,
            session_id,
            tx,
            max_packet,
            started: false,
            transcript: None,
            sentences: Vec::new(),
            audio: Vec::new(),
            audio_duration: Duration::ZERO,
            progress,
            clip_format: ClipFormat { input_rate: 16_000, pre_skip: DEFAULT_PRE_SKIP },
            tools: Vec::new(),
        }
    }

    /// Declares how the reply's packets were encoded (defaults to 16 kHz, libopus lookahead).
    pub fn set_clip_format(&mut self, format: ClipFormat) {
        self.clip_format = format;
    }

    pub fn clip_format(&self) -> ClipFormat {
        self.clip_format
    }

    /// What the user said, if the pipeline reported it.
    pub fn user_text(&self) -> Option<&str> {
        self.transcript.as_deref()
    }

    /// The packets the device was actually sent (all of them unless the reply was cut).
    pub fn spoken_audio(&self) -> &[Bytes] {
        let n = self.progress.sent.load(Ordering::Relaxed).min(self.audio.len());
        &self.audio[..n]
    }

    /// Asks the session to close once this reply has played (the "end conversation" tool).
    pub fn end_conversation(&self) {
        self.progress.end_conversation.store(true, Ordering::Relaxed);
    }

    /// Records a tool call the model made and its result (stored with the turn).
    pub fn record_tool(&mut self, call: ToolExchange) {
        self.tools.push(call);
    }

    /// The tool calls of this reply, in order.
    pub fn tool_exchanges(&self) -> &[ToolExchange] {
        &self.tools
    }

    /// Every packet handed to the writer.
    pub fn queued_audio(&self) -> &[Bytes] {
        &self.audio
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// What the writer reports about this reply.
    pub fn progress(&self) -> Arc<ReplyProgress> {
        self.progress.clone()
    }

    /// Whether `tts start` was sent (the session then owes the device a `tts stop`).
    pub fn started(&self) -> bool {
        self.started
    }

    pub fn sentences(&self) -> &[String] {
        &self.sentences
    }

    pub fn audio_duration(&self) -> Duration {
        self.audio_duration
    }

    async fn send(&self, d: Downlink) -> Result<(), PipelineError> {
        self.tx.send(d).await.map_err(|_| PipelineError::SessionClosed)
    }

    async fn send_json(&self, m: &ServerMessage) -> Result<(), PipelineError> {
        self.send(Downlink::ReplyText { reply: self.id, text: m.to_json_in(&self.session_id) }).await
    }

    /// Shows what the user said.
    pub async fn transcript(&mut self, text: &str) -> Result<(), PipelineError> {
        self.transcript = Some(text.to_owned());
        self.send_json(&ServerMessage::Stt { text: text.to_owned() }).await
    }

    /// Sets the device's face.
    pub async fn emotion(&mut self, emotion: &str) -> Result<(), PipelineError> {
        self.send_json(&ServerMessage::Llm { emotion: emotion.to_owned(), text: None }).await
    }

    /// Puts the device into Speaking (once per reply).
    pub async fn start(&mut self) -> Result<(), PipelineError> {
        if !self.started {
            self.started = true;
            self.send_json(&ServerMessage::tts(TtsState::Start)).await?;
        }
        Ok(())
    }

    /// Announces the sentence whose audio follows.
    pub async fn sentence(&mut self, text: &str) -> Result<(), PipelineError> {
        self.start().await?;
        self.sentences.push(text.to_owned());
        self.send_json(&ServerMessage::sentence(text)).await
    }

    /// Speaks synthesized speech: the subtitle, then its packets.
    pub async fn say(&mut self, text: &str, speech: Speech) -> Result<(), PipelineError> {
        self.set_clip_format(speech.format);
        self.sentence(text).await?;
        self.audio_all(speech.packets).await
    }

    /// Queues packets the pipeline already has in full (a sentence, an utterance) as one
    /// hand-over to the writer. Packets whose TOC is unreadable or that last longer than the
    /// announced frame are skipped with a log line (the device could not decode them).
    pub async fn audio_all(&mut self, packets: Vec<Bytes>) -> Result<(), PipelineError> {
        let mut batch = Vec::with_capacity(packets.len());
        for packet in packets {
            if let Some(duration) = self.playable(&packet) {
                self.audio_duration += duration;
                self.audio.push(packet.clone());
                batch.push((packet, duration));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.start().await?;
        self.send(Downlink::Audio { reply: self.id, packets: batch, progress: self.progress.clone() }).await
    }

    /// How long a packet plays, or `None` (with a log line) when the device could not play it.
    fn playable(&self, packet: &Bytes) -> Option<Duration> {
        let duration = match firmware_protocol::opus::packet_duration_us(packet) {
            Ok(us) => Duration::from_micros(u64::from(us)),
            Err(e) => {
                tracing::debug!(error = %e, "reply packet skipped");
                return None;
            }
        };
        if duration > self.max_packet {
            tracing::debug!(?duration, "reply packet longer than the announced frame skipped");
            return None;
        }
        Some(duration)
    }
}
