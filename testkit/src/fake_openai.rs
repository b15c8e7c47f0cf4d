//! An in-process fake of an OpenAI-compatible API for tests: `/v1/audio/transcriptions`,
//! `/v1/chat/completions`, `/v1/audio/speech` and `/v1/embeddings` on 127.0.0.1 at a random
//! port.
//!
//! Scripting: each endpoint has a queue of one-shot scripts (`push_*`), consumed one per
//! request in order, and a fallback used when the queue is empty (`set_*` for a fixed script,
//! `set_*_with` for one computed from the request). The initial fallbacks answer sensibly
//! (a transcript, a short reply, half a second of tone), so a test scripts only what it
//! checks.
//!
//! Observation: every request is recorded ([`RecordedRequest`]: path, headers, body, parsed
//! JSON or multipart fields), and every streamed response body ([`StreamRecord`]) says how it
//! ended: sent to the end, aborted by its script, or cancelled because the client went away
//! (a drop guard on the body; hyper notices a closed connection within milliseconds, even
//! during a scripted pause). [`FakeOpenAi::stream_end`] waits for a stream's end.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};

/// The sample rate of `response_format: "pcm"` speech.
pub const PCM_RATE: u32 = 24_000;

/// A running fake server; stops when dropped.
pub struct FakeOpenAi {
    addr: SocketAddr,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// What `/v1/audio/transcriptions` does for one request.
#[derive(Debug, Clone)]
pub enum AsrScript {
    /// `200 {"text": ...}`.
    Text(String),
    /// `200` with this body as `application/json`, verbatim (for malformed answers).
    Raw(String),
    /// This status with this body.
    Status(u16, String),
    /// Never answers (the client must time out).
    Hang,
    /// Waits, then does the inner script.
    Delayed(Duration, Box<AsrScript>),
}

impl AsrScript {
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    pub fn after(self, delay: Duration) -> Self {
        Self::Delayed(delay, Box::new(self))
    }
}

/// What `/v1/chat/completions` does for one request.
#[derive(Debug, Clone)]
pub enum ChatScript {
    /// `200 text/event-stream`, written step by step.
    Stream(Vec<SseStep>),
    /// `200` with this JSON body (a non-streaming answer).
    Json(Value),
    /// This status with this body.
    Status(u16, String),
    /// Never answers (no response head).
    Hang,
    /// Waits, then does the inner script.
    Delayed(Duration, Box<ChatScript>),
}

/// One step of a scripted event stream.
#[derive(Debug, Clone)]
pub enum SseStep {
    /// `data: <json>\n\n`.
    Json(Value),
    /// `data: <text>\n\n` (for malformed payloads).
    Data(String),
    /// These bytes exactly (comments, broken framing).
    Bytes(String),
    /// `data: [DONE]\n\n`.
    Done,
    /// Waits before the next step.
    Delay(Duration),
    /// Breaks the connection (the body fails mid-stream), 50 ms after the previous step so
    /// that what came before reaches the client.
    Abort,
}

/// A `chat.completion.chunk` with one choice.
fn chunk(delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })
}

impl SseStep {
    /// The assistant role announcement that opens a completion.
    pub fn role() -> Self {
        Self::Json(chunk(json!({"role": "assistant", "content": ""}), None))
    }

    /// A content token.
    pub fn content(text: &str) -> Self {
        Self::Json(chunk(json!({"content": text}), None))
    }

    /// The first fragment of tool call `index`: its id and name, no arguments yet.
    pub fn tool_call_start(index: u32, id: &str, name: &str) -> Self {
        Self::Json(chunk(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                    "function": {"name": name, "arguments": ""}}]}),
            None,
        ))
    }

    /// A further fragment of tool call `index`'s arguments.
    pub fn tool_args(index: u32, fragment: &str) -> Self {
        Self::Json(chunk(
            json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
            None,
        ))
    }

    /// The chunk that carries the finish reason (`stop`, `tool_calls`, `length`).
    pub fn finish(reason: &str) -> Self {
        Self::Json(chunk(json!({}), Some(reason)))
    }

    fn bytes(&self) -> Bytes {
        match self {
            Self::Json(v) => Bytes::from(format!("data: {v}\n\n")),
            Self::Data(s) => Bytes::from(format!("data: {s}\n\n")),
            Self::Bytes(s) => Bytes::from(s.clone()),
            Self::Done => Bytes::from_static(b"data: [DONE]\n\n"),
            Self::Delay(_) | Self::Abort => Bytes::new(),
        }
    }
}

