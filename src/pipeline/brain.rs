//! The conversation brain over OpenAI-compatible providers: the utterance is transcribed (ASR),
//! the transcript goes to a streaming chat model together with the device's system prompt and
//! its recent messages (memory from the store), and every sentence is synthesized (TTS, or the
//! local synthesizer) and spoken as soon as the model has finished it, while the model goes on.
//!
//! A turn runs as two halves joined in one future: the *thinker* reads the model's stream,
//! runs tools, splits sentences and starts each sentence's synthesis at once (a task per
//! sentence, at most [`LOOKAHEAD`] ahead of the speaker); the *speaker* says them in order.
//! So the next sentence is synthesized while the current one plays, and no gap opens between
//! sentences as long as synthesis is faster than speech. Dropping the turn's future (abort,
//! barge-in) drops the HTTP requests and the synthesis tasks with it.
//!
//! Resilience: each provider kind has an ordered list of providers. A call goes to the first;
//! a failure that may pass (connection refused, 429, 5xx) gets one more try after a short
//! pause, then the next provider is asked. The model's stream is retried like that only
//! while its round has produced nothing to say; a sentence whose synthesis fails everywhere is
//! spoken by the local synthesizer. When nothing at all could be said, the device hears a
//! short spoken apology and the session goes on.
//!
//! Tools: the device's own MCP tools (names with dots made function-safe) and two server-side
//! ones, the current time and ending the conversation, offered as functions; the model may
//! call tools for up to [`MAX_TOOL_ROUNDS`] rounds before it answers. Device tools that fail
//! or time out give the model an error text to work with. An image the device uploads to the
//! vision endpoint during a tool call is kept with that call's result.
//!
//! Emotion: an emoji at the start of the answer sets the device's face (`llm` message) and is
//! not spoken.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::local_tts::{LocalTts, Speech};
use super::providers::asr::Asr;
use super::providers::llm::{ChatMessage, Llm, LlmEvent, ToolCall, ToolSpec};
use super::providers::tts::Tts;
use super::providers::{ProviderConfig, ProviderError};
use super::sentences::SentenceSplitter;
use super::{BoxFuture, Pipeline, PipelineError, Reply, ToolExchange, Turn, TurnInput};
use crate::audio::opus::UplinkDecoder;
use crate::store::Store;
use crate::store::model::Role;
use crate::telemetry::metrics::{Metrics, Stage};

/// Rounds of tool calls before the model must answer.
pub(crate) const MAX_TOOL_ROUNDS: usize = 3;
/// Sentences synthesized ahead of the one being spoken.
pub(crate) const LOOKAHEAD: usize = 2;
/// The pause before a provider's second try.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What the device hears when the providers fail.
const APOLOGY: &str = "Sorry, I could not answer that. Please try again.";

/// How the brain is set up.
#[derive(Debug, Clone)]
pub(crate) struct BrainConfig {
    /// Speech recognizers, in order of preference (at least one).
    pub asr: Vec<ProviderConfig>,
    /// Chat models, in order of preference (at least one).
    pub llm: Vec<ProviderConfig>,
    /// Speech synthesizers, in order of preference; empty: the local synthesizer speaks.
    pub tts: Vec<ProviderConfig>,
    pub voice: String,
    pub default_prompt: String,
    /// Earlier messages of the device sent to the model.
    pub memory_messages: i64,
    pub downlink_rate: u32,
    /// How long a device tool may take (the camera tool uploads a photo first).
    pub device_tool_timeout: Duration,
}

/// The synthesizers: the providers in order, then the local one.
struct Voice {
    tts: Vec<Tts>,
    local: LocalTts,
    voice: String,
    rate: u32,
}

