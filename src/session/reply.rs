//! One reply as its own task: the brain answers through a [`Reply`], the writer plays it, and
//! once the device has heard it (or it was cut) the turn's record goes to the store writer. The
//! session keeps an [`ActiveReply`] to cancel it or to learn how it went.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

use super::downlink::WriterEvent;
use super::record::{self, TurnContext};
use super::{DOWNLINK_FRAME_MS, SessionContext};
use crate::conversation::{Downlink, Reply, ReplyProgress, Turn};
use crate::store::model::StoreOp;
use crate::telemetry::metrics::Stage;

/// The reply being spoken.
pub(super) struct ActiveReply {
    pub id: u64,
    /// Cancelling stops the pipeline at once; the task still records what was said.
    pub cancel: CancellationToken,
    /// What the writer and the pipeline report (e.g. a request to end the conversation).
    pub progress: Arc<ReplyProgress>,
}

impl ActiveReply {
    /// Whether the reply has played to its end and its `tts stop` is on the way.
    pub(super) fn completed(&self) -> bool {
        self.progress.completed.load(Ordering::Acquire)
    }

    /// Whether the brain asked to end the conversation after this reply.
    pub(super) fn ends_conversation(&self) -> bool {
        self.progress.end_conversation.load(Ordering::Relaxed)
    }
}

/// Starts reply `id` to `turn`; `record` says how to keep it.
pub(super) fn spawn(
    ctx: &Arc<SessionContext>,
    id: u64,
    turn: Turn,
    record: TurnContext,
    tx: mpsc::Sender<Downlink>,
    events: mpsc::UnboundedSender<WriterEvent>,
) -> ActiveReply {
    let metrics = &ctx.metrics;
    let progress = Arc::new(ReplyProgress {
        first_audio: match (&record.heard, &record.typed) {
            (Some(_), _) => {
                metrics.turns_voice.increment(1);
                Some((Instant::now(), metrics.stage(Stage::EosToFirstAudio).clone()))
            }
            (None, Some(_)) => {
                metrics.turns_text.increment(1);
                None
            }
            (None, None) => None,
        },
        ..ReplyProgress::default()
    });
    let cancel = CancellationToken::new();
    let active = ActiveReply { id, cancel: cancel.clone(), progress: progress.clone() };
    let ctx = ctx.clone();
    let max_packet = Duration::from_millis(u64::from(DOWNLINK_FRAME_MS));
    tokio::spawn(
        async move {
            let mut reply = Reply::new(id, turn.session_id.clone(), tx.clone(), max_packet, progress);
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                r = ctx.pipeline.respond(turn, &mut reply) => Some(r),
            };
            let mut interrupted = outcome.is_none();
            if let Some(Err(e)) = &outcome {
                warn!(error = %e, "reply failed");
            }
            if !interrupted {
                if reply.started() {
                    // Whatever was said gets its `tts stop` once played. The pipeline may be
                    // done long before the device is (audio is handed over a sentence at a
                    // time): the record waits, so that it holds what was heard.
                    let progress = reply.progress();
                    let played = progress.played.notified();
                    let _ = tx.send(Downlink::EndOfReply { reply: id, progress: progress.clone() }).await;
                    tokio::select! {
                        _ = played => {}
                        _ = cancel.cancelled() => {}
                        _ = tx.closed() => {}
                    }
                    interrupted = !progress.completed.load(Ordering::Acquire);
                } else {
                    let _ = events.send(WriterEvent::PlaybackDone { reply: id });
                }
            }
            ctx.recorder.submit(StoreOp::Turn(Box::new(record::build(record, &reply, interrupted))));
        }
        .in_current_span(),
    );
    active
}
