//! The turn-taking state machine of one session: what each message from the device, each
//! event from the writer, each command and each timer does. Generic over the stream the
//! messages come from and the sink the writer sends to, so the rules are tested without a
//! socket (`session::tests`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use bytes::Bytes;
use firmware_protocol::frame::{self, ProtocolVersion};
use firmware_protocol::{ClientMessage, ListenMessage, ListenMode, ListenState, ServerMessage, TtsState};
use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use super::downlink::{self, WriterEvent};
use super::end::{End, read_error};
use super::handshake::server_hello;
use super::mcp::McpClient;
use super::record::{self, TurnContext};
use super::registry::{CommandError, SessionCommand, SessionGuard};
use super::reply::{self, ActiveReply};
use super::turn::{TurnBuffer, TurnEvent};
use super::{CLOSE_GRACE, SessionContext, close};
use crate::conversation::{DeviceTools, Downlink, Turn, TurnInput};
use crate::store::model::{SessionRecord, StoreOp};

/// What a device over its turn quota hears instead of an answer.
pub(super) const QUOTA_NOTICE: &str =
    "Sorry, that is all the conversation I can have for now. Please try again later.";
/// The largest uplink packet accepted: 120 ms of Opus at its highest bitrate is ~3.8 KB; the
/// browser page's three-frame CELT packets are ~2.4 KB.
const MAX_OPUS_PACKET: usize = 4000;

/// When interrupting a reply sends the device `tts stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReply {
    /// Always (the answer to an abort, even with nothing playing).
    Always,
    /// Unless the reply already played to its end (its own `tts stop` is on the way).
    IfCut,
}

/// What a draining session still waits for before it closes.
#[derive(Debug, Clone, Copy)]
enum DrainWait {
    /// Nothing was in progress.
    Nothing,
    /// The reply being spoken when draining began.
    Reply,
    /// The user was speaking: their turn's reply (reply ids from `next_reply` on).
    Utterance { next_reply: u64 },
}