impl ChatScript {
    /// A complete answer: role, one chunk per token, `finish_reason: stop`, `[DONE]`.
    pub fn reply(tokens: &[&str]) -> Self {
        Self::reply_paced(tokens, Duration::ZERO)
    }

    /// [`ChatScript::reply`] with `gap` before each token.
    pub fn reply_paced(tokens: &[&str], gap: Duration) -> Self {
        let mut steps = vec![SseStep::role()];
        for t in tokens {
            if !gap.is_zero() {
                steps.push(SseStep::Delay(gap));
            }
            steps.push(SseStep::content(t));
        }
        steps.extend([SseStep::finish("stop"), SseStep::Done]);
        Self::Stream(steps)
    }

    /// An answer that calls tools: for each `(id, name, argument fragments)` a start chunk and
    /// one chunk per fragment, then `finish_reason: tool_calls` and `[DONE]`.
    pub fn tool_calls(calls: &[(&str, &str, &[&str])]) -> Self {
        let mut steps = vec![SseStep::role()];
        for (index, (id, name, fragments)) in calls.iter().enumerate() {
            steps.push(SseStep::tool_call_start(index as u32, id, name));
            steps.extend(fragments.iter().map(|f| SseStep::tool_args(index as u32, f)));
        }
        steps.extend([SseStep::finish("tool_calls"), SseStep::Done]);
        Self::Stream(steps)
    }

    pub fn after(self, delay: Duration) -> Self {
        Self::Delayed(delay, Box::new(self))
    }
}

/// What `/v1/audio/speech` does for one request.
#[derive(Debug, Clone)]
pub enum SpeechScript {
    /// `200` with this body; with `chunks`, written `size` bytes at a time with `gap` between.
    Audio { content_type: String, body: Bytes, chunks: Option<(usize, Duration)> },
    /// This status with this body.
    Status(u16, String),
    /// Never answers.
    Hang,
    /// Waits, then does the inner script.
    Delayed(Duration, Box<SpeechScript>),
}

/// `ms` milliseconds of a sine tone at half scale.
pub fn sine(rate: u32, freq: f32, ms: u32) -> Vec<i16> {
    let n = (u64::from(rate) * u64::from(ms) / 1000) as usize;
    (0..n)
        .map(|i| ((2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin() * 16_000.0) as i16)
        .collect()
}

/// A mono 16-bit WAV file.
pub fn wav(rate: u32, samples: &[i16]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).expect("wav header");
    for &s in samples {
        w.write_sample(s).expect("wav sample");
    }
    w.finalize().expect("wav finalize");
    out.into_inner()
}

impl SpeechScript {
    /// Raw 16-bit little-endian PCM (`audio/pcm`).
    pub fn pcm(samples: &[i16]) -> Self {
        let body: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        Self::Audio { content_type: "audio/pcm".into(), body: body.into(), chunks: None }
    }

    /// `ms` of a tone as 24 kHz PCM.
    pub fn sine_pcm(freq: f32, ms: u32) -> Self {
        Self::pcm(&sine(PCM_RATE, freq, ms))
    }

    /// `ms` of silence as 24 kHz PCM.
    pub fn silence_pcm(ms: u32) -> Self {
        Self::pcm(&vec![0; (PCM_RATE * ms / 1000) as usize])
    }

    /// A WAV file at `rate`.
    pub fn wav(rate: u32, samples: &[i16]) -> Self {
        Self::Audio { content_type: "audio/wav".into(), body: wav(rate, samples).into(), chunks: None }
    }

