//! Live sessions by device: a device that reconnects replaces its previous session, which is
//! told to close. Server-initiated speech (and later device tools) reach sessions through
//! their command channel.

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Why a session would not take a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the device is in the middle of a turn")]
    Busy,
    #[error("the session has ended")]
    Gone,
}

/// What the rest of the gateway can ask a live session to do.
#[derive(Debug)]
pub enum SessionCommand {
    /// Speak `text` to the device now (`tts start`, audio, `tts stop`).
    Say { text: String, done: oneshot::Sender<Result<(), CommandError>> },
    /// Close the session now (its data is being deleted).
    Close,
}

/// How to reach one live session.
#[derive(Clone)]
pub struct SessionEntry {
    pub session_id: String,
    /// Cancelled when a newer connection from the same device takes over.
    pub replaced: CancellationToken,
    pub commands: mpsc::Sender<SessionCommand>,
    /// The session's MCP client, when the device has tools (the vision endpoint hands it the
    /// images the device uploads).
    pub mcp: Option<std::sync::Arc<super::mcp::McpClient>>,
}

/// All live sessions of this process, one per device.
#[derive(Default)]
pub struct SessionRegistry {
    by_device: DashMap<String, SessionEntry>,
}

impl SessionRegistry {
    /// Registers a session; the device's previous session (if any) is told to close.
    pub fn register(&self, device_id: &str, entry: SessionEntry) {
        if let Some(old) = self.by_device.insert(device_id.to_owned(), entry) {
            old.replaced.cancel();
        }
    }

    /// Removes the entry if it still belongs to `session_id`.
    pub fn unregister(&self, device_id: &str, session_id: &str) {
        self.by_device.remove_if(device_id, |_, e| e.session_id == session_id);
    }

    pub fn get(&self, device_id: &str) -> Option<SessionEntry> {
        self.by_device.get(device_id).map(|e| e.clone())
    }

    /// Devices with a live session.
    pub fn iter_device_ids(&self) -> Vec<String> {
        self.by_device.iter().map(|e| e.key().clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.by_device.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }
}
