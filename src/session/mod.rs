//! One device connection. [`run`] takes the upgraded socket through the handshake
//! (`handshake`), then the turn-taking state machine (`machine`) reads it while a writer task
//! (`downlink`) owns the socket's sink and paces reply audio. Each reply runs as its own task
//! (`reply`) so the reader keeps listening (for `abort`, barge-in and the next turn) while the
//! device is spoken to.
//!
//! A session sees the rest of the gateway only through [`SessionContext`], which it defines
//! itself: settings, metrics, the brain, a submit-only [`Recorder`] for what it hands the store,
//! the session registry and token issuing. The database, object storage and the upload pool are
//! out of its reach (`clippy::disallowed_types` denies them here), so a session never awaits
//! them. Everything a device can send has a defined outcome: ignored with a log line, answered,
//! or a close with a code.

#![deny(clippy::disallowed_types)]

pub(crate) mod downlink;
mod end;
mod handshake;
mod machine;
pub(crate) mod mcp;
mod open;
pub(crate) mod record;
pub mod registry;
mod reply;
pub(crate) mod turn;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use firmware_protocol::frame::ProtocolVersion;
use futures_util::{Sink, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::config::{ClipFileFormat, SessionSettings};
use crate::conversation::Pipeline;
use crate::devices::DeviceRegistry;
use crate::store::model::StoreOp;
use crate::store::writer::StoreWriter;
use crate::telemetry::metrics::Metrics;
use registry::SessionRegistry;

pub use mcp::MAX_TOOLS as MAX_DEVICE_TOOLS;

/// Close codes the gateway uses.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// A newer connection from the same device took over.
    pub const REPLACED: u16 = 4000;
}

/// The downlink frame duration the gateway announces and paces by.
pub const DOWNLINK_FRAME_MS: u32 = 60;
/// How long to wait for the writer to flush a Close before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Where a session hands what it has to keep (devices seen, sessions, turns). Submitting never
/// waits: the store writer queues, or spills to disk.
pub trait Recorder: Send + Sync {
    fn submit(&self, op: StoreOp);
}

impl Recorder for StoreWriter {
    fn submit(&self, op: StoreOp) {
        StoreWriter::submit(self, op)
    }
}

/// Everything a session may use of the rest of the gateway, shared by all sessions.
pub struct SessionContext {
    pub settings: SessionSettings,
    /// The bucket clip rows name.
    pub bucket: Arc<str>,
    /// How clips are kept (Ogg-Opus or WAV).
    pub clip_format: ClipFileFormat,
    pub metrics: Arc<Metrics>,
    /// The conversation brain.
    pub pipeline: Arc<dyn Pipeline>,
    /// The store writer's submit side.
    pub recorder: Arc<dyn Recorder>,
    /// Live sessions: a session registers itself and takes commands through it.
    pub sessions: Arc<SessionRegistry>,
    /// What is known about devices (a session reports its device as seen).
    pub devices: Arc<DeviceRegistry>,
    /// Turns per device per minute and per day: a turn over the quota is answered with a notice.
    pub turns: Arc<crate::limits::TurnQuota>,
    /// Issues the camera upload token bound to a session.
    pub auth: Arc<Authenticator>,
    /// Cancelled when the gateway starts draining: sessions finish the turn in progress and
    /// close with 1001.
    pub draining: CancellationToken,
    /// Cancelled when the process shuts down for good; sessions close with 1001 at once.
    pub shutdown: CancellationToken,
}

/// What the upgrade handler learned about the connection.
pub struct Connection {
    pub ctx: Arc<SessionContext>,
    pub device_id: String,
    pub client_id: Option<String>,
    pub session_id: String,
    /// From the `Protocol-Version` header, when the client sent one.
    pub header_version: Option<ProtocolVersion>,
    /// Held for the session's lifetime: the connection limit.
    pub permit: OwnedSemaphorePermit,
    /// Where this device uploads camera images (when a vision model is configured).
    pub vision_url: Option<String>,
}

/// Runs a session on an upgraded WebSocket to its end. Never panics on anything the peer sends.
pub async fn run(socket: WebSocket, conn: Connection) {
    let (sink, stream) = socket.split();
    run_on(stream, sink, conn).await
}

/// Runs a session over any stream and sink of WebSocket messages (a socket, or channels).
pub(crate) async fn run_on<St, Si>(stream: St, sink: Si, conn: Connection)
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
    Si: Sink<Message> + Unpin + Send + 'static,
{
    let span = tracing::info_span!("session", device_id = %conn.device_id, session_id = %conn.session_id);
    async move {
        let _connection = GaugeGuard::new(&conn.ctx.metrics.connections);
        let mut stream = stream;
        let Some((hello, sink)) = handshake::greet(&mut stream, sink, &conn).await else { return };
        open::serve(stream, sink, conn, hello).await
    }
    .instrument(span)
    .await
}

/// Decrements a gauge when dropped (however the session ends).
struct GaugeGuard(metrics::Gauge);

impl GaugeGuard {
    fn new(g: &metrics::Gauge) -> Self {
        g.increment(1.0);
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
