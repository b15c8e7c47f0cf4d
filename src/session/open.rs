//! What a greeted session sets up before it takes turns: its device and session rows, the
//! writer task that owns the sink, the device's MCP tools, its entry in the registry.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, info, warn};

use super::downlink::{self, Pacing};
use super::handshake::Greeted;
use super::machine::Session;
use super::mcp::McpClient;
use super::turn::TurnBuffer;
use super::{Connection, DOWNLINK_FRAME_MS, GaugeGuard};
use crate::devices::Sighting;
use crate::store::model::{DeviceSighting, SessionRecord, StoreOp};

/// Commands the writer may hold before a producer waits (a few frames of audio).
const DOWNLINK_QUEUE: usize = 8;
/// Commands a session's inbox holds.
const COMMAND_QUEUE: usize = 8;

/// Runs a greeted session to its end: registers it, starts its writer, takes turns, and
/// hands its records to the store writer.
pub(super) async fn serve<St, Si>(mut stream: St, sink: Si, conn: Connection, greeted: Greeted)
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
    Si: Sink<Message> + Unpin + Send + 'static,
{
    let ctx = conn.ctx.clone();
    let Greeted { hello, version, downlink_rate } = greeted;
    let _session_gauge = GaugeGuard::new(ctx.metrics.sessions(version.number()));
    ctx.devices
        .seen(&conn.device_id, Sighting { client_id: conn.client_id.as_deref(), ..Sighting::default() });
    let now = chrono::Utc::now();
    ctx.recorder.submit(StoreOp::DeviceSeen(DeviceSighting {
        device_id: conn.device_id.clone(),
        client_id: conn.client_id.clone(),
        board: None,
        firmware_version: None,
        seen_at: now,
    }));
    let session_record = Arc::new(SessionRecord {
        session_id: uuid::Uuid::parse_str(&conn.session_id).unwrap_or_else(|_| uuid::Uuid::new_v4()),
        device_id: conn.device_id.clone(),
        agent_id: None,
        started_at: now,
        metadata: serde_json::json!({
            "protocol_version": version.number(),
            "client_id": conn.client_id,
            "features": hello.features,
            "uplink": hello.audio_params,
        }),
    });
    ctx.recorder.submit(StoreOp::SessionStarted((*session_record).clone()));
    info!(
        protocol_version = version.number(),
        mcp = hello.has_mcp(),
        uplink = ?hello.audio_params.as_ref().map(|p| (p.sample_rate, p.frame_duration)),
        "session started"
    );

    let (tx, rx) = mpsc::channel(DOWNLINK_QUEUE);
    let (cancel_tx, cancel_rx) = watch::channel(0u64);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let session_id: Arc<str> = conn.session_id.as_str().into();
    let pacing = Pacing {
        version,
        session_id: session_id.clone(),
        metrics: ctx.metrics.clone(),
        prebuffer: Duration::from_millis(
            u64::from(ctx.settings.prebuffer_frames) * u64::from(DOWNLINK_FRAME_MS),
        ),
    };
    let writer =
        tokio::spawn(downlink::run(sink, rx, cancel_rx, events_tx.clone(), pacing).in_current_span());

    let mcp = (hello.has_mcp() && ctx.pipeline.uses_device_tools())
        .then(|| Arc::new(McpClient::new(tx.clone(), session_id.clone())));
    if let Some(client) = &mcp {
        let client = client.clone();
        // Where the camera tool uploads (set when a vision model is configured), with a token
        // bound to this session.
        let vision = conn
            .vision_url
            .clone()
            .map(|url| (url, ctx.auth.issue_vision(&conn.device_id, &conn.session_id)));
        tokio::spawn(
            async move {
                let vision = vision.as_ref().map(|(url, token)| (url.as_str(), token.as_str()));
                match client.discover(vision).await {
                    Ok(n) => info!(tools = n, "device tools discovered"),
                    Err(e) => warn!(error = %e, "device MCP discovery failed; no device tools this session"),
                }
            }
            .in_current_span(),
        );
    }
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let guard = ctx.sessions.register(&conn.device_id, &conn.session_id, commands_tx);

    let settings = &ctx.settings;
    let mut session = Session {
        device_id: conn.device_id.clone().into(),
        session_id,
        version,
        downlink_rate,
        listening: None,
        buffer: TurnBuffer::new(
            Duration::from_secs(settings.max_utterance_secs),
            settings.vad_threshold,
            settings.vad_silence(),
        ),
        reply: None,
        next_reply: 1,
        record: session_record,
        next_seq: 0,
        mcp,
        bad_audio_count: 0,
        last_activity: Instant::now(),
        tx,
        cancel_tx,
        events_tx,
        ctx: ctx.clone(),
        _permit: conn.permit,
    };
    let end = session.run(&mut stream, events_rx, commands_rx, &guard).await;
    session.finish(end, writer).await;
    drop(guard);
}