    /// `ms` of a tone as a WAV file at `rate`.
    pub fn sine_wav(rate: u32, freq: f32, ms: u32) -> Self {
        Self::wav(rate, &sine(rate, freq, ms))
    }

    /// Anything, with any content type.
    pub fn garbage(content_type: &str, body: impl Into<Bytes>) -> Self {
        Self::Audio { content_type: content_type.into(), body: body.into(), chunks: None }
    }

    /// Sends the body `size` bytes at a time with `gap` before each piece after the first.
    pub fn chunked(self, size: usize, gap: Duration) -> Self {
        match self {
            Self::Audio { content_type, body, .. } => {
                Self::Audio { content_type, body, chunks: Some((size.max(1), gap)) }
            }
            other => other,
        }
    }

    pub fn after(self, delay: Duration) -> Self {
        Self::Delayed(delay, Box::new(self))
    }
}

/// One field of a `multipart/form-data` request.
#[derive(Debug, Clone)]
pub struct MultipartField {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: Bytes,
}

impl MultipartField {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Names in lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The fields of a multipart body (empty otherwise).
    pub multipart: Vec<MultipartField>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The key of `Authorization: Bearer KEY`.
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")?.strip_prefix("Bearer ")
    }

    pub fn field(&self, name: &str) -> Option<&MultipartField> {
        self.multipart.iter().find(|f| f.name == name)
    }

    pub fn field_names(&self) -> Vec<&str> {
        self.multipart.iter().map(|f| f.name.as_str()).collect()
    }

    /// `json[key]`, or `Null`.
    pub fn json_field(&self, key: &str) -> &Value {
        self.json.as_ref().and_then(|j| j.get(key)).unwrap_or(&Value::Null)
    }
}

/// How a streamed response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Every step was written.
    Completed,
    /// The script broke the connection ([`SseStep::Abort`]).
    Aborted,
    /// The client went away before the end.
    Cancelled,
}

/// One streamed response body (chat completions, chunked speech).
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub path: String,
    /// Non-empty pieces written so far.
    pub chunks_sent: usize,
    /// `None` while the body is still being written.
    pub end: Option<StreamEnd>,
}

type Responder<T> = Arc<dyn Fn(&RecordedRequest) -> T + Send + Sync>;

/// One endpoint's scripts.
struct Script<T> {
    queue: VecDeque<T>,
    fallback: Responder<T>,
}

impl<T: Clone + Send + Sync + 'static> Script<T> {
    fn fixed(script: T) -> Self {
        Self { queue: VecDeque::new(), fallback: Arc::new(move |_| script.clone()) }
    }

    fn next(&mut self, req: &RecordedRequest) -> T {
        match self.queue.pop_front() {
            Some(s) => s,
            None => (self.fallback)(req),
        }
    }
}

struct FakeState {
    asr: Mutex<Script<AsrScript>>,
    chat: Mutex<Script<ChatScript>>,
    speech: Mutex<Script<SpeechScript>>,
    requests: Mutex<Vec<RecordedRequest>>,
    streams: Mutex<Vec<StreamRecord>>,
    /// Statuses `/v1/embeddings` answers before it answers with vectors again.
    embedding_failures: Mutex<VecDeque<u16>>,
}

/// Long enough to outlast any test.
const FOREVER: Duration = Duration::from_secs(3600);

