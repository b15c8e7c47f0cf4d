//! Live sessions by device: a device that reconnects replaces its previous session, which is
//! told to close. The rest of the gateway reaches a session only through its command inbox
//! ([`SessionCommand`]), never its internals. Every running session holds a [`SessionGuard`];
//! dropping it is the completion signal that drain and the admin API wait on (the
//! shutdown-complete pattern of mini-redis), so nobody polls.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::conversation::VisionImage;

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
    /// Keep an image the device uploaded during a tool call (the camera) with that call's
    /// record. `done` answers once the session holds it.
    AttachImage { image: VisionImage, done: oneshot::Sender<Result<(), CommandError>> },
    /// Close the session now (its data is being deleted).
    Close,
}

/// How to reach one live session.
#[derive(Clone)]
pub struct SessionEntry {
    pub session_id: String,
    /// Cancelled when a newer connection from the same device takes over.
    replaced: CancellationToken,
    commands: mpsc::Sender<SessionCommand>,
    /// Cancelled when the session has ended (its guard was dropped).
    ended: CancellationToken,
}

impl SessionEntry {
    /// Hands the session a command, waiting while its inbox is full.
    pub async fn send(&self, cmd: SessionCommand) -> Result<(), CommandError> {
        self.commands.send(cmd).await.map_err(|_| CommandError::Gone)
    }

    /// Hands the session a command if its inbox has room.
    pub fn try_send(&self, cmd: SessionCommand) -> Result<(), CommandError> {
        self.commands.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommandError::Busy,
            mpsc::error::TrySendError::Closed(_) => CommandError::Gone,
        })
    }

    /// Resolves once the session has ended.
    pub async fn ended(&self) {
        self.ended.cancelled().await
    }
}

/// All live sessions of this process, one per device.
pub struct SessionRegistry {
    by_device: DashMap<String, SessionEntry>,
    /// How many sessions are running, replaced ones that are still closing included.
    running: watch::Sender<usize>,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self { by_device: DashMap::new(), running: watch::Sender::new(0) }
    }
}

/// Held by a running session. Dropping it unregisters the session and signals its end.
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    device_id: String,
    session_id: String,
    ended: CancellationToken,
    /// Cancelled when a newer connection from the same device takes over.
    pub replaced: CancellationToken,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.by_device.remove_if(&self.device_id, |_, e| e.session_id == self.session_id);
        self.registry.running.send_modify(|n| *n = n.saturating_sub(1));
        self.ended.cancel();
    }
}

impl SessionRegistry {
    /// Registers a session; the device's previous session (if any) is told to close.
    pub fn register(
        self: &Arc<Self>,
        device_id: &str,
        session_id: &str,
        commands: mpsc::Sender<SessionCommand>,
    ) -> SessionGuard {
        let entry = SessionEntry {
            session_id: session_id.to_owned(),
            replaced: CancellationToken::new(),
            commands,
            ended: CancellationToken::new(),
        };
        let guard = SessionGuard {
            registry: self.clone(),
            device_id: device_id.to_owned(),
            session_id: session_id.to_owned(),
            ended: entry.ended.clone(),
            replaced: entry.replaced.clone(),
        };
        self.running.send_modify(|n| *n += 1);
        if let Some(old) = self.by_device.insert(device_id.to_owned(), entry) {
            old.replaced.cancel();
        }
        guard
    }

    pub fn get(&self, device_id: &str) -> Option<SessionEntry> {
        self.by_device.get(device_id).map(|e| e.clone())
    }

    /// The device's session, if it is the one with `session_id`.
    pub fn get_session(&self, device_id: &str, session_id: &str) -> Option<SessionEntry> {
        self.get(device_id).filter(|e| e.session_id == session_id)
    }

    /// Live sessions: every one, or those of one device or with one session id.
    pub fn matching(&self, device_id: Option<&str>, session_id: Option<&str>) -> Vec<SessionEntry> {
        self.by_device
            .iter()
            .filter(|e| device_id.is_none_or(|d| d == e.key()))
            .filter(|e| session_id.is_none_or(|s| s == e.session_id))
            .map(|e| e.value().clone())
            .collect()
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

    /// Resolves once no session is running (replaced ones still closing count as running).
    pub async fn all_ended(&self) {
        let mut rx = self.running.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}
