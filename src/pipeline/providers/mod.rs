//! Speech recognition, language model and speech synthesis over OpenAI-compatible HTTP APIs.
//!
//! Each provider ([`Asr`], [`Llm`], [`Tts`]) owns one `reqwest::Client` (connections are
//! reused between calls) and one [`ProviderConfig`]: base URL (`http://host:port/v1`), model,
//! optional API key (sent as `Authorization: Bearer`) and a timeout. Every failure is a
//! [`ProviderError`]; [`ProviderError::is_retryable`] tells whether trying again (or another
//! provider) may help.
//!
//! Timeouts: the whole-request timeout applies to ASR; for the LLM stream and TTS bodies the
//! timeout bounds the wait for the response head and every gap between body chunks, so a long
//! answer that keeps flowing is never cut, and a stalled one fails within one timeout.
//!
//! These are building blocks: retries, fallbacks and the conversation itself live above them.

pub mod asr;
pub mod llm;
pub mod tts;
pub mod vision;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

pub use asr::Asr;
pub use llm::{ChatMessage, Llm, LlmEvent, LlmStream, ToolCall, ToolSpec};
pub use tts::{Tts, TtsFormat};

/// Where a provider is and how to talk to it.
#[derive(Clone)]
pub struct ProviderConfig {
    /// The API root, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`; paths such
    /// as `/chat/completions` are appended to it.
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// See the module documentation for what it bounds.
    pub timeout: Duration,
}

impl ProviderConfig {
    /// A configuration without a key and with a 30 s timeout.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `base_url` joined with `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}

// The key stays out of logs.
impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with a 4xx or 5xx status; `body` holds the first 500 bytes.
    #[error("provider answered {status}: {body}")]
    Status { status: u16, body: String },
    /// No response (or no next chunk of it) within the configured timeout.
    #[error("provider timed out")]
    Timeout,
    /// The provider could not be reached, or the connection failed before a response.
    #[error("cannot reach provider: {0}")]
    Connect(String),
    /// The response was not what the API promises: bad JSON, bad SSE, a stream cut short,
    /// audio in an unexpected format.
    #[error("malformed provider response: {0}")]
    Malformed(String),
    /// The call was given up on before it finished.
    #[error("provider call cancelled")]
    Cancelled,
    /// The request could not be made as configured (bad base URL, unsupported sample rate).
    #[error("invalid provider request: {0}")]
    Invalid(String),
}

impl ProviderError {
    /// Whether the same request may succeed later or elsewhere: connection failures,
    /// timeouts, 429 and 5xx answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Malformed(_) | Self::Cancelled | Self::Invalid(_) => false,
        }
    }

    /// Maps a reqwest failure that happened before the response head arrived.
    pub(crate) fn from_send(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else if e.is_builder() {
            Self::Invalid(error_chain(&e))
        } else {
            Self::Connect(error_chain(&e))
        }
    }

    /// Maps a reqwest failure while reading a response body.
    pub(crate) fn from_body(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else {
            Self::Malformed(format!("body cut short: {}", error_chain(&e)))
        }
    }
}

/// The error and its causes on one line (reqwest's own message is often just "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// How many bytes of an error body [`ProviderError::Status`] keeps.
const ERROR_BODY_LIMIT: usize = 500;

/// Builds the client every provider uses: one per provider, so connections are reused.
pub(crate) fn http_client(cfg: &ProviderConfig) -> Result<reqwest::Client, ProviderError> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(cfg.timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ProviderError::Invalid(error_chain(&e)))
}

/// Adds the bearer key when configured.
pub(crate) fn authorize(req: reqwest::RequestBuilder, cfg: &ProviderConfig) -> reqwest::RequestBuilder {
    match &cfg.api_key {
        Some(key) => req.bearer_auth(key),
        None => req,
    }
}

/// Sends a request, waiting at most `timeout` for the response head, and turns 4xx/5xx answers
/// into [`ProviderError::Status`].
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<reqwest::Response, ProviderError> {
    let resp = tokio::time::timeout(timeout, req.send())
        .await
        .map_err(|_| ProviderError::Timeout)?
        .map_err(ProviderError::from_send)?;
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        let body = error_body(resp, timeout).await;
        return Err(ProviderError::Status { status: status.as_u16(), body });
    }
    Ok(resp)
}

/// The first [`ERROR_BODY_LIMIT`] bytes of an error answer (whatever arrives in time).
async fn error_body(resp: reqwest::Response, timeout: Duration) -> String {
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while body.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(timeout, chunks.next()).await {
            Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&body).into_owned()
}

/// Reads a whole body, waiting at most `gap` for each chunk and refusing more than `limit`
/// bytes.
pub(crate) async fn read_body(
    resp: reqwest::Response,
    gap: Duration,
    limit: usize,
) -> Result<Bytes, ProviderError> {
    let mut chunks = resp.bytes_stream();
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout(gap, chunks.next()).await {
            Err(_) => return Err(ProviderError::Timeout),
            Ok(None) => return Ok(Bytes::from(body)),
            Ok(Some(Err(e))) => return Err(ProviderError::from_body(e)),
            Ok(Some(Ok(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(ProviderError::Malformed(format!("response larger than {limit} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// Maps a failed `spawn_blocking` join.
pub(crate) fn join_error(e: tokio::task::JoinError) -> ProviderError {
    if e.is_cancelled() {
        ProviderError::Cancelled
    } else {
        ProviderError::Malformed(format!("audio processing panicked: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors() {
        assert!(ProviderError::Timeout.is_retryable());
        assert!(ProviderError::Connect("refused".into()).is_retryable());
        assert!(ProviderError::Status { status: 429, body: String::new() }.is_retryable());
        assert!(ProviderError::Status { status: 503, body: String::new() }.is_retryable());
        assert!(!ProviderError::Status { status: 400, body: String::new() }.is_retryable());
        assert!(!ProviderError::Status { status: 401, body: String::new() }.is_retryable());
        assert!(!ProviderError::Malformed("x".into()).is_retryable());
        assert!(!ProviderError::Cancelled.is_retryable());
    }

    #[test]
    fn urls_join_and_keys_stay_hidden() {
        let cfg = ProviderConfig::new("http://h:1/v1/", "m").with_api_key("sk-secret");
        assert_eq!(cfg.url("/chat/completions"), "http://h:1/v1/chat/completions");
        assert!(!format!("{cfg:?}").contains("sk-secret"));
    }
}