impl FakeOpenAi {
    /// Starts the server with the default fallbacks.
    pub async fn start() -> Self {
        let state = Arc::new(FakeState {
            asr: Mutex::new(Script::fixed(AsrScript::text("你好"))),
            chat: Mutex::new(Script::fixed(ChatScript::reply(&["Hello", "!", " How can I help", "?"]))),
            speech: Mutex::new(Script::fixed(SpeechScript::sine_pcm(440.0, 500))),
            requests: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
            embedding_failures: Mutex::new(VecDeque::new()),
        });
        let app = Router::new()
            .route("/v1/audio/transcriptions", post(transcriptions))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/audio/speech", post(speech))
            .route("/v1/embeddings", post(embeddings))
            .fallback(unknown)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API root to configure providers with: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The next transcription request gets `script` (after those queued before).
    pub fn push_transcription(&self, script: AsrScript) {
        self.state.asr.lock().unwrap().queue.push_back(script);
    }

    /// Transcription requests with nothing queued get `script`.
    pub fn set_transcription(&self, script: AsrScript) {
        *self.state.asr.lock().unwrap() = Script::fixed(script);
    }

    /// Transcription requests with nothing queued get what `f` makes of the request.
    pub fn set_transcription_with(&self, f: impl Fn(&RecordedRequest) -> AsrScript + Send + Sync + 'static) {
        self.state.asr.lock().unwrap().fallback = Arc::new(f);
    }

    pub fn push_chat(&self, script: ChatScript) {
        self.state.chat.lock().unwrap().queue.push_back(script);
    }

    pub fn set_chat(&self, script: ChatScript) {
        *self.state.chat.lock().unwrap() = Script::fixed(script);
    }

    pub fn set_chat_with(&self, f: impl Fn(&RecordedRequest) -> ChatScript + Send + Sync + 'static) {
        self.state.chat.lock().unwrap().fallback = Arc::new(f);
    }

    /// The next `/v1/embeddings` request answers this status (an OpenAI-style error body).
    pub fn push_embeddings_failure(&self, status: u16) {
        self.state.embedding_failures.lock().unwrap().push_back(status);
    }

    pub fn push_speech(&self, script: SpeechScript) {
        self.state.speech.lock().unwrap().queue.push_back(script);
    }

    pub fn set_speech(&self, script: SpeechScript) {
        *self.state.speech.lock().unwrap() = Script::fixed(script);
    }

    pub fn set_speech_with(&self, f: impl Fn(&RecordedRequest) -> SpeechScript + Send + Sync + 'static) {
        self.state.speech.lock().unwrap().fallback = Arc::new(f);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The requests whose path ends with `suffix` (e.g. `chat/completions`).
    pub fn requests_to(&self, suffix: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.path.ends_with(suffix)).collect()
    }

    /// The last request whose path ends with `suffix`.
    pub fn last_request(&self, suffix: &str) -> Option<RecordedRequest> {
        self.requests_to(suffix).pop()
    }

    /// Every streamed body so far, in the order they started.
    pub fn streams(&self) -> Vec<StreamRecord> {
        self.state.streams.lock().unwrap().clone()
    }

    /// Waits until streamed body `index` has ended (or `within` passes); returns how it ended.
    pub async fn stream_end(&self, index: usize, within: Duration) -> Option<StreamEnd> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let end = self.state.streams.lock().unwrap().get(index).and_then(|s| s.end);
            if end.is_some() || tokio::time::Instant::now() >= deadline {
                return end;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Reads and records a request.
async fn record(state: &FakeState, req: Request) -> RecordedRequest {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers = header_list(req.headers());
    let body = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024).await.unwrap_or_default();
    let content_type =
        headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.clone()).unwrap_or_default();
    let json =
        if content_type.starts_with("application/json") { serde_json::from_slice(&body).ok() } else { None };
    let multipart = boundary(&content_type).map(|b| parse_multipart(&body, &b)).unwrap_or_default();
    let recorded = RecordedRequest { method, path, headers, body, json, multipart };
    state.requests.lock().unwrap().push(recorded.clone());
    recorded
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

fn boundary(content_type: &str) -> Option<String> {
    if !content_type.starts_with("multipart/form-data") {
        return None;
    }
    content_type.split(';').find_map(|p| {
        let value = p.trim().strip_prefix("boundary=")?;
        Some(value.trim_matches('"').to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() {
        return None;
    }
    haystack[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// A small `multipart/form-data` reader (RFC 7578): enough for what HTTP clients send.
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<MultipartField> {
    let delimiter = format!("--{boundary}");
    let mut fields = Vec::new();
    let Some(mut pos) = find(body, delimiter.as_bytes(), 0) else { return fields };
    loop {
        pos += delimiter.len();
        if body[pos..].starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(body, b"\r\n\r\n", pos) else { break };
        let head = String::from_utf8_lossy(&body[pos..head_end]).into_owned();
        let data_start = head_end + 4;
        let Some(next) = find(body, format!("\r\n{delimiter}").as_bytes(), data_start) else { break };
        let mut field =
            MultipartField { name: String::new(), filename: None, content_type: None, data: Bytes::new() };
        for line in head.lines() {
            let Some((name, value)) = line.split_once(':') else { continue };
            match name.trim().to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    for param in value.split(';').skip(1) {
                        if let Some((k, v)) = param.trim().split_once('=') {
                            let v = v.trim_matches('"').to_owned();
                            match k {
                                "name" => field.name = v,
                                "filename" => field.filename = Some(v),
                                _ => {}
                            }
                        }
                    }
                }
                "content-type" => field.content_type = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        field.data = Bytes::copy_from_slice(&body[data_start..next]);
        fields.push(field);
        pos = next + 2;
    }
    fields
}

fn status_response(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if body.trim_start().starts_with('{') { "application/json" } else { "text/plain" };
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn transcriptions(State(state): State<Arc<FakeState>>, req: Request) -> Response {
    let recorded = record(&state, req).await;
    let mut script = state.asr.lock().unwrap().next(&recorded);
    loop {
        return match script {
            AsrScript::Text(text) => axum::Json(json!({ "text": text })).into_response(),
            AsrScript::Raw(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            AsrScript::Status(code, body) => status_response(code, body),
            AsrScript::Hang => {
                tokio::time::sleep(FOREVER).await;
                StatusCode::GATEWAY_TIMEOUT.into_response()
            }
            AsrScript::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                script = *inner;
                continue;
            }
        };
    }
}

async fn chat_completions(State(state): State<Arc<FakeState>>, req: Request) -> Response {
    let recorded = record(&state, req).await;
    let mut script = state.chat.lock().unwrap().next(&recorded);
    loop {
        return match script {
            ChatScript::Stream(steps) => {
                let body = scripted_body(&state, &recorded.path, steps.into());
                ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], body)
                    .into_response()
            }
            ChatScript::Json(v) => axum::Json(v).into_response(),
            ChatScript::Status(code, body) => status_response(code, body),
            ChatScript::Hang => {
                tokio::time::sleep(FOREVER).await;
                StatusCode::GATEWAY_TIMEOUT.into_response()
            }
            ChatScript::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                script = *inner;
                continue;
            }
        };
    }
}

async fn speech(State(state): State<Arc<FakeState>>, req: Request) -> Response {
    let recorded = record(&state, req).await;
    let mut script = state.speech.lock().unwrap().next(&recorded);
    loop {
        return match script {
            SpeechScript::Audio { content_type, body, chunks: None } => {
                ([(header::CONTENT_TYPE, content_type)], body).into_response()
            }
            SpeechScript::Audio { content_type, body, chunks: Some((size, gap)) } => {
                let mut steps = VecDeque::new();
                for (i, piece) in body.chunks(size).enumerate() {
                    if i > 0 {
                        steps.push_back(BodyStep::Delay(gap));
                    }
                    steps.push_back(BodyStep::Bytes(body.slice_ref(piece)));
                }
                let body = scripted_body(&state, &recorded.path, steps);
                ([(header::CONTENT_TYPE, content_type)], body).into_response()
            }
            SpeechScript::Status(code, body) => status_response(code, body),
            SpeechScript::Hang => {
                tokio::time::sleep(FOREVER).await;
                StatusCode::GATEWAY_TIMEOUT.into_response()
            }
            SpeechScript::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                script = *inner;
                continue;
            }
        };
    }
}

/// Dimensions of the fake embeddings.
pub const EMBEDDING_DIMS: usize = 64;

/// The fake's embedding of a text: each character (lower-cased) counted into one of
/// [`EMBEDDING_DIMS`] buckets by a hash, then normalized. Texts that share characters point
/// the same way, which is all a test of ranking by cosine similarity needs.
pub fn fake_embedding(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; EMBEDDING_DIMS];
    for c in
        text.chars().flat_map(char::to_lowercase).filter(|c| !c.is_whitespace() && !c.is_ascii_punctuation())
    {
        let mut h: u32 = 2_166_136_261;
        for b in c.to_string().bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
        }
        v[h as usize % EMBEDDING_DIMS] += 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// `POST /v1/embeddings` (`input`: a string or an array of strings).
async fn embeddings(State(state): State<Arc<FakeState>>, req: Request) -> Response {
    let recorded = record(&state, req).await;
    if let Some(status) = state.embedding_failures.lock().unwrap().pop_front() {
        return status_response(status, "{\"error\":{\"message\":\"scripted failure\"}}".into());
    }
    let Some(body) = recorded.json.as_ref() else {
        return status_response(400, "{\"error\":{\"message\":\"expected JSON\"}}".into());
    };
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => return status_response(400, "{\"error\":{\"message\":\"input must be text\"}}".into()),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": fake_embedding(text)}))
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }))
    .into_response()
}

async fn unknown(State(state): State<Arc<FakeState>>, req: Request) -> Response {
    let recorded = record(&state, req).await;
    status_response(404, format!("{{\"error\":{{\"message\":\"no route {}\"}}}}", recorded.path))
}

impl From<SseStep> for BodyStep {
    fn from(s: SseStep) -> Self {
        match s {
            SseStep::Delay(d) => BodyStep::Delay(d),
            SseStep::Abort => BodyStep::Abort,
            other => BodyStep::Bytes(other.bytes()),
        }
    }
}

/// What a streamed body does next (SSE steps and audio pieces alike).
enum BodyStep {
    Bytes(Bytes),
    Delay(Duration),
    Abort,
}

/// Marks its stream record when the body is dropped: cancelled unless it ended first.
struct StreamGuard {
    state: Arc<FakeState>,
    index: usize,
    end: Option<StreamEnd>,
}

impl StreamGuard {
    fn sent(&self) {
        self.state.streams.lock().unwrap()[self.index].chunks_sent += 1;
    }