impl Voice {
    /// Synthesizes one sentence: the providers in order, the local synthesizer last.
    async fn synthesize(&self, sentence: &str) -> Result<Speech, String> {
        if !self.tts.is_empty() {
            match with_fallback("tts", self.tts.len(), |i| {
                self.tts[i].synthesize(sentence, &self.voice, self.rate)
            })
            .await
            {
                Ok(speech) => return Ok(speech),
                Err(e) => {
                    tracing::warn!(error = %e, "every TTS provider failed; the local synthesizer speaks")
                }
            }
        }
        self.local.speak(sentence).await
    }
}

/// The ASR → LLM → TTS pipeline.
pub(crate) struct Brain {
    asr: Vec<Asr>,
    llm: Vec<Llm>,
    voice: Arc<Voice>,
    store: Store,
    metrics: Arc<Metrics>,
    config: BrainConfig,
}

/// Calls provider `0`, `1`, … in order until one succeeds. A failure that may pass (but not a
/// timeout: that provider already had its full time) gets a second try after a short pause.
async fn with_fallback<T, F, Fut>(stage: &str, providers: usize, mut call: F) -> Result<T, ProviderError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProviderError>>,
{
    let mut last = ProviderError::Invalid(format!("no {stage} provider configured"));
    for i in 0..providers {
        for attempt in 0..2 {
            match call(i).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let again = attempt == 0 && e.is_retryable() && e != ProviderError::Timeout;
                    tracing::warn!(stage, provider = i, attempt, error = %e, retry = again, "provider failed");
                    last = e;
                    if !again {
                        break;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
    Err(last)
}

/// Whether a failed call should go to the same provider once more.
fn try_again(e: &ProviderError, attempt: usize) -> bool {
    attempt == 0 && e.is_retryable() && *e != ProviderError::Timeout
}

/// Why one round with the model ended early.
enum RoundError {
    /// The provider failed (the caller decides whether another may try).
    Provider(ProviderError),
    /// The session is gone.
    Closed,
}

/// What the thinker hands the speaker, in speaking order.
enum Spoken {
    /// Set the device's face.
    Emotion(&'static str),
    /// A sentence and its synthesis, already under way.
    Sentence(String, AbortOnDropHandle<Result<Speech, String>>),
}

/// What the thinker did besides speaking.
#[derive(Default)]
struct Thought {
    tools: Vec<ToolExchange>,
    end_conversation: bool,
}

/// The thinker's way to the speaker: starts each sentence's synthesis and queues it.
struct Mouth<'a> {
    tx: &'a mpsc::Sender<Spoken>,
    voice: Arc<Voice>,
    metrics: Arc<Metrics>,
    /// Sentences queued so far in this turn.
    said: usize,
    /// Whether the answer's start was checked for an emotion emoji.
    face_checked: bool,
}

impl Mouth<'_> {
    async fn send(&self, item: Spoken) -> Result<(), RoundError> {
        self.tx.send(item).await.map_err(|_| RoundError::Closed)
    }

    async fn say(&mut self, sentence: String) -> Result<(), RoundError> {
        let mut sentence = sentence;
        if !self.face_checked {
            self.face_checked = true;
            if let Some((emotion, rest)) = super::emotion::leading_emotion(&sentence) {
                self.send(Spoken::Emotion(emotion)).await?;
                sentence = rest.to_owned();
            }
        }
        if !sentence.chars().any(char::is_alphanumeric) {
            return Ok(());
        }
        let voice = self.voice.clone();
        let first = (self.said == 0).then(|| (Instant::now(), self.metrics.clone()));
        let text = sentence.clone();
        let synthesis = tokio::spawn(
            async move {
                let speech = voice.synthesize(&text).await;
                if let (Some((at, metrics)), Ok(_)) = (&first, &speech) {
                    metrics.observe(Stage::TtsFirstAudio, at.elapsed());
                }
                speech
            }
            .in_current_span(),
        );
        self.said += 1;
        self.send(Spoken::Sentence(sentence, AbortOnDropHandle::new(synthesis))).await
    }
}

/// Says what the thinker queues, in order, until it is done.
async fn speak_all(reply: &mut Reply, mut rx: mpsc::Receiver<Spoken>) -> Result<(), PipelineError> {
    while let Some(item) = rx.recv().await {
        match item {
            Spoken::Emotion(emotion) => reply.emotion(emotion).await?,
            Spoken::Sentence(text, synthesis) => {
                let speech = synthesis
                    .await
                    .map_err(|e| PipelineError::Failed(format!("synthesis: {e}")))?
                    .map_err(PipelineError::Failed)?;
                reply.say(&text, speech).await?;
            }
        }
    }
    Ok(())
}

impl Brain {
    pub(crate) fn new(
        config: BrainConfig,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProviderError> {
        if config.asr.is_empty() || config.llm.is_empty() {
            return Err(ProviderError::Invalid("the brain needs an ASR and an LLM provider".into()));
        }
        let voice = Voice {
            tts: config.tts.iter().cloned().map(Tts::new).collect::<Result<_, _>>()?,
            local: LocalTts::new(config.downlink_rate, "en"),
            voice: config.voice.clone(),
            rate: config.downlink_rate,
        };
        Ok(Self {
            asr: config.asr.iter().cloned().map(Asr::new).collect::<Result<_, _>>()?,
            llm: config.llm.iter().cloned().map(Llm::new).collect::<Result<_, _>>()?,
            voice: Arc::new(voice),
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

    /// The utterance as text, from the first recognizer that answers.
    async fn transcribe(&self, packets: Vec<Bytes>) -> Result<String, PipelineError> {
        let pcm = tokio::task::spawn_blocking(move || decode(&packets))
            .await
            .map_err(|e| PipelineError::Failed(e.to_string()))?;
        let started = Instant::now();
        let text = with_fallback("asr", self.asr.len(), |i| self.asr[i].transcribe(&pcm))
            .await
            .map_err(|e| PipelineError::Failed(format!("ASR: {e}")))?;
        self.metrics.observe(Stage::Asr, started.elapsed());
        Ok(text)
    }

    async fn answer(&self, turn: Turn, reply: &mut Reply) -> Result<(), PipelineError> {
        let text = match &turn.input {
            TurnInput::Voice(utterance) => self.transcribe(utterance.packets.clone()).await?,
            TurnInput::Text(text) => text.clone(),
            TurnInput::Say(text) => {
                let started = Instant::now();
                let speech = self.voice.synthesize(text).await.map_err(PipelineError::Failed)?;
                self.metrics.observe(Stage::TtsFirstAudio, started.elapsed());
                return reply.say(text, speech).await;
            }
        };
        let text = text.trim().to_owned();
        if text.chars().filter(|c| c.is_alphanumeric()).count() == 0 {
            tracing::info!("empty or noise-only transcript; no reply");
            return Ok(());
        }
        reply.transcript(&text).await?;
        let messages = self.messages(&turn.device_id, &text).await;
        let (tx, rx) = mpsc::channel(LOOKAHEAD);
        let mut thought = Thought::default();
        // The speaker failing (the session closed) stops the thinker; the thinker failing
        // leaves the speaker to say what was already queued.
        let thinker = async {
            let mut mouth = Mouth {
                tx: &tx,
                voice: self.voice.clone(),
                metrics: self.metrics.clone(),
                said: 0,
                face_checked: false,
            };
            let result = self.think(&turn, messages, &mut mouth, &mut thought).await;
            drop(mouth);
            drop(tx);
            Ok::<_, PipelineError>(result)
        };
        let outcome = tokio::try_join!(thinker, speak_all(reply, rx));
        for exchange in std::mem::take(&mut thought.tools) {
            reply.record_tool(exchange);
        }
        if thought.end_conversation {
            reply.end_conversation();
        }
        let (thinking, ()) = outcome?;
        thinking
    }

    /// Rounds with the model (and its tool calls) until it answers.
    async fn think(
        &self,
        turn: &Turn,
        mut messages: Vec<ChatMessage>,
        mouth: &mut Mouth<'_>,
        thought: &mut Thought,
    ) -> Result<(), PipelineError> {
        let (specs, device_names) = super::tools::specs(turn.tools.as_deref());
        for round in 0..=MAX_TOOL_ROUNDS {
            // The last round offers no tools: the model has to answer.
            let offered = if round == MAX_TOOL_ROUNDS { Vec::new() } else { specs.clone() };
            let calls = self.round(&messages, &offered, mouth).await?;
            if calls.is_empty() {
                break;
            }
            messages.push(ChatMessage::assistant_tool_calls(None, calls.clone()));
            for call in calls {
                let (result, images, ends) = super::tools::run(
                    &call,
                    turn.tools.as_deref(),
                    &device_names,
                    self.config.device_tool_timeout,
                )
                .await;
                thought.end_conversation |= ends;
                thought.tools.push(ToolExchange {
                    call_id: call.id.clone(),
                    name: device_names.get(&call.name).cloned().unwrap_or_else(|| call.name.clone()),
                    arguments: call.arguments_json.clone(),
                    result: result.clone(),
                    images,
                });
                messages.push(ChatMessage::tool(call.id, result));
            }
        }
        Ok(())
    }

    /// One round with the model: its sentences go to the mouth as they complete; returns the
    /// tool calls it asked for. Providers are tried in order while the round has said nothing.
    async fn round(
        &self,
        messages: &[ChatMessage],
        offered: &[ToolSpec],
        mouth: &mut Mouth<'_>,
    ) -> Result<Vec<ToolCall>, PipelineError> {
        let mut last = ProviderError::Invalid("no LLM provider configured".into());
        for (i, llm) in self.llm.iter().enumerate() {
            for attempt in 0..2 {
                let said_before = mouth.said;
                match self.stream_round(llm, messages, offered, mouth).await {
                    Ok(calls) => return Ok(calls),
                    Err(RoundError::Closed) => return Err(PipelineError::SessionClosed),
                    Err(RoundError::Provider(e)) if mouth.said > said_before => {
                        tracing::warn!(error = %e, "the model failed mid-answer");
                        return Err(PipelineError::Failed(format!("LLM: {e}")));
                    }
                    Err(RoundError::Provider(e)) => {
                        let again = try_again(&e, attempt);
                        tracing::warn!(stage = "llm", provider = i, attempt, error = %e, retry = again, "provider failed");
                        last = e;
                        if !again {
                            break;
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        }
        Err(PipelineError::Failed(format!("LLM: {last}")))
    }

    async fn stream_round(
        &self,
        llm: &Llm,
        messages: &[ChatMessage],
        offered: &[ToolSpec],
        mouth: &mut Mouth<'_>,
    ) -> Result<Vec<ToolCall>, RoundError> {
        let started = Instant::now();
        let mut stream =
            llm.stream(messages.to_vec(), offered.to_vec()).await.map_err(RoundError::Provider)?;
        let mut splitter = SentenceSplitter::new();
        let mut first_token = true;
        let mut calls = Vec::new();
        while let Some(event) = stream.next().await {
            match event.map_err(RoundError::Provider)? {
                LlmEvent::Token(t) => {
                    if first_token {
                        first_token = false;
                        self.metrics.observe(Stage::LlmFirstToken, started.elapsed());
                    }
                    for sentence in splitter.push(&t) {
                        mouth.say(sentence).await?;
                    }
                }
                LlmEvent::ToolCall { id, name, arguments_json } => {
                    calls.push(ToolCall { id, name, arguments_json })
                }
                LlmEvent::Done { .. } => break,
            }
        }
        drop(stream);
        // What the model said before asking for a tool is spoken before the tool runs.
        if let Some(rest) = splitter.finish() {
            mouth.say(rest).await?;
        }
        Ok(calls)
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
                        && let Ok(speech) = self.voice.local.speak(APOLOGY).await
                    {
                        reply.say(APOLOGY, speech).await?;
                    }
                    Err(e)
                }
            }
        })
    }
}
