//! The conversation brain over OpenAI-compatible providers: the utterance is transcribed (ASR),
//! the transcript goes to a streaming chat model together with the device's system prompt and
//! its recent messages (memory from the store), and every sentence is synthesized (TTS, or the
//! local synthesizer) and spoken as soon as the model has finished it, while the model goes on.
//! Dropping the turn's future (abort, barge-in) drops the HTTP requests with it.
//!
//! Tools: the device's own MCP tools (names with dots made function-safe) and two server-side
//! ones, the current time and ending the conversation, offered as functions; the model may
//! call tools for up to [`MAX_TOOL_ROUNDS`] rounds before it answers. Device tools that fail
//! or time out give the model an error text to work with. Not yet: vision, provider fallback
//! lists; when a provider fails the device hears a short spoken apology.

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use super::local_tts::LocalTts;
use super::providers::asr::Asr;
use super::providers::llm::{ChatMessage, Llm, LlmEvent, ToolCall, ToolSpec};
use super::providers::tts::Tts;
use super::providers::{ProviderConfig, ProviderError};
use super::sentences::SentenceSplitter;
use super::{BoxFuture, Pipeline, PipelineError, Reply, ToolExchange, Turn, TurnInput};
use crate::audio::opus::UplinkDecoder;
use crate::session::mcp::McpClient;
use crate::store::Store;
use crate::store::model::Role;
use crate::telemetry::metrics::{Metrics, Stage};

/// Rounds of tool calls before the model must answer.
pub const MAX_TOOL_ROUNDS: usize = 3;
/// How long a device tool may take (the camera tool uploads a photo first).
const DEVICE_TOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const TOOL_TIME: &str = "get_current_time";
const TOOL_END: &str = "end_conversation";

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
        reply.say(sentence, speech).await
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
        let mut messages = self.messages(&turn.device_id, &text).await;
        let (specs, device_names) = tool_specs(turn.tools.as_deref());
        let mut splitter = SentenceSplitter::new();
        let mut first_audio = Some(Instant::now());
        for round in 0..=MAX_TOOL_ROUNDS {
            // The last round offers no tools: the model has to answer.
            let offered = if round == MAX_TOOL_ROUNDS { Vec::new() } else { specs.clone() };
            let started = Instant::now();
            let mut stream = self
                .llm
                .stream(messages.clone(), offered)
                .await
                .map_err(|e| PipelineError::Failed(format!("LLM: {e}")))?;
            let mut first_token = true;
            let mut calls = Vec::new();
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
                    LlmEvent::ToolCall { id, name, arguments_json } => {
                        calls.push(ToolCall { id, name, arguments_json })
                    }
                    LlmEvent::Done { .. } => break,
                }
            }
            drop(stream);
            if calls.is_empty() {
                break;
            }
            messages.push(ChatMessage::assistant_tool_calls(None, calls.clone()));
            for call in calls {
                let result = self.run_tool(&call, turn.tools.as_deref(), &device_names, reply).await;
                reply.record_tool(ToolExchange {
                    call_id: call.id.clone(),
                    name: device_names.get(&call.name).cloned().unwrap_or_else(|| call.name.clone()),
                    arguments: call.arguments_json.clone(),
                    result: result.clone(),
                });
                messages.push(ChatMessage::tool(call.id, result));
            }
        }
        if let Some(rest) = splitter.finish() {
            self.speak(reply, &rest, &mut first_audio).await?;
        }
        Ok(())
    }

    /// Runs one tool call; failures become text the model can read.
    async fn run_tool(
        &self,
        call: &ToolCall,
        device: Option<&McpClient>,
        device_names: &std::collections::HashMap<String, String>,
        reply: &mut Reply,
    ) -> String {
        tracing::info!(tool = %call.name, "tool call");
        match call.name.as_str() {
            TOOL_TIME => chrono::Local::now().format("%Y-%m-%d %H:%M:%S %:z (%A)").to_string(),
            TOOL_END => {
                reply.end_conversation();
                "The conversation will end after your answer; say goodbye.".into()
            }
            name => match (device_names.get(name), device) {
                (Some(original), Some(client)) => {
                    let args: serde_json::Value =
                        serde_json::from_str(&call.arguments_json).unwrap_or_else(|_| serde_json::json!({}));
                    match client.call(original, args, DEVICE_TOOL_TIMEOUT).await {
                        Ok(text) => text,
                        Err(e) => {
                            tracing::warn!(tool = %original, error = %e, "device tool failed");
                            format!("error: {e}")
                        }
                    }
                }
                _ => {
                    tracing::warn!(tool = %name, "the model asked for a tool that does not exist");
                    format!("error: there is no tool named {name}")
                }
            },
        }
    }
}

/// The functions offered to the model and the map from function names back to device tool
/// names (function names allow only letters, digits, `_` and `-`).
fn tool_specs(device: Option<&McpClient>) -> (Vec<ToolSpec>, std::collections::HashMap<String, String>) {
    let mut specs = vec![
        ToolSpec {
            name: TOOL_TIME.into(),
            description: "Current local date and time.".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        },
        ToolSpec {
            name: TOOL_END.into(),
            description: "End the conversation when the user says goodbye or wants to stop.".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        },
    ];
    let mut names = std::collections::HashMap::new();
    for t in device.map(McpClient::tools).unwrap_or_default() {
        let safe: String = t
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .take(64)
            .collect();
        if safe == TOOL_TIME || safe == TOOL_END || names.contains_key(&safe) {
            continue;
        }
        let parameters = if t.input_schema.is_object() {
            t.input_schema.clone()
        } else {
            serde_json::json!({"type": "object", "properties": {}})
        };
        specs.push(ToolSpec { name: safe.clone(), description: t.description.clone(), parameters });
        names.insert(safe, t.name);
    }
    (specs, names)
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
    fn uses_device_tools(&self) -> bool {
        true
    }

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
                        reply.say(APOLOGY, speech).await?;
                    }
                    Err(e)
                }
            }
        })
    }
}
