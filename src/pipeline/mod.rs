//! The conversation brain behind one interface. A session hands each finished user turn to
//! [`Pipeline::respond`] together with a [`Reply`] to speak through; the pipeline sends the
//! transcript, subtitles and Opus audio, and the session's writer paces the audio and sends
//! `tts stop` after the last frame has played. Dropping the future cancels the turn.
//!
//! The embedded default is [`echo::EchoPipeline`], which answers with the user's own voice.

pub mod brain;
pub mod echo;
pub mod local_tts;
pub mod providers;
pub mod sentences;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use firmware_protocol::{ServerMessage, TtsState};
use tokio::sync::mpsc;

use crate::audio::ogg::{ClipFormat, DEFAULT_PRE_SKIP};
use crate::session::downlink::{Downlink, ReplyProgress};

/// The brain the settings describe: the providers' pipeline when ASR and LLM URLs are set,
/// the echo brain otherwise.
pub fn from_settings(
    settings: &crate::config::Settings,
    store: &crate::store::Store,
    metrics: &Arc<crate::telemetry::metrics::Metrics>,
) -> Result<Arc<dyn Pipeline>, providers::ProviderError> {
    let b = &settings.brain;
    let rate = settings.session.downlink_sample_rate;
    if b.asr_url.is_none() || b.llm_url.is_none() {
        return Ok(Arc::new(echo::EchoPipeline::new()));
    }
    let timeout = Duration::from_secs(b.provider_timeout_secs);
    let chain = |urls: &Option<String>, models: &str, keys: &Option<String>| {
        crate::config::provider_list(urls.as_deref(), models, keys.as_deref())
            .map_err(providers::ProviderError::Invalid)
            .map(|list| list.into_iter().map(|p| provider(p, timeout)).collect::<Vec<_>>())
    };
    let config = brain::BrainConfig {
        asr: chain(&b.asr_url, &b.asr_model, &b.asr_api_key)?,
        llm: chain(&b.llm_url, &b.llm_model, &b.llm_api_key)?,
        tts: chain(&b.tts_url, &b.tts_model, &b.tts_api_key)?,
        voice: b.tts_voice.clone(),
        default_prompt: b.system_prompt.clone(),
        memory_messages: b.memory_messages,
        downlink_rate: rate,
        device_tool_timeout: Duration::from_secs(b.device_tool_timeout_secs),
    };
    let urls = |c: &[providers::ProviderConfig]| {
        c.iter().map(|p| p.base_url.as_str()).collect::<Vec<_>>().join(", ")
    };
    tracing::info!(
        asr = %urls(&config.asr),
        llm = %urls(&config.llm),
        tts = %if config.tts.is_empty() { "local".to_owned() } else { urls(&config.tts) },
        "conversation brain on"
    );
    Ok(Arc::new(brain::Brain::new(config, store.clone(), metrics.clone())?))
}

/// The vision model for camera uploads: on with the brain; its own URL, model and key, or the
/// first chat model's.
pub fn vision_from_settings(
    settings: &crate::config::Settings,
) -> Result<Option<crate::vision::VisionModel>, providers::ProviderError> {
    let b = &settings.brain;
    if b.asr_url.is_none() {
        return Ok(None);
    }
    let llm = crate::config::provider_list(b.llm_url.as_deref(), &b.llm_model, b.llm_api_key.as_deref())
        .map_err(providers::ProviderError::Invalid)?;
    let Some(first) = llm.into_iter().next() else { return Ok(None) };
    let entry = crate::config::ProviderEntry {
        api_key: match (&b.vision_url, &b.vision_api_key) {
            (_, Some(key)) => Some(key.clone()),
            (None, None) => first.api_key,
            (Some(_), None) => None,
        },
        url: b.vision_url.clone().unwrap_or(first.url),
        model: b.vision_model.clone().unwrap_or(first.model),
    };
    let cfg = provider(entry, Duration::from_secs(b.provider_timeout_secs));
    crate::vision::VisionModel::new(cfg).map(Some)
}

fn provider(p: crate::config::ProviderEntry, timeout: Duration) -> providers::ProviderConfig {
    let cfg = providers::ProviderConfig::new(p.url, p.model).with_timeout(timeout);
    match p.api_key {
        Some(k) => cfg.with_api_key(k),
        None => cfg,
    }
}

/// What the user said.
#[derive(Debug, Clone)]
pub enum TurnInput {
    /// An utterance: the Opus packets as they came over the wire.
    Voice(Utterance),
    /// Typed (or otherwise recognised) text, from `listen detect`.
    Text(String),
    /// Server-initiated speech: say this text (nobody asked).
    Say(String),
}

/// The packets of one user utterance and how long it lasts.
#[derive(Debug, Clone, Default)]
pub struct Utterance {
    pub packets: Vec<Bytes>,
    pub duration: Duration,
}

/// One turn handed to the pipeline.
#[derive(Debug, Clone)]
pub struct Turn {
    pub device_id: Arc<str>,
    pub session_id: Arc<str>,
    pub input: TurnInput,
    /// The device's own tools (MCP), when it has any.
    pub tools: Option<Arc<crate::session::mcp::McpClient>>,
}

/// Why a turn could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("the session closed during the reply")]
    SessionClosed,
    #[error("{0}")]
    Failed(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A conversation brain.
pub trait Pipeline: Send + Sync + 'static {
    /// Answers one turn through `reply`. Must stop promptly when the future is dropped.
    fn respond<'a>(&'a self, turn: Turn, reply: &'a mut Reply) -> BoxFuture<'a, Result<(), PipelineError>>;

    /// Whether this brain calls device tools (sessions then discover them over MCP).
    fn uses_device_tools(&self) -> bool {
        false
    }

    /// The downlink sample rate a session announces in its hello: the rate its replies are
    /// encoded at. `configured` is the setting; `uplink` what the device's hello declared.
    fn downlink_rate(&self, configured: u32, _uplink: Option<u32>) -> u32 {
        configured
    }
}

/// The mouth a pipeline speaks through. Audio goes to the session's writer, which paces it;
/// sending waits when the writer is a few frames ahead, so a fast producer never piles up.
pub struct Reply {
    id: u64,
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
    pub images: Vec<crate::vision::VisionImage>,
}

impl Reply {
    pub fn new(
        id: u64,
        tx: mpsc::Sender<Downlink>,
        max_packet: Duration,
        progress: Arc<ReplyProgress>,
    ) -> Self {
        Self {
            id,
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
        self.send(Downlink::ReplyText { reply: self.id, text: m.to_json() }).await
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
    pub async fn say(&mut self, text: &str, speech: local_tts::Speech) -> Result<(), PipelineError> {
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
