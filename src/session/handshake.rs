//! The first exchange of a session: wait (bounded) for the device's hello, settle the binary
//! protocol version and the downlink rate, and answer with the server hello. Anything before
//! the hello is logged and ignored; a peer that breaks a limit is closed with a code.

use axum::extract::ws::{CloseFrame, Message};
use firmware_protocol::frame::ProtocolVersion;
use firmware_protocol::{AudioParams, ClientHello, ClientMessage, ServerHello, ServerMessage};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::end::{End, read_error};
use super::{CLOSE_GRACE, Connection, DOWNLINK_FRAME_MS, close};
use crate::telemetry::metrics::Handshake;

/// What the handshake settled.
pub(super) struct Greeted {
    pub hello: ClientHello,
    pub version: ProtocolVersion,
    /// The sample rate announced in the server hello.
    pub downlink_rate: u32,
}

/// The server hello for a session.
pub(super) fn server_hello(session_id: &str, downlink_rate: u32, version: ProtocolVersion) -> ServerMessage {
    ServerMessage::Hello(ServerHello {
        transport: "websocket".into(),
        session_id: session_id.to_owned(),
        audio_params: AudioParams::opus(downlink_rate, DOWNLINK_FRAME_MS),
        version: Some(version.number()),
    })
}

/// Runs the handshake; `None` when the session ended in it (the peer was told why, if it
/// could be).
pub(super) async fn greet<St, Si>(stream: &mut St, mut sink: Si, conn: &Connection) -> Option<(Greeted, Si)>
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
    Si: Sink<Message> + Unpin,
{
    let ctx = &conn.ctx;
    let close_with =
        |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    let waited = tokio::select! {
        w = timeout(ctx.settings.hello_timeout(), wait_for_hello(stream)) => w,
        _ = ctx.shutdown.cancelled() => {
            close_now(&mut sink, close_with(close::GOING_AWAY, "server shutting down")).await;
            return None;
        }
    };
    let hello = match waited {
        Ok(BeforeHello::Hello(hello)) => hello,
        Ok(BeforeHello::Gone) => {
            info!("connection ended before hello");
            ctx.metrics.handshake(Handshake::Dropped);
            return None;
        }
        Ok(BeforeHello::PeerClosed) => {
            info!("connection closed before hello");
            ctx.metrics.handshake(Handshake::Dropped);
            // The socket answers a received Close with the same code; sending ours flushes it.
            close_now(&mut sink, close_with(close::NORMAL, "")).await;
            return None;
        }
        Ok(BeforeHello::Closing(code, reason)) => {
            warn!(code, reason, "closing before hello");
            ctx.metrics.handshake(Handshake::BadRequest);
            close_now(&mut sink, close_with(code, reason)).await;
            return None;
        }
        Err(_) => {
            warn!("no hello within {:?}; closing", ctx.settings.hello_timeout());
            ctx.metrics.handshake(Handshake::HelloTimeout);
            close_now(&mut sink, close_with(close::POLICY, "hello timeout")).await;
            return None;
        }
    };

    let version = match conn.header_version {
        Some(v) => Ok(v),
        None => ProtocolVersion::from_number(hello.version.unwrap_or(1)),
    };
    let version = match version {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "unsupported protocol version in hello; closing");
            ctx.metrics.handshake(Handshake::BadRequest);
            close_now(&mut sink, close_with(close::PROTOCOL_ERROR, "unsupported protocol version")).await;
            return None;
        }
    };
    let downlink_rate = ctx
        .pipeline
        .downlink_rate(ctx.settings.downlink_sample_rate, hello.audio_params.as_ref().map(|p| p.sample_rate));
    let reply = server_hello(&conn.session_id, downlink_rate, version);
    if sink.send(Message::Text(reply.to_json().into())).await.is_err() {
        info!("connection ended during hello");
        ctx.metrics.handshake(Handshake::Dropped);
        return None;
    }
    ctx.metrics.handshake(Handshake::Ok);
    Some((Greeted { hello, version, downlink_rate }, sink))
}

/// Sends a Close frame and flushes, so that it also goes out when the socket refuses to send
/// (after the peer's own Close it answers with the peer's code, queued until a flush).
async fn close_now<Si: Sink<Message> + Unpin>(sink: &mut Si, msg: Message) {
    let _ = timeout(CLOSE_GRACE, async {
        let _ = sink.send(msg).await;
        let _ = sink.flush().await;
    })
    .await;
}

/// How the wait for a hello ended.
enum BeforeHello {
    Hello(ClientHello),
    /// The peer dropped the connection.
    Gone,
    /// The peer sent a Close frame (answered with ours).
    PeerClosed,
    /// The peer broke a limit: close with this code.
    Closing(u16, &'static str),
}

/// Reads until a hello arrives; anything before it is logged and ignored.
async fn wait_for_hello<St>(stream: &mut St) -> BeforeHello
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Text(text)) => match ClientMessage::parse(&text) {
                Ok(ClientMessage::Hello(h)) => return BeforeHello::Hello(h),
                Ok(other) => debug!(?other, "message before hello ignored"),
                Err(e) => warn!(error = %e, "malformed message before hello ignored"),
            },
            Ok(Message::Binary(b)) => debug!(len = b.len(), "audio before hello ignored"),
            Ok(Message::Close(_)) => return BeforeHello::PeerClosed,
            Err(e) => {
                return match read_error(e) {
                    End::Close(code, reason) => BeforeHello::Closing(code, reason),
                    End::PeerGone | End::PeerClosed => BeforeHello::Gone,
                };
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
        }
    }
    BeforeHello::Gone
}
