//! What is kept of a turn (`XIAOZHI_KEEP_AUDIO`): text always; audio clips all, only the
//! device's own speech, or none; camera images always (they are the tool call's evidence,
//! not audio). Applied when a turn is handed to the writer, so dropped clips never occupy
//! the queue, the spill directory or the outbox. Also fills the user clip's transcription
//! with what was recognized, when the session did not.

use super::model::{Role, SourceType, StoreOp, TurnRecord};
use crate::config::KeepAudio;

/// Whether a clip of this source is kept under `keep`.
pub fn keeps(keep: KeepAudio, source: SourceType) -> bool {
    match (keep, source) {
        (_, SourceType::Image) | (KeepAudio::All, _) => true,
        (KeepAudio::User, s) => s == SourceType::User,
        (KeepAudio::None, _) => false,
    }
}

/// The op as it is to be written: clips `keep` does not keep removed (and the messages'
/// links to them cleared); user clips carry their message's text as transcription.
pub fn apply(keep: KeepAudio, op: StoreOp) -> StoreOp {
    match op {
        StoreOp::Turn(mut turn) => {
            prune(keep, &mut turn);
            StoreOp::Turn(turn)
        }
        other => other,
    }
}

fn prune(keep: KeepAudio, turn: &mut TurnRecord) {
    let TurnRecord { messages, clips, .. } = turn;
    clips.retain(|c| keeps(keep, c.source_type));
    for m in messages.iter_mut() {
        if m.audio_file_id.is_some_and(|f| !clips.iter().any(|c| c.file_id == f)) {
            m.audio_file_id = None;
        }
    }
    for c in clips.iter_mut().filter(|c| c.source_type == SourceType::User && c.transcription.is_none()) {
        c.transcription = messages
            .iter()
            .find(|m| m.message_id == c.message_id && m.role == Role::User && !m.content.trim().is_empty())
            .map(|m| m.content.clone());
    }
}