    /// How the stream ends, recorded when the body is dropped.
    fn ended(&mut self, end: StreamEnd) {
        self.end = Some(end);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let end = self.end.unwrap_or(StreamEnd::Cancelled);
        self.state.streams.lock().unwrap()[self.index].end = Some(end);
    }
}

/// A response body that plays `steps`, recorded in the state's stream list.
fn scripted_body<S: Into<BodyStep>>(state: &Arc<FakeState>, path: &str, steps: VecDeque<S>) -> Body {
    let steps: VecDeque<BodyStep> = steps.into_iter().map(Into::into).collect();
    let index = {
        let mut streams = state.streams.lock().unwrap();
        streams.push(StreamRecord { path: path.to_owned(), chunks_sent: 0, end: None });
        streams.len() - 1
    };
    let guard = StreamGuard { state: state.clone(), index, end: None };
    let stream = futures_util::stream::unfold((steps, guard), |(mut steps, mut guard)| async move {
        loop {
            match steps.pop_front() {
                None => {
                    guard.ended(StreamEnd::Completed);
                    return None;
                }
                Some(BodyStep::Delay(d)) => tokio::time::sleep(d).await,
                Some(BodyStep::Bytes(b)) if b.is_empty() => {}
                Some(BodyStep::Bytes(b)) => {
                    guard.sent();
                    return Some((Ok(b), (steps, guard)));
                }
                Some(BodyStep::Abort) => {
                    // Let the server flush what was written, so the client sees it before the
                    // connection breaks.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    guard.ended(StreamEnd::Aborted);
                    let err = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "scripted abort");
                    return Some((Err(err), (VecDeque::new(), guard)));
                }
            }
        }
    });
    Body::from_stream(stream)
}