pub(super) struct Session {
    pub(super) device_id: Arc<str>,
    pub(super) session_id: Arc<str>,
    pub(super) version: ProtocolVersion,
    /// The sample rate announced in the server hello.
    pub(super) downlink_rate: u32,
    /// `Some(mode)` between `listen start` and the end of the user's turn.
    pub(super) listening: Option<ListenMode>,
    pub(super) buffer: TurnBuffer,
    pub(super) reply: Option<ActiveReply>,
    pub(super) next_reply: u64,
    /// This session's row, as turns upsert it.
    pub(super) record: Arc<SessionRecord>,
    /// Sequence number of the next message.
    pub(super) next_seq: i32,
    /// The device's MCP server, when its hello announced one.
    pub(super) mcp: Option<Arc<McpClient>>,
    /// Binary messages dropped so far (only the first is logged above debug).
    pub(super) bad_audio_count: u64,
    /// Last user speech, text turn or reply: the idle timeout counts from here.
    pub(super) last_activity: Instant,
    pub(super) tx: mpsc::Sender<Downlink>,
    /// Replies with an id up to this value are cancelled (the writer drops their frames).
    pub(super) cancel_tx: watch::Sender<u64>,
    pub(super) events_tx: mpsc::UnboundedSender<WriterEvent>,
    pub(super) ctx: Arc<SessionContext>,
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Session {
    pub(super) async fn run<St>(
        &mut self,
        stream: &mut St,
        mut events: mpsc::UnboundedReceiver<WriterEvent>,
        mut commands: mpsc::Receiver<SessionCommand>,
        guard: &SessionGuard,
    ) -> End
    where
        St: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        let replaced = guard.replaced.clone();
        let idle = self.ctx.settings.idle_timeout();
        let shutdown = self.ctx.shutdown.clone();
        let draining = self.ctx.draining.clone();
        // Set once draining: what the session still waits for before it closes.
        let mut closing: Option<DrainWait> = None;
        loop {
            if closing.is_some_and(|w| self.drained(w)) {
                return End::Close(close::GOING_AWAY, "server shutting down");
            }
            let idle_deadline = self.last_activity + idle;
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(end) = self.on_text(&text).await {
                            return end;
                        }
                    }
                    Some(Ok(Message::Binary(data))) => self.on_binary(data).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        debug!(?frame, "peer closed");
                        return End::PeerClosed;
                    }
                    Some(Err(e)) => return read_error(e),
                    None => return End::PeerGone,
                },
                Some(cmd) = commands.recv() => {
                    if let SessionCommand::Close = cmd {
                        info!("closed by an operator");
                        return End::Close(close::NORMAL, "conversation deleted");
                    }
                    self.on_command(cmd)
                }
                Some(event) = events.recv() => match event {
                    WriterEvent::PlaybackDone { reply } => {
                        if self.on_playback_done(reply) {
                            info!("the assistant ended the conversation");
                            return End::Close(close::NORMAL, "conversation ended");
                        }
                    }
                    WriterEvent::SocketFailed => return End::PeerGone,
                },
                _ = sleep_until(idle_deadline), if self.reply.is_none() => {
                    info!("no speech for {idle:?}; closing");
                    return End::Close(close::NORMAL, "idle timeout");
                }
                _ = replaced.cancelled() => {
                    info!("replaced by a newer connection from the same device");
                    return End::Close(close::REPLACED, "replaced by a newer connection");
                }
                _ = draining.cancelled(), if closing.is_none() => {
                    info!("draining: closing once the turn in progress is done");
                    closing = Some(if self.reply.is_some() {
                        DrainWait::Reply
                    } else if self.turn_in_progress() {
                        DrainWait::Utterance { next_reply: self.next_reply }
                    } else {
                        DrainWait::Nothing
                    });
                }
                _ = shutdown.cancelled() => return End::Close(close::GOING_AWAY, "server shutting down"),
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<End> {
        let msg = match ClientMessage::parse(text) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "text message ignored");
                return None;
            }
        };
        match msg {
            ClientMessage::Listen(l) => self.on_listen(l).await,
            ClientMessage::Abort(a) => {
                info!(reason = a.reason.as_deref().unwrap_or("-"), "abort");
                // The device waits in Speaking for the answer to its abort, whatever we were doing.
                self.interrupt(StopReply::Always).await;
            }
            ClientMessage::Hello(_) => {
                // A repeated hello is answered again; it may not change the protocol version.
                let hello = server_hello(&self.session_id, self.downlink_rate, self.version);
                self.send_json(&hello).await;
            }
            ClientMessage::Mcp { payload, .. } => match firmware_protocol::mcp::Incoming::parse(&payload) {
                Ok(firmware_protocol::mcp::Incoming::Response(r)) => match &self.mcp {
                    Some(m) => m.on_response(r),
                    None => debug!("MCP response without an MCP session ignored"),
                },
                Ok(firmware_protocol::mcp::Incoming::Request(r)) => {
                    debug!(method = %r.method, "MCP message from the device ignored")
                }
                Err(e) => warn!(error = %e, "malformed MCP message ignored"),
            },
            ClientMessage::Iot(body) => {
                debug!(keys = ?body.keys().collect::<Vec<_>>(), "legacy IoT message")
            }
            ClientMessage::Goodbye { .. } => return Some(End::Close(close::NORMAL, "goodbye")),
        }
        None
    }

    async fn on_listen(&mut self, l: ListenMessage) {
        match l.state {
            ListenState::Start => {
                let mode = l.mode.unwrap_or_default();
                if self.reply.is_some() && mode != ListenMode::Realtime {
                    // The device is listening again, so whatever we were saying is moot.
                    self.interrupt(StopReply::IfCut).await;
                }
                debug!(?mode, "listen start");
                self.listening = Some(mode);
                self.buffer.reset();
            }
            ListenState::Stop => {
                debug!("listen stop");
                // Push-to-talk released: the turn is complete. In the other modes a stop only
                // ends a turn the user had actually started speaking.
                let complete = self.listening == Some(ListenMode::Manual) || self.buffer.speech_started();
                self.listening = None;
                if complete && !self.buffer.is_empty() {
                    self.end_voice_turn();
                } else {
                    self.buffer.reset();
                }
            }
            ListenState::Detect => {
                let text = l.text.unwrap_or_default();
                let text = text.trim();
                if text.is_empty() {
                    debug!("listen detect without text ignored");
                } else if self.is_wake_word(text) {
                    info!(wake_word = text, "wake word");
                    self.buffer.reset();
                    self.last_activity = Instant::now();
                } else {
                    info!(chars = text.chars().count(), "text turn");
                    self.buffer.reset();
                    self.start_reply(TurnInput::Text(text.to_owned())).await;
                }
            }
        }
    }

    fn on_command(&mut self, cmd: SessionCommand) {
        match cmd {
            SessionCommand::AttachImage { image, done } => {
                let result = match &self.mcp {
                    Some(m) => {
                        m.attach_image(image);
                        Ok(())
                    }
                    None => Err(CommandError::Gone),
                };
                let _ = done.send(result);
            }
            SessionCommand::Say { text, done } => {
                let result = if self.turn_in_progress() {
                    Err(CommandError::Busy)
                } else {
                    info!(chars = text.chars().count(), "server-initiated speech");
                    self.last_activity = Instant::now();
                    self.spawn_reply(TurnInput::Say(text));
                    Ok(())
                };
                let _ = done.send(result);
            }
            SessionCommand::Close => {}
        }
    }

    /// Logs a dropped binary message: the first one of the session at warn level, the rest at
    /// debug, so a misbehaving device cannot flood the logs at its frame rate.
    fn bad_audio(&mut self, why: &str) {
        self.bad_audio_count += 1;
        if self.bad_audio_count == 1 {
            warn!(reason = why, "binary message dropped (further ones this session are logged at debug)");
        } else {
            debug!(reason = why, count = self.bad_audio_count, "binary message dropped");
        }
    }

    /// Whether the turn that was in progress when draining began is over (a turn the user
    /// starts after that is not waited for).
    fn drained(&self, wait: DrainWait) -> bool {
        match wait {
            DrainWait::Nothing => true,
            DrainWait::Reply => self.reply.is_none(),
            // The utterance became a reply, which has ended; or it was abandoned.
            DrainWait::Utterance { next_reply } if self.next_reply > next_reply => self.reply.is_none(),
            DrainWait::Utterance { .. } => !self.turn_in_progress(),
        }
    }

    /// Whether the user is speaking (or holding push-to-talk) or a reply is under way.
    fn turn_in_progress(&self) -> bool {
        self.reply.is_some()
            || self.buffer.speech_started()
            || (self.listening == Some(ListenMode::Manual) && !self.buffer.is_empty())
    }

    /// Whether `text` is one of the wake words, whatever its punctuation, spacing and case
    /// (clients send `你好，小智。` as well as `你好小智`).
    fn is_wake_word(&self, text: &str) -> bool {
        let heard = spoken_form(text);
        !heard.is_empty() && self.ctx.settings.wake_words.iter().any(|w| spoken_form(w) == heard)
    }

    async fn on_binary(&mut self, data: Bytes) {
        self.ctx.metrics.frames_in.increment(1);
        self.ctx.metrics.bytes_in.increment(data.len() as u64);
        let payload = match frame::decode(self.version, &data) {
            Ok(f) if f.payload.is_empty() => {
                debug!("0-byte audio message ignored");
                return;
            }
            Ok(f) => data.slice_ref(f.payload),
            Err(e) => {
                self.bad_audio(&e.to_string());
                return;
            }
        };
        let Some(mode) = self.listening else {
            // Idle: e.g. the wake-word pre-roll burst before `listen detect`.
            return;
        };
        if payload.len() > MAX_OPUS_PACKET {
            self.bad_audio(&format!("{} bytes, larger than any real Opus packet", payload.len()));
            return;
        }
        let duration = match firmware_protocol::opus::packet_duration_us(&payload) {
            Ok(us) => Duration::from_micros(u64::from(us)),
            Err(e) => {
                debug!(error = %e, "uplink packet with unreadable TOC dropped");
                return;
            }
        };
        if self.reply.is_some() && mode != ListenMode::Realtime {
            // Half duplex: what the microphone hears while we speak is not a turn.
            return;
        }
        let event = match mode {
            ListenMode::Manual => self.buffer.push_raw(payload, duration),
            ListenMode::Auto | ListenMode::Realtime => self.buffer.push_detect(payload, duration),
        };
        match event {
            TurnEvent::None => {}
            TurnEvent::SpeechStarted => {
                self.last_activity = Instant::now();
                if self.reply.is_some() {
                    info!("barge-in: user spoke during the reply");
                    self.interrupt_keeping_audio().await;
                }
            }
            TurnEvent::Complete => {
                if mode == ListenMode::Manual {
                    warn!("push-to-talk turn reached the length cap; answering what was heard");
                }
                // Audio that arrives until the device hears `tts start` is dropped above
                // (half duplex) or, in realtime mode, may barge in.
                self.end_voice_turn();
            }
        }
    }

    /// Hands the buffered utterance to the pipeline.
    fn end_voice_turn(&mut self) {
        let utterance = self.buffer.take();
        if utterance.packets.is_empty() {
            return;
        }
        info!(
            duration_ms = utterance.duration.as_millis() as u64,
            packets = utterance.packets.len(),
            "user turn"
        );
        self.last_activity = Instant::now();
        // One reply at a time: a new turn replaces whatever was still being said.
        if let Some(r) = self.reply.take() {
            r.cancel.cancel();
            self.cancel_tx.send_replace(r.id);
        }
        self.spawn_reply(TurnInput::Voice(utterance));
    }

    async fn start_reply(&mut self, input: TurnInput) {
        if self.reply.is_some() {
            self.interrupt(StopReply::IfCut).await;
        }
        self.last_activity = Instant::now();
        self.spawn_reply(input);
    }

    fn spawn_reply(&mut self, input: TurnInput) {
        // Every user turn may cost a paid model call: over the device's quota it hears a notice.
        let input = match input {
            TurnInput::Voice(_) | TurnInput::Text(_) => match self.ctx.turns.take(&self.device_id) {
                Ok(()) => input,
                Err(e) => {
                    warn!(error = %e, "turn not answered: over the device's turn quota; the device hears a notice");
                    TurnInput::Say(QUOTA_NOTICE.to_owned())
                }
            },
            say @ TurnInput::Say(_) => say,
        };
        let id = self.next_reply;
        self.next_reply += 1;
        let record = TurnContext {
            session: self.record.clone(),
            bucket: self.ctx.bucket.clone(),
            user_seq: self.next_seq,
            heard: match &input {
                TurnInput::Voice(u) => Some(u.clone()),
                _ => None,
            },
            typed: match &input {
                TurnInput::Text(t) => Some(t.clone()),
                _ => None,
            },
            announcement: matches!(input, TurnInput::Say(_)),
            heard_at: chrono::Utc::now(),
            file_format: self.ctx.clip_format,
            seq_block: if matches!(input, TurnInput::Say(_)) {
                1
            } else if self.ctx.pipeline.uses_device_tools() {
                record::SEQ_BLOCK
            } else {
                2
            },
        };
        // A block per turn: with a tool-using brain, tool calls and their results sit between
        // the user's message and the answer (gaps are harmless; order and uniqueness matter).
        self.next_seq += record.seq_block;
        let turn = Turn {
            device_id: self.device_id.clone(),
            session_id: self.session_id.clone(),
            input,
            tools: self.mcp.clone().map(|m| m as Arc<dyn DeviceTools>),
        };
        let active = reply::spawn(&self.ctx, id, turn, record, self.tx.clone(), self.events_tx.clone());
        self.reply = Some(active);
    }

    /// Returns true when the finished reply asked to end the conversation.
    fn on_playback_done(&mut self, reply: u64) -> bool {
        if self.reply.as_ref().is_some_and(|r| r.id == reply) {
            let ended = self.reply.take().is_some_and(|r| r.ends_conversation());
            self.last_activity = Instant::now();
            if self.listening == Some(ListenMode::Manual) {
                self.listening = None;
            }
            return ended;
        }
        false
    }

    /// Stops the current reply at once (if any) and tells the device `tts stop` as `when` says.
    async fn interrupt(&mut self, when: StopReply) {
        let stopped = self.reply_already_stopped();
        self.cancel_reply();
        self.buffer.reset();
        if when == StopReply::Always || !stopped {
            self.send_json(&ServerMessage::tts(TtsState::Stop)).await;
        }
    }

    /// Barge-in: like [`Self::interrupt`] but the user's new speech stays buffered.
    async fn interrupt_keeping_audio(&mut self) {
        let stopped = self.reply_already_stopped();
        if self.reply.is_some() && !stopped {
            self.ctx.metrics.barge_ins.increment(1);
        }
        self.cancel_reply();
        if !stopped {
            self.send_json(&ServerMessage::tts(TtsState::Stop)).await;
        }
    }

    /// Whether the active reply has played to its end and its `tts stop` is on the way (the
    /// session hears of it a moment later; a device that reacts at once must not get a second
    /// `tts stop` for a reply that was not cut).
    fn reply_already_stopped(&self) -> bool {
        self.reply.as_ref().is_some_and(ActiveReply::completed)
    }

    fn cancel_reply(&mut self) {
        if let Some(r) = self.reply.take() {
            r.cancel.cancel();
            self.cancel_tx.send_replace(r.id);
        }
    }

    async fn send_json(&mut self, m: &ServerMessage) {
        let _ = self.tx.send(Downlink::Text(m.to_json_in(&self.session_id))).await;
    }

    pub(super) async fn finish(mut self, end: End, writer: JoinHandle<downlink::DownlinkStats>) {
        self.cancel_reply();
        self.ctx
            .recorder
            .submit(StoreOp::SessionEnded { session: (*self.record).clone(), ended_at: chrono::Utc::now() });
        match end {
            End::PeerGone => info!("device disconnected"),
            End::PeerClosed => {
                info!("device closed the connection");
                // The socket answers a received Close with the same code; sending ours flushes it.
                let close = Downlink::Close { code: close::NORMAL, reason: "" };
                let _ = timeout(CLOSE_GRACE, self.tx.send(close)).await;
            }
            End::Close(code, reason) => {
                info!(code, reason, "closing session");
                let _ = timeout(CLOSE_GRACE, self.tx.send(Downlink::Close { code, reason })).await;
            }
        }
        let Session { tx, events_tx, .. } = self;
        drop(tx);
        drop(events_tx);
        match timeout(CLOSE_GRACE, writer).await {
            Ok(Ok(stats)) => {
                info!(
                    frames_out = stats.frames,
                    bytes_out = stats.bytes,
                    late_frames = stats.late_frames,
                    "session ended"
                )
            }
            _ => debug!("writer did not finish in time"),
        }
    }
}

/// The letters and digits of `text`, lower-cased: what a speaker said, without punctuation.
fn spoken_form(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}
