//! The session's writer half: owns the socket's sink, sends JSON at once and paces reply audio
//! in real time (a small prebuffer ahead of the device's playback clock, never a burst that
//! overflows its 40-packet decode queue). `tts stop` goes out when the last frame has played.
//! A cancelled reply's queued frames are dropped without being sent.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use bytes::Bytes;
use firmware_protocol::frame::{self, ProtocolVersion};
use firmware_protocol::{ServerMessage, TtsState};
use futures_util::{Sink, SinkExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use crate::conversation::{Downlink, ReplyProgress};

/// What the writer tells the session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriterEvent {
    /// The device has played reply `reply` to its end and was sent `tts stop`.
    PlaybackDone { reply: u64 },
    /// The socket refused a write; the session should end.
    SocketFailed,
}

/// Counters the writer keeps for its session.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DownlinkStats {
    pub frames: u64,
    pub bytes: u64,
    /// Frames sent when the device had already run out of the reply's audio for more than
    /// [`LATE_THRESHOLD`] (an audible gap).
    pub late_frames: u64,
}

/// A frame sent this long after the device ran dry counts as late.
pub(crate) const LATE_THRESHOLD: Duration = Duration::from_millis(20);

/// Pacing parameters for one connection.
pub(crate) struct Pacing {
    pub version: ProtocolVersion,
    /// Named in the `tts stop` the writer sends.
    pub session_id: Arc<str>,
    /// How far ahead of the device's playback clock frames may be sent.
    pub prebuffer: Duration,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
}

/// The writer's playback clock: when the device will have played what was sent.
struct Pacer {
    pacing: Pacing,
    started: Instant,
    stats: DownlinkStats,
    current_reply: u64,
    /// When the device will have played everything sent so far.
    play_end: Instant,
    /// When the playback clock last (re)started: nothing is due before it.
    clock_origin: Instant,
}

/// What sending a batch of audio came to.
enum Sent {
    /// Every packet went out, or the reply was cancelled part-way (the rest is dropped).
    Done,
    /// The socket refused a write.
    SocketFailed,
}

impl Pacer {
    /// Sends one reply's packets, each at its due time, until done or cancelled.
    async fn audio<S: Sink<Message> + Unpin>(
        &mut self,
        sink: &mut S,
        cancelled: &mut watch::Receiver<u64>,
        reply: u64,
        packets: Vec<(Bytes, Duration)>,
        progress: &ReplyProgress,
    ) -> Sent {
        for (packet, duration) in packets {
            if is_cancelled(cancelled, reply) {
                return Sent::Done;
            }
            let now = Instant::now();
            // Late: the device ran out of this reply's audio more than the threshold ago.
            let late =
                reply == self.current_reply && now.saturating_duration_since(self.play_end) > LATE_THRESHOLD;
            if reply != self.current_reply {
                // What a cancelled reply had queued on the device was flushed by its
                // `tts stop`: the next reply starts on a fresh clock, with its prebuffer.
                if is_cancelled(cancelled, self.current_reply) {
                    self.play_end = now;
                    self.clock_origin = now;
                }
                self.current_reply = reply;
            }
            if self.play_end < now {
                // The producer fell behind: the clock restarts now.
                self.play_end = now;
                self.clock_origin = now;
            }
            let due = self
                .play_end
                .checked_sub(self.pacing.prebuffer)
                .unwrap_or(self.play_end)
                .max(self.clock_origin);
            if due > now && !wait_until(due, cancelled, reply).await {
                return Sent::Done;
            }
            let ts = self.play_end.duration_since(self.started).as_millis() as u32;
            let data = match self.pacing.version {
                ProtocolVersion::V1 => packet,
                v => match frame::encode(v, ts, &packet) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "reply packet dropped");
                        continue;
                    }
                },
            };
            let len = data.len() as u64;
            self.play_end += duration;
            if send(sink, Message::Binary(data)).await.is_err() {
                return Sent::SocketFailed;
            }
            self.stats.frames += 1;
            self.stats.bytes += len;
            self.pacing.metrics.frames_out.increment(1);
            self.pacing.metrics.bytes_out.increment(len);
            if late {
                self.stats.late_frames += 1;
                self.pacing.metrics.late_frames.increment(1);
            }
            if progress.sent.fetch_add(1, Ordering::Relaxed) == 0
                && let Some((turn_end, histogram)) = &progress.first_audio
            {
                histogram.record(turn_end.elapsed().as_secs_f64());
            }
        }
        Sent::Done
    }
}

fn is_cancelled(rx: &watch::Receiver<u64>, reply: u64) -> bool {
    reply <= *rx.borrow()
}

/// Runs the writer until the channel closes, a Close is sent, or the socket fails.
pub(crate) async fn run<S: Sink<Message> + Unpin>(
    mut sink: S,
    mut rx: mpsc::Receiver<Downlink>,
    mut cancelled: watch::Receiver<u64>,
    events: mpsc::UnboundedSender<WriterEvent>,
    pacing: Pacing,
) -> DownlinkStats {
    let stop = ServerMessage::tts(TtsState::Stop).to_json_in(&pacing.session_id);
    let now = Instant::now();
    let mut pacer = Pacer {
        pacing,
        started: now,
        stats: DownlinkStats::default(),
        current_reply: 0,
        play_end: now,
        clock_origin: now,
    };

    while let Some(cmd) = rx.recv().await {
        let result = match cmd {
            Downlink::Text(text) => send(&mut sink, Message::Text(text.into())).await,
            Downlink::ReplyText { reply, text } => {
                if is_cancelled(&cancelled, reply) {
                    continue;
                }
                send(&mut sink, Message::Text(text.into())).await
            }
            Downlink::Audio { reply, packets, progress } => {
                match pacer.audio(&mut sink, &mut cancelled, reply, packets, &progress).await {
                    Sent::Done => Ok(()),
                    Sent::SocketFailed => Err(()),
                }
            }
            Downlink::EndOfReply { reply, progress } => {
                let mut sent = Ok(());
                if !is_cancelled(&cancelled, reply) && wait_until(pacer.play_end, &mut cancelled, reply).await
                {
                    // Before the device can hear of it: from here on the reply was not cut.
                    progress.completed.store(true, Ordering::Release);
                    sent = send(&mut sink, Message::Text(stop.clone().into())).await;
                }
                progress.played.notify_one();
                let _ = events.send(WriterEvent::PlaybackDone { reply });
                sent
            }
            Downlink::Close { code, reason } => {
                let _ =
                    send(&mut sink, Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.flush()).await;
                break;
            }
        };
        if result.is_err() {
            let _ = events.send(WriterEvent::SocketFailed);
            break;
        }
    }
    pacer.stats
}

/// How long one socket write may take before the device counts as gone (a peer that stopped
/// reading without closing would otherwise hold the session until TCP gives up).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one message, failing after [`WRITE_TIMEOUT`].
async fn send<S: Sink<Message> + Unpin>(sink: &mut S, msg: Message) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Sleeps until `at`; returns false early if reply `reply` is cancelled meanwhile.
async fn wait_until(at: Instant, cancelled: &mut watch::Receiver<u64>, reply: u64) -> bool {
    let sleep = sleep_until(at);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            changed = cancelled.changed() => {
                if changed.is_err() || reply <= *cancelled.borrow() {
                    return false;
                }
            }
        }
    }
}
