//! The conversation brain over OpenAI-compatible providers: the utterance is transcribed (ASR),
//! the transcript goes to a streaming chat model together with the device's system prompt and
//! its recent messages (memory from the store), and every sentence is synthesized (TTS, or the
//! local synthesizer) and spoken as soon as the model has finished it, while the model goes on.
//! Dropping the turn's future (abort, barge-in) drops the HTTP requests with it.
//!
//! First version: no device tools, no vision, no provider fallback lists yet; when a provider
//! fails the device hears a short spoken apology from the local synthesizer.

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use super::local_tts::LocalTts;
use super::providers::asr::Asr;
use super::providers::llm::{ChatMessage, Llm, LlmEvent};
use super::providers::tts::Tts;
use super::providers::{ProviderConfig, ProviderError};
use super::sentences::SentenceSplitter;
use super::{BoxFuture, Pipeline, PipelineError, Reply, Turn, TurnInput};
use crate::audio::opus::UplinkDecoder;
use crate::store::Store;
use crate::store::model::Role;
use crate::telemetry::metrics::{Metrics, Stage};

/// What the device hears when the providers fail.
const APOLOGY: &str = "Sorry, I could not answer that. Please try again.";

/// How the brain is set up.
#[derive(Debug, Clone)]
pub struct BrainConfig {
    pub asr: ProviderConfig,
    pub llm: ProviderConfig,
    /// `None`: the local synthesizer speaks.
    pub tts: Option<ProviderConfig>,
    pub voice: String,
    pub default_prompt: String,
    /// Earlier messages of the device sent to the model.
    pub memory_messages: i64,
    pub downlink_rate: u32,
}

/// The ASR → LLM → TTS pipeline.
pub struct Brain {
    asr: Asr,
    llm: Llm,
    tts: Option<Tts>,
    local: LocalTts,
    store: Store,
    metrics: std::sync::Arc<Metrics>,
    config: BrainConfig,
}

impl Brain {
    pub fn new(
        config: BrainConfig,
        store: Store,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            asr: Asr::new(config.asr.clone())?,
            llm: Llm::new(config.llm.clone())?,
            tts: config.tts.clone().map(Tts::new).transpose()?,
            local: LocalTts::new(config.downlink_rate, "en"),
            store,
            metrics,
            config,
        })
    }

    /// The system prompt, then the device's recent messages, then the new utterance.
    async fn messages(&self, device_id: &str, text: &str) -> Vec<ChatMessage> {
        let prompt = match self.store.system_prompt(device_id).await {
            Ok(Some(p)) => p,
            Ok(None) => self.config.default_prompt.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "system prompt unavailable; using the default");
                self.config.default_prompt.clone()
            }
        };
        let mut messages = vec![ChatMessage::system(prompt)];
        match self.store.recent_messages(device_id, self.config.memory_messages).await {
            Ok(history) => {
                for m in history.into_iter().filter(|m| !m.content.is_empty()) {
                    match m.role {
                        Role::User => messages.push(ChatMessage::user(m.content)),
                        Role::Assistant => messages.push(ChatMessage::assistant(m.content)),
                        Role::System | Role::Tool => {}
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "memory unavailable for this turn"),
        }
        messages.push(ChatMessage::user(text));
        messages
    }

    /// Speaks one sentence: subtitle, then its audio.
    async fn speak(
        &self,
        reply: &mut Reply,
        sentence: &str,
        first_audio: &mut Option<Instant>,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        let speech = match &self.tts {
            Some(tts) => tts
                .synthesize(sentence, &self.config.voice, self.config.downlink_rate)
                .await
                .map_err(|e| PipelineError::Failed(format!("TTS: {e}")))?,
            None => self.local.speak(sentence).await.map_err(PipelineError::Failed)?,
        };
        if first_audio.take().is_some() {
            self.metrics.observe(Stage::TtsFirstAudio, started.elapsed());
        }
        reply.set_clip_format(speech.format);
        reply.sentence(sentence).await?;
        for packet in speech.packets {
            reply.audio(Bytes::clone(&packet)).await?;
        }
        Ok(())
    }

    async fn answer(&self, turn: Turn, reply: &mut Reply) -> Result<(), PipelineError> {
        let text = match turn.input {
            TurnInput::Voice(utterance) => {
                let pcm = tokio::task::spawn_blocking(move || decode(&utterance.packets))
                    .await
                    .map_err(|e| PipelineError::Failed(e.to_string()))?;
                let started = Instant::now();
                let text = self
                    .asr
                    .transcribe(&pcm)
                    .await
                    .map_err(|e| PipelineError::Failed(format!("ASR: {e}")))?;
                self.metrics.observe(Stage::Asr, started.elapsed());
                text
            }
            TurnInput::Text(text) => text,
            TurnInput::Say(text) => {
                let mut first = Some(Instant::now());
                return self.speak(reply, &text, &mut first).await;
            }
        };
        let text = text.trim().to_owned();
        if text.chars().filter(|c| c.is_alphanumeric()).count() == 0 {
            tracing::info!("empty or noise-only transcript; no reply");
            return Ok(());
        }
        reply.transcript(&text).await?;
        let messages = self.messages(&turn.device_id, &text).await;
        let started = Instant::now();
        let mut stream = self
            .llm
            .stream(messages, Vec::new())
            .await
            .map_err(|e| PipelineError::Failed(format!("LLM: {e}")))?;
        let mut splitter = SentenceSplitter::new();
        let mut first_token = true;
        let mut first_audio = Some(Instant::now());
        while let Some(event) = stream.next().await {
            match event.map_err(|e| PipelineError::Failed(format!("LLM: {e}")))? {
                LlmEvent::Token(t) => {
                    if first_token {
                        first_token = false;
                        self.metrics.observe(Stage::LlmFirstToken, started.elapsed());
                    }
                    for sentence in splitter.push(&t) {
                        self.speak(reply, &sentence, &mut first_audio).await?;
                    }
                }
                LlmEvent::ToolCall { name, .. } => {
                    tracing::warn!(tool = %name, "the model asked for a tool; tools are not offered yet");
                }
                LlmEvent::Done { .. } => break,
            }
        }
        if let Some(rest) = splitter.finish() {
            self.speak(reply, &rest, &mut first_audio).await?;
        }
        Ok(())
    }
}

/// Decodes an utterance to 16 kHz PCM for the recognizer.
fn decode(packets: &[Bytes]) -> Vec<i16> {
    let Ok(mut decoder) = UplinkDecoder::new() else { return Vec::new() };
    let mut pcm = Vec::with_capacity(packets.len() * 960);
    for p in packets {
        if let Ok(samples) = decoder.decode(p) {
            pcm.extend_from_slice(samples);
        }
    }
    pcm
}

impl Pipeline for Brain {
    fn respond<'a>(&'a self, turn: Turn, reply: &'a mut Reply) -> BoxFuture<'a, Result<(), PipelineError>> {
        Box::pin(async move {
            match self.answer(turn, reply).await {
                Ok(()) => Ok(()),
                Err(PipelineError::SessionClosed) => Err(PipelineError::SessionClosed),
                Err(e) => {
                    tracing::warn!(error = %e, "turn failed; apologising");
                    // Only when nothing was said yet: an apology mid-answer would confuse.
                    if reply.sentences().is_empty()
                        && let Ok(speech) = self.local.speak(APOLOGY).await
                    {
                        reply.set_clip_format(speech.format);
                        reply.sentence(APOLOGY).await?;
                        for packet in speech.packets {
                            reply.audio(packet).await?;
                        }
                    }
                    Err(e)
                }
            }
        })
    }
}
