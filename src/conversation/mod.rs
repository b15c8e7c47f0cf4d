//! The contract between a session and the conversation brain: what both sides speak and
//! nothing else. A session hands each finished user [`Turn`] to a [`Pipeline`] together with a
//! [`Reply`] to speak through; the brain sends the transcript, subtitles and Opus audio, and
//! the session's writer paces the audio. The device's own tools reach the brain through the
//! [`DeviceTools`] trait. This module depends on neither `session` nor `pipeline`: both depend
//! on it.

mod reply;
mod tools;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use reply::{Downlink, Reply, ReplyProgress, Speech, ToolExchange};
pub use tools::{DeviceTools, ToolError, VisionImage};

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
#[derive(Clone)]
pub struct Turn {
    pub device_id: Arc<str>,
    pub session_id: Arc<str>,
    pub input: TurnInput,
    /// The device's own tools (MCP), when it has any.
    pub tools: Option<Arc<dyn DeviceTools>>,
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

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("device_id", &self.device_id)
            .field("session_id", &self.session_id)
            .field("input", &self.input)
            .field("tools", &self.tools.is_some())
            .finish()
    }
}
