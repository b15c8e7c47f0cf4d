//! The language model: `POST {base}/chat/completions` with `stream: true`, read as server-sent
//! events and turned into [`LlmEvent`]s: content tokens as they arrive, each tool call once its
//! streamed argument fragments are complete, and the finish.
//!
//! [`Llm::stream`] returns a boxed stream ([`LlmStream`]) that owns the HTTP response and
//! nothing else: no task is spawned, so dropping the stream closes the connection and the
//! provider stops generating. The stream ends after [`LlmEvent::Done`] or after its first
//! `Err` item.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{ProviderConfig, ProviderError, authorize, http_client, send};

/// One message of a conversation, in OpenAI's wire shape (`{"role": "user", "content": ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum ChatMessage {
    System {
        content: String,
    },
    User {
        content: UserContent,
    },
    /// What the model said: text, tool calls, or both. `content` is sent as `null` when absent.
    Assistant {
        #[serde(default)]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// A tool's result, answering the assistant's call `tool_call_id`.
    Tool {
        tool_call_id: String,
        content: String,
    },
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self::System { content: content.into() }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::User { content: UserContent::Text(content.into()) }
    }

    /// A question about an image, for a vision-capable model: the image goes inline as a
    /// `data:` URL.
    pub fn user_with_image(text: impl Into<String>, mime: &str, image: &[u8]) -> Self {
        use base64::Engine;
        let url = format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(image));
        Self::User {
            content: UserContent::Parts(vec![
                json!({"type": "text", "text": text.into()}),
                json!({"type": "image_url", "image_url": {"url": url}}),
            ]),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::Assistant { content: Some(content.into()), tool_calls: Vec::new() }
    }

    /// The assistant's turn that asked for tools (with the text it said before, if any).
    pub fn assistant_tool_calls(content: Option<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self::Assistant { content, tool_calls }
    }

    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self::Tool { tool_call_id: tool_call_id.into(), content: content.into() }
    }
}

/// What a user message holds: plain text, or content parts (text and images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UserContent {
    Text(String),
    Parts(Vec<Value>),
}

/// A tool call the model made. On the wire:
/// `{"id": ..., "type": "function", "function": {"name": ..., "arguments": "<JSON text>"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireToolCall", from = "WireToolCall")]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not validated.
    pub arguments_json: String,
}

#[derive(Serialize, Deserialize)]
struct WireToolCall {
    id: String,
    #[serde(rename = "type", default = "function_type")]
    kind: String,
    function: WireFunction,
}

#[derive(Serialize, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

fn function_type() -> String {
    "function".into()
}

impl From<ToolCall> for WireToolCall {
    fn from(c: ToolCall) -> Self {
        Self {
            id: c.id,
            kind: function_type(),
            function: WireFunction { name: c.name, arguments: c.arguments_json },
        }
    }
}

impl From<WireToolCall> for ToolCall {
    fn from(w: WireToolCall) -> Self {
        Self { id: w.id, name: w.function.name, arguments_json: w.function.arguments }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON schema (`{"type": "object", "properties": {...}, "required": [...]}`).
    pub parameters: Value,
}

impl ToolSpec {
    fn to_wire(&self) -> Value {
        json!({
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        })
    }
}

/// What the model streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmEvent {
    /// A piece of the answer's text.
    Token(String),
    /// A complete tool call (its argument fragments joined; `{}` when the model sent none).
    /// Emitted when the model finishes, in the order of the calls.
    ToolCall { id: String, name: String, arguments_json: String },
    /// The answer is complete. `finish_reason` is `stop`, `tool_calls`, `length`, ... or `None`
    /// when the provider ended with `[DONE]` without naming one.
    Done { finish_reason: Option<String> },
}

/// The events of one completion; see the module documentation for its lifetime.
pub type LlmStream = Pin<Box<dyn Stream<Item = Result<LlmEvent, ProviderError>> + Send>>;

/// An OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone)]
pub struct Llm {
    cfg: ProviderConfig,
    client: reqwest::Client,
    url: String,
    params: Map<String, Value>,
}

impl Llm {
    pub fn new(cfg: ProviderConfig) -> Result<Self, ProviderError> {
        let client = http_client(&cfg)?;
        let url = cfg.url("/chat/completions");
        Ok(Self { cfg, client, url, params: Map::new() })
    }

