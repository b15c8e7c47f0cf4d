//! Turning a finished (or interrupted) turn into the [`TurnRecord`] the store writer commits:
//! the user's message with the utterance as an Ogg-Opus clip, and the assistant's message
//! with what the device was actually sent. Runs in the reply's task, never in the reader.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audio::ogg::{self, ClipFormat, DEFAULT_PRE_SKIP};
use crate::audio::opus::UplinkDecoder;
use crate::config::ClipFileFormat;
use crate::conversation::{Reply, Utterance, VisionImage};
use crate::store::model::{ClipRecord, MessageRecord, Role, SessionRecord, SourceType, TurnRecord};

/// Sequence numbers reserved per turn of a tool-using brain: the user's message, tool calls and
/// results, the answer.
pub(crate) const SEQ_BLOCK: i32 = 32;

/// What the session knew when the turn began.
pub(crate) struct TurnContext {
    pub session: Arc<SessionRecord>,
    pub bucket: Arc<str>,
    /// Sequence number of the user's message; the reply gets the next one.
    pub user_seq: i32,
    /// The utterance, for a voice turn.
    pub heard: Option<Utterance>,
    /// The text, for a typed turn.
    pub typed: Option<String>,
    /// Server-initiated speech: only the assistant speaks.
    pub announcement: bool,
    /// When the user's turn ended.
    pub heard_at: DateTime<Utc>,
    /// Ogg-Opus (the packets as sent) or WAV (decoded PCM).
    pub file_format: ClipFileFormat,
    /// Sequence numbers reserved for this turn.
    pub seq_block: i32,
}

/// Builds the record of one turn.
pub(crate) fn build(ctx: TurnContext, reply: &Reply, interrupted: bool) -> TurnRecord {
    let session = &ctx.session;
    let mut messages = Vec::with_capacity(2);
    let mut clips = Vec::with_capacity(2);

    let user_id = Uuid::now_v7();
    let mut next_seq = if ctx.announcement { ctx.user_seq } else { ctx.user_seq + 1 };
    let user_clip = ctx.heard.as_ref().and_then(|u| {
        clip(
            &ctx,
            user_id,
            &u.packets,
            ClipFormat { input_rate: 16_000, pre_skip: DEFAULT_PRE_SKIP },
            SourceType::User,
            ctx.heard_at,
        )
    });
    let user_text = reply.user_text().map(str::to_owned).or(ctx.typed.clone()).unwrap_or_default();
    if !ctx.announcement {
        messages.push(MessageRecord {
            message_id: user_id,
            sequence_num: ctx.user_seq,
            role: Role::User,
            content: user_text,
            multi_content: None,
            tool_calls: None,
            tool_call_id: None,
            audio_file_id: user_clip.as_ref().map(|c| c.file_id),
            interrupted: false,
            created_at: ctx.heard_at,
        });
    }
    clips.extend(user_clip);

    // A finished reply is still being played out (its tail is queued for pacing): it will all
    // be sent. A cut reply counts what actually went out.
    // Tool calls and their results, between the question and the answer.
    let max_tools = (ctx.seq_block.saturating_sub(2) / 2).max(0) as usize;
    for (i, t) in reply.tool_exchanges().iter().take(max_tools).enumerate() {
        let at = ctx.heard_at + chrono::Duration::microseconds(1 + 2 * i as i64);
        messages.push(MessageRecord {
            message_id: Uuid::now_v7(),
            sequence_num: next_seq,
            role: Role::Assistant,
            content: String::new(),
            multi_content: None,
            tool_calls: Some(json!([{
                "id": t.call_id,
                "type": "function",
                "function": { "name": t.name, "arguments": t.arguments },
            }])),
            tool_call_id: None,
            audio_file_id: None,
            interrupted: false,
            created_at: at,
        });
        let result_id = Uuid::now_v7();
        let result_at = at + chrono::Duration::microseconds(1);
        let images: Vec<ClipRecord> =
            t.images.iter().map(|i| image_clip(&ctx, result_id, i, result_at)).collect();
        messages.push(MessageRecord {
            message_id: result_id,
            sequence_num: next_seq + 1,
            role: Role::Tool,
            content: t.result.clone(),
            multi_content: (!images.is_empty()).then(|| {
                json!(
                    images.iter().map(|c| json!({"type": "image", "file_id": c.file_id})).collect::<Vec<_>>()
                )
            }),
            tool_calls: None,
            tool_call_id: Some(t.call_id.clone()),
            audio_file_id: images.first().map(|c| c.file_id),
            interrupted: false,
            created_at: result_at,
        });
        clips.extend(images);
        next_seq += 2;
    }
    let assistant_seq = next_seq;
    let spoken = if interrupted { reply.spoken_audio() } else { reply.queued_audio() };
    if reply.started() || !reply.sentences().is_empty() || !spoken.is_empty() {
        // Strictly after the user's message, so ordering by time agrees with the sequence.
        let after = messages.last().map_or(ctx.heard_at, |m| m.created_at);
        let at = Utc::now().max(after + chrono::Duration::microseconds(1));
        let reply_id = Uuid::now_v7();
        let reply_clip = clip(&ctx, reply_id, spoken, reply.clip_format(), SourceType::Tts, at);
        messages.push(MessageRecord {
            message_id: reply_id,
            sequence_num: assistant_seq,
            role: Role::Assistant,
            content: reply.sentences().join(" "),
            multi_content: None,
            tool_calls: None,
            tool_call_id: None,
            audio_file_id: reply_clip.as_ref().map(|c| c.file_id),
            interrupted,
            created_at: at,
        });
        clips.extend(reply_clip);
    }
    TurnRecord { session: (**session).clone(), device_id: session.device_id.clone(), messages, clips }
}