    /// Adds a request parameter sent with every completion (`temperature`, `max_tokens`, ...).
    /// `model`, `messages`, `stream` and `tools` are set by [`Llm::stream`] and win.
    pub fn with_param(mut self, key: impl Into<String>, value: Value) -> Self {
        self.params.insert(key.into(), value);
        self
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// Starts a completion. Resolves once the provider has answered with a success status
    /// (within the timeout); errors before that are returned here, later ones as stream items.
    pub async fn stream(
        &self,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
    ) -> Result<LlmStream, ProviderError> {
        let mut body = self.params.clone();
        body.insert("model".into(), Value::String(self.cfg.model.clone()));
        body.insert("messages".into(), serde_json::to_value(&messages).expect("messages serialize"));
        body.insert("stream".into(), Value::Bool(true));
        if tools.is_empty() {
            body.remove("tools");
        } else {
            body.insert("tools".into(), Value::Array(tools.iter().map(ToolSpec::to_wire).collect()));
        }
        let req = authorize(self.client.post(&self.url), &self.cfg)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        let resp = send(req, self.cfg.timeout).await?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
            let head = super::read_body(resp, self.cfg.timeout, 64 * 1024).await.unwrap_or_default();
            let head = String::from_utf8_lossy(&head[..head.len().min(200)]).into_owned();
            return Err(ProviderError::Malformed(format!(
                "expected an event stream, got {content_type}: {head}"
            )));
        }
        let events = GapTimeout::new(resp.bytes_stream(), self.cfg.timeout).eventsource();
        let state = StreamState { events: Box::pin(events), parser: ChunkParser::default(), finished: false };
        Ok(Box::pin(futures_util::stream::unfold(state, next_event)))
    }

    /// A whole answer without tools: the streamed tokens joined.
    pub async fn complete(&self, messages: Vec<ChatMessage>) -> Result<String, ProviderError> {
        let mut stream = self.stream(messages, Vec::new()).await?;
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event? {
                LlmEvent::Token(t) => text.push_str(&t),
                LlmEvent::ToolCall { .. } => {}
                LlmEvent::Done { .. } => break,
            }
        }
        Ok(text)
    }
}

type SseEvents =
    Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<ProviderError>>> + Send>>;

struct StreamState {
    events: SseEvents,
    parser: ChunkParser,
    finished: bool,
}

/// How long to wait for the end of the body after `[DONE]`, so the connection can be reused.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(20);

async fn next_event(mut st: StreamState) -> Option<(Result<LlmEvent, ProviderError>, StreamState)> {
    loop {
        if let Some(ev) = st.parser.pending.pop_front() {
            return Some((Ok(ev), st));
        }
        if st.finished {
            return None;
        }
        let failure = match st.events.next().await {
            None => st.parser.end_of_body().err(),
            Some(Ok(event)) => st.parser.feed(&event.data).err(),
            Some(Err(EventStreamError::Transport(e))) => Some(e),
            Some(Err(EventStreamError::Utf8(e))) => {
                Some(ProviderError::Malformed(format!("event stream is not UTF-8: {e}")))
            }
            Some(Err(EventStreamError::Parser(e))) => {
                Some(ProviderError::Malformed(format!("unreadable event stream: {e}")))
            }
        };
        if let Some(e) = failure {
            st.finished = true;
            st.events = Box::pin(futures_util::stream::empty());
            return Some((Err(e), st));
        }
        if st.parser.done {
            st.finished = true;
            // Read the (normally immediate) end of the body so the connection returns to the
            // pool; give up quickly if the provider keeps it open.
            let _ =
                tokio::time::timeout(DRAIN_AFTER_DONE, async { while st.events.next().await.is_some() {} })
                    .await;
            st.events = Box::pin(futures_util::stream::empty());
        }
    }
}

/// One streamed chunk (`chat.completion.chunk`), only the parts used.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// Turns SSE `data` payloads into events: tokens at once, tool calls assembled by `index`.
#[derive(Default)]
struct ChunkParser {
    pending: VecDeque<LlmEvent>,
    calls: BTreeMap<u64, PartialCall>,
    finish_reason: Option<String>,
    done: bool,
}

impl ChunkParser {
    fn feed(&mut self, data: &str) -> Result<(), ProviderError> {
        let data = data.trim();
        if data == "[DONE]" {
            return self.complete();
        }
        if self.done || data.is_empty() {
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            ProviderError::Malformed(format!("event data is not a completion chunk ({e}): {}", head(data)))
        })?;
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            let message =
                error.get("message").and_then(Value::as_str).map_or_else(|| error.to_string(), str::to_owned);
            return Err(ProviderError::Malformed(format!("provider error in stream: {}", head(&message))));
        }
        // Only the first choice is read (one is requested).
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    self.pending.push_back(LlmEvent::Token(text));
                }
                for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    let index = call.index.unwrap_or(position as u64);
                    let partial = self.calls.entry(index).or_default();
                    if let Some(id) = call.id.filter(|id| !id.is_empty()) {
                        partial.id.get_or_insert(id);
                    }
                    if let Some(f) = call.function {
                        // Some providers repeat the whole name in every fragment.
                        if let Some(name) = f.name.filter(|n| !n.is_empty() && *n != partial.name) {
                            partial.name.push_str(&name);
                        }
                        if let Some(args) = f.arguments {
                            partial.arguments.push_str(&args);
                        }
                    }
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
                self.flush_calls()?;
            }
        }
        Ok(())
    }

    /// Emits the assembled tool calls in index order.
    fn flush_calls(&mut self) -> Result<(), ProviderError> {
        for (index, call) in std::mem::take(&mut self.calls) {
            if call.name.is_empty() {
                return Err(ProviderError::Malformed(format!("tool call {index} has no function name")));
            }
            let arguments_json =
                if call.arguments.trim().is_empty() { "{}".to_owned() } else { call.arguments };
            self.pending.push_back(LlmEvent::ToolCall {
                id: call.id.unwrap_or_else(|| format!("call_{index}")),
                name: call.name,
                arguments_json,
            });
        }
        Ok(())
    }

    fn complete(&mut self) -> Result<(), ProviderError> {
        if !self.done {
            self.flush_calls()?;
            self.done = true;
            self.pending.push_back(LlmEvent::Done { finish_reason: self.finish_reason.clone() });
        }
        Ok(())
    }

    /// The body ended: fine after `[DONE]` or a finish reason, truncated otherwise.
    fn end_of_body(&mut self) -> Result<(), ProviderError> {
        if self.done || self.finish_reason.is_some() {
            self.complete()
        } else {
            Err(ProviderError::Malformed("event stream ended before the completion finished".into()))
        }
    }
}

fn head(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A byte stream that fails with [`ProviderError::Timeout`] when no chunk arrives within
/// `gap` (measured from creation, then from each chunk).
struct GapTimeout<S> {
    inner: S,
    gap: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    ended: bool,
}

impl<S> GapTimeout<S> {
    fn new(inner: S, gap: Duration) -> Self {
        Self { inner, gap, sleep: Box::pin(tokio::time::sleep(gap)), ended: false }
    }
}

impl<S, B> Stream for GapTimeout<S>
where
    S: Stream<Item = Result<B, reqwest::Error>> + Unpin,
{
    type Item = Result<B, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(item) => {
                let deadline = tokio::time::Instant::now() + self.gap;
                self.sleep.as_mut().reset(deadline);
                if item.is_none() {
                    self.ended = true;
                }
                Poll::Ready(item.map(|r| r.map_err(ProviderError::from_body)))
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.ended = true;
                    Poll::Ready(Some(Err(ProviderError::Timeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> (Vec<LlmEvent>, Result<(), ProviderError>) {
        let mut p = ChunkParser::default();
        let mut result = Ok(());
        for l in lines {
            result = p.feed(l);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = p.end_of_body();
        }
        (p.pending.into_iter().collect(), result)
    }

    #[test]
    fn messages_have_the_openai_shape() {
        let call = ToolCall { id: "call_1".into(), name: "get_time".into(), arguments_json: "{}".into() };
        let msgs = vec![
            ChatMessage::system("be brief"),
            ChatMessage::user("time?"),
            ChatMessage::assistant_tool_calls(None, vec![call]),
            ChatMessage::tool("call_1", "12:00"),
            ChatMessage::assistant("It is noon."),
        ];
        let v = serde_json::to_value(&msgs).unwrap();
        assert_eq!(
            v,
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "time?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
                {"role": "assistant", "content": "It is noon."},
            ])
        );
        let back: Vec<ChatMessage> = serde_json::from_value(v).unwrap();
        assert_eq!(back, msgs);
    }

    #[test]
    fn tokens_then_done() {
        let (events, result) = parse(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":" there"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"total_tokens":3}}"#,
            "[DONE]",
        ]);
        result.unwrap();
        assert_eq!(
            events,
            vec![
                LlmEvent::Token("Hi".into()),
                LlmEvent::Token(" there".into()),
                LlmEvent::Done { finish_reason: Some("stop".into()) }
            ]
        );
    }

    #[test]
    fn interleaved_tool_calls_assemble_by_index() {
        let (events, result) = parse(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"g","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{\"x\""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]);
        result.unwrap();
        assert_eq!(
            events,
            vec![
                LlmEvent::ToolCall { id: "a".into(), name: "f".into(), arguments_json: r#"{"x":1}"#.into() },
                LlmEvent::ToolCall { id: "b".into(), name: "g".into(), arguments_json: "{}".into() },
                LlmEvent::Done { finish_reason: Some("tool_calls".into()) },
            ]
        );
    }

    #[test]
    fn truncated_and_garbled_streams_fail() {
        let (_, result) = parse(&[r#"{"choices":[{"delta":{"content":"Hi"}}]}"#]);
        assert!(matches!(result, Err(ProviderError::Malformed(_))), "{result:?}");
        let (_, result) = parse(&["<html>"]);
        assert!(matches!(result, Err(ProviderError::Malformed(_))), "{result:?}");
        let (_, result) = parse(&[r#"{"error":{"message":"overloaded"}}"#]);
        assert!(matches!(result, Err(ProviderError::Malformed(m)) if m.contains("overloaded")));
    }
}