/// Muxes packets into a clip row; no packets (or unmuxable ones) means no clip.
fn clip(
    ctx: &TurnContext,
    message_id: Uuid,
    packets: &[Bytes],
    format: ClipFormat,
    source: SourceType,
    at: DateTime<Utc>,
) -> Option<ClipRecord> {
    if packets.is_empty() {
        return None;
    }
    let file_id = Uuid::now_v7();
    let muxed = match ogg::mux(packets, format, file_id.as_u128() as u32) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, source = source.as_str(), "clip not kept: packets could not be muxed");
            return None;
        }
    };
    let (data, ext, rate) = match ctx.file_format {
        ClipFileFormat::Ogg => (muxed.bytes, "ogg", format.input_rate),
        ClipFileFormat::Wav => match wav(packets) {
            Ok(bytes) => (bytes, "wav", crate::audio::UPLINK_RATE),
            Err(e) => {
                tracing::warn!(error = %e, "WAV clip failed; keeping Ogg-Opus");
                (muxed.bytes, "ogg", format.input_rate)
            }
        },
    };
    let session = &ctx.session;
    Some(ClipRecord {
        file_id,
        message_id,
        bucket_name: ctx.bucket.to_string(),
        object_key: object_key(&session.device_id, at, session.session_id, file_id, ext),
        file_type: ext.into(),
        duration_ms: muxed.duration_ms as i32,
        sample_rate: rate as i32,
        channels: 1,
        source_type: source,
        transcription: None,
        metadata: json!({ "packets": muxed.packets, "pre_skip": format.pre_skip }),
        checksum: hex(&Sha256::digest(&data)),
        data,
        created_at: at,
    })
}

/// The row (and staged bytes) of a camera image, kept with the tool result it belongs to.
fn image_clip(ctx: &TurnContext, message_id: Uuid, image: &VisionImage, at: DateTime<Utc>) -> ClipRecord {
    let file_id = Uuid::now_v7();
    let session = &ctx.session;
    ClipRecord {
        file_id,
        message_id,
        bucket_name: ctx.bucket.to_string(),
        object_key: object_key(&session.device_id, at, session.session_id, file_id, image.file_type),
        file_type: image.file_type.into(),
        duration_ms: 0,
        sample_rate: 0,
        channels: 0,
        source_type: SourceType::Image,
        transcription: None,
        metadata: json!({ "question": image.question, "answer": image.answer }),
        checksum: hex(&Sha256::digest(&image.data)),
        data: image.data.clone(),
        created_at: at,
    }
}

/// Decodes packets to 16 kHz 16-bit mono PCM in a WAV container.
fn wav(packets: &[Bytes]) -> Result<Bytes, String> {
    let mut decoder = UplinkDecoder::new().map_err(|e| e.to_string())?;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: crate::audio::UPLINK_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut out, spec).map_err(|e| e.to_string())?;
        for p in packets {
            let pcm = decoder.decode(p).map_err(|e| e.to_string())?;
            for s in pcm {
                w.write_sample(*s).map_err(|e| e.to_string())?;
            }
        }
        w.finalize().map_err(|e| e.to_string())?;
    }
    Ok(Bytes::from(out.into_inner()))
}

/// `{device_id}/{yyyy-mm-dd}/{session_id}/{file_id}.{ext}` (the starting design's layout).
pub(crate) fn object_key(
    device_id: &str,
    at: DateTime<Utc>,
    session_id: Uuid,
    file_id: Uuid,
    ext: &str,
) -> String {
    format!("{device_id}/{}/{session_id}/{file_id}.{ext}", at.format("%Y-%m-%d"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
