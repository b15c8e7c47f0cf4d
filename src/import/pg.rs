//! `import pg`: a database of the starting design's own schema (the Go server's PostgreSQL
//! branch) and its MinIO objects.
//!
//! * `conversation_sessions` / `conversation_messages` (BIGSERIAL ids, text session and
//!   message ids, `sequence_num` from 1 with possible gaps) become our conversations and
//!   messages, renumbered from 0 in the source's order; roles, tool calls, tool call ids and
//!   multi-part content are kept.
//! * `audio_files` (linked by the message's `audio_file_id`, or by the clip's `message_id`)
//!   and their objects: WAV stays WAV byte for byte; raw Opus becomes a playable Ogg-Opus clip
//!   (packets framed by a 2-byte big-endian length, as the device protocol frames them; an
//!   object that is already Ogg is kept). An object that is missing or cannot be split into
//!   packets is reported and the message lands without it.
//! * active `system_prompts` become each device's active prompt; every device with a session
//!   becomes a device.

use std::collections::HashMap;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use super::{ImportError, Part, Sink, device_id, sha256_hex, stable_id, wav_clip};
use crate::config::Settings;
use crate::store::model::{ClipRecord, DeviceSighting, MessageRecord, Role, SessionRecord, SourceType};
use crate::uploads::storage::ClipStorage;

/// `import pg`.
#[derive(Debug, clap::Args)]
pub struct PgArgs {
    /// The starting design's database: postgres://USER:PASSWORD@HOST:PORT/DATABASE.
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// Its MinIO endpoint (host:port); without it, clips are reported as not carried over.
    #[arg(long, value_name = "HOST:PORT")]
    pub minio_endpoint: Option<String>,
    #[arg(long, default_value = "")]
    pub minio_access_key: String,
    #[arg(long, default_value = "")]
    pub minio_secret_key: String,
    #[arg(long)]
    pub minio_use_ssl: bool,
    #[arg(long, default_value = "us-east-1")]
    pub minio_region: String,
}

const SOURCE: &str = "pg";

const PROMPTS: &str = "SELECT device_id, prompt FROM system_prompts WHERE is_active ORDER BY device_id";
const DEVICES: &str = "SELECT device_id, MAX(COALESCE(ended_at, started_at)) AS seen FROM conversation_sessions \
     GROUP BY device_id ORDER BY device_id";
const MESSAGES: &str = "SELECT m.id, m.session_id, m.device_id, m.message_id, m.role, m.content, \
     m.multi_content, m.tool_calls, m.tool_call_id, m.created_at, \
     s.agent_id, s.started_at, s.ended_at, s.metadata AS session_metadata, \
     a.file_id, a.bucket_name, a.object_key, a.file_type, a.source_type, a.transcription \
     FROM conversation_messages m \
     LEFT JOIN conversation_sessions s ON s.session_id = m.session_id \
     LEFT JOIN LATERAL (SELECT * FROM audio_files a WHERE a.file_id = m.audio_file_id OR a.message_id = m.message_id \
        ORDER BY (a.file_id = m.audio_file_id) DESC, a.id LIMIT 1) a ON TRUE \
     ORDER BY m.session_id, m.sequence_num, m.id";

/// Runs the import.
pub async fn import(args: &PgArgs, sink: &mut Sink) -> Result<(), ImportError> {
    let options =
        PgConnectOptions::from_str(&args.url).map_err(|e| ImportError::Source(format!("--url: {e}")))?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.application_name("xiaozhi-gateway import"))
        .await
        .map_err(|e| ImportError::Source(format!("cannot connect to the source database: {e}")))?;
    let source_err = |what: &str| {
        let what = what.to_owned();
        move |e: sqlx::Error| ImportError::Source(format!("{what}: {e}"))
    };
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversation_messages")
        .fetch_one(&pool)
        .await
        .map_err(source_err("conversation_messages"))?;
    sink.start_progress(u64::try_from(total).ok());

    let mut rows = sqlx::query(DEVICES).fetch(&pool);
    while let Some(r) = rows.try_next().await.map_err(source_err("conversation_sessions"))? {
        let Ok(Some(id)) = r.try_get::<Option<String>, _>("device_id") else { continue };
        let seen = r.try_get::<Option<DateTime<Utc>>, _>("seen").ok().flatten().unwrap_or_else(Utc::now);
        let sighting = DeviceSighting {
            device_id: device_id(&id),
            client_id: None,
            board: None,
            firmware_version: None,
            seen_at: seen,
        };
        sink.device(sighting).await?;
    }
    drop(rows);
    prompts(&pool, sink).await?;
    let mut objects = Objects { args, buckets: HashMap::new() };
    history(&pool, sink, &mut objects).await?;
    pool.close().await;
    Ok(())
}

async fn prompts(pool: &PgPool, sink: &mut Sink) -> Result<(), ImportError> {
    let mut rows = sqlx::query(PROMPTS).fetch(pool);
    loop {
        let r = match rows.try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            // A database without the table (the memory-only layout) simply has no prompts.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(()),
            Err(e) => return Err(ImportError::Source(format!("system_prompts: {e}"))),
        };
        let (Ok(Some(device)), Ok(Some(prompt))) =
            (r.try_get::<Option<String>, _>("device_id"), r.try_get::<Option<String>, _>("prompt"))
        else {
            sink.reject("system_prompts row", "no device_id or prompt");
            continue;
        };
        let device = device_id(&device);
        let id = stable_id(SOURCE, "prompt", &format!("{device}/{}", sha256_hex(prompt.as_bytes())));
        sink.prompt(&device, id, &prompt).await?;
    }
}

/// The source's object storage, one client per bucket.
struct Objects<'a> {
    args: &'a PgArgs,
    buckets: HashMap<String, ClipStorage>,
}

impl Objects<'_> {
    async fn get(&mut self, bucket: &str, key: &str) -> Result<Bytes, String> {
        let Some(endpoint) = &self.args.minio_endpoint else {
            return Err("no --minio-endpoint given: the clip is not carried over".into());
        };
        if !self.buckets.contains_key(bucket) {
            let mut settings = Settings::default();
            settings.storage.endpoint = Some(endpoint.clone());
            settings.storage.access_key = self.args.minio_access_key.clone();
            settings.storage.secret_key = self.args.minio_secret_key.clone();
            settings.storage.use_ssl = self.args.minio_use_ssl;
            settings.storage.region = self.args.minio_region.clone();
            settings.storage.bucket = bucket.to_owned();
            let storage = ClipStorage::open(&settings).await.map_err(|e| format!("bucket {bucket}: {e}"))?;
            self.buckets.insert(bucket.to_owned(), storage);
        }
        let storage = &self.buckets[bucket];
        storage.get(key).await.map_err(|e| format!("object {bucket}/{key}: {e}"))
    }
}

async fn history(pool: &PgPool, sink: &mut Sink, objects: &mut Objects<'_>) -> Result<(), ImportError> {
    let mut rows = sqlx::query(MESSAGES).fetch(pool);
    let mut part: Option<Part> = None;
    while let Some(row) =
        rows.try_next().await.map_err(|e| ImportError::Source(format!("conversation_messages: {e}")))?
    {
        let id: i64 = row.try_get("id").unwrap_or_default();
        let what = format!("conversation_messages id={id}");
        let m = match Message::read(&row) {
            Ok(m) => m,
            Err(reason) => {
                sink.reject_message(&what, &reason);
                continue;
            }
        };
        if let Some(done) = part.take_if(|p| p.key != m.session_id) {
            done.close(sink).await?;
        }
        let p = part.get_or_insert_with(|| {
            let session = SessionRecord {
                session_id: stable_id(SOURCE, "conversation", &m.session_id),
                device_id: m.device_id.clone(),
                agent_id: m.agent_id.clone(),
                started_at: m.started_at.unwrap_or(m.at),
                metadata: serde_json::json!({
                    "imported_from": "xiaozhi-esp32-server-golang (PostgreSQL)",
                    "source_session_id": m.session_id,
                    "source_metadata": m.session_metadata,
                }),
            };
            let mut p = Part::new(m.session_id.clone(), session);
            p.ended_at = m.ended_at;
            p
        });
        let message_id = stable_id(SOURCE, "message", &m.message_id);
        let mut clip = None;
        if let Some(audio) = &m.audio {
            let file_id = stable_id(SOURCE, "audio", &audio.file_id);
            let (session_id, device) = (p.session.session_id, p.session.device_id.clone());
            let made = match objects.get(&audio.bucket, &audio.object_key).await {
                Ok(bytes) => {
                    let ids = ClipIds { file_id, message_id, session_id };
                    clip_from(audio, bytes, ids, &device, &sink.bucket, m.at)
                }
                Err(e) => Err(e),
            };
            match made {
                Ok(c) => clip = Some(c),
                Err(reason) => sink.reject_clip(
                    &format!("audio_files file_id={} (of {what})", audio.file_id),
                    &format!("{reason}; the message is imported without it"),
                ),
            }
        }
        let message = MessageRecord {
            message_id,
            sequence_num: 0,
            role: m.role,
            content: m.content,
            multi_content: m.multi_content,
            tool_calls: m.tool_calls,
            tool_call_id: m.tool_call_id,
            audio_file_id: clip.as_ref().map(|c| c.file_id),
            interrupted: false,
            created_at: m.at,
        };
        p.push(sink, message, clip).await?;
    }
    if let Some(done) = part {
        done.close(sink).await?;
    }
    Ok(())
}

/// A clip row of the source.
struct Audio {
    file_id: String,
    bucket: String,
    object_key: String,
    file_type: String,
    source_type: Option<String>,
    transcription: Option<String>,
}

/// One message row, checked.
struct Message {
    session_id: String,
    device_id: String,
    message_id: String,
    role: Role,
    content: String,
    multi_content: Option<serde_json::Value>,
    tool_calls: Option<serde_json::Value>,
    tool_call_id: Option<String>,
    at: DateTime<Utc>,
    agent_id: Option<String>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    session_metadata: Option<serde_json::Value>,
    audio: Option<Audio>,
}

impl Message {
    fn read(r: &PgRow) -> Result<Self, String> {
        let text = |col: &str| r.try_get::<Option<String>, _>(col).map_err(|e| format!("{col}: {e}"));
        let json = |col: &str| {
            r.try_get::<Option<serde_json::Value>, _>(col)
                .map(|v| v.filter(|v| !v.is_null()))
                .map_err(|e| format!("{col}: {e}"))
        };
        let time = |col: &str| r.try_get::<Option<DateTime<Utc>>, _>(col).map_err(|e| format!("{col}: {e}"));
        let role_text = text("role")?.unwrap_or_default();
        let role = Role::parse(role_text.trim())
            .ok_or_else(|| format!("role {role_text:?} is not user, assistant, system or tool"))?;
        let audio = match text("file_id")? {
            Some(file_id) => Some(Audio {
                file_id,
                bucket: text("bucket_name")?.unwrap_or_default(),
                object_key: text("object_key")?.unwrap_or_default(),
                file_type: text("file_type")?.unwrap_or_default(),
                source_type: text("source_type")?,
                transcription: text("transcription")?,
            }),
            None => None,
        };
        Ok(Message {
            session_id: text("session_id")?.filter(|s| !s.is_empty()).ok_or("no session_id")?,
            device_id: device_id(&text("device_id")?.filter(|s| !s.is_empty()).ok_or("no device_id")?),
            message_id: text("message_id")?.filter(|s| !s.is_empty()).ok_or("no message_id")?,
            role,
            content: text("content")?.unwrap_or_default(),
            multi_content: json("multi_content")?,
            tool_calls: json("tool_calls")?.filter(|t| t.as_array().is_some_and(|a| !a.is_empty())),
            tool_call_id: text("tool_call_id")?.filter(|s| !s.is_empty()),
            at: time("created_at")?.ok_or("no created_at")?,
            agent_id: text("agent_id")?.filter(|s| !s.is_empty()),
            started_at: time("started_at")?,
            ended_at: time("ended_at")?,
            session_metadata: json("session_metadata")?,
            audio,
        })
    }
}

/// The ids a clip is filed under.
struct ClipIds {
    file_id: uuid::Uuid,
    message_id: uuid::Uuid,
    session_id: uuid::Uuid,
}

/// Our clip for a source object: WAV byte for byte, Opus as Ogg-Opus.
fn clip_from(
    audio: &Audio,
    bytes: Bytes,
    ids: ClipIds,
    device: &str,
    bucket: &str,
    at: DateTime<Utc>,
) -> Result<ClipRecord, String> {
    let ClipIds { file_id, message_id, session_id } = ids;
    let source_type = match audio.source_type.as_deref() {
        Some("tts") => SourceType::Tts,
        Some("asr") => SourceType::Asr,
        _ => SourceType::User,
    };
    let mut clip = if bytes.starts_with(b"RIFF") || audio.file_type.eq_ignore_ascii_case("wav") {
        wav_clip(file_id, message_id, session_id, device, bucket, at, bytes.to_vec())?
    } else {
        let ogg = if bytes.starts_with(b"OggS") { ogg_length(&bytes)? } else { mux_framed(&bytes, file_id)? };
        ClipRecord {
            file_id,
            message_id,
            bucket_name: bucket.to_owned(),
            object_key: crate::session::record::object_key(device, at, session_id, file_id, "ogg"),
            file_type: "ogg".into(),
            duration_ms: i32::try_from(ogg.1).unwrap_or(i32::MAX),
            sample_rate: 16_000,
            channels: 1,
            source_type,
            transcription: None,
            metadata: serde_json::json!({ "imported": true }),
            checksum: sha256_hex(&ogg.0),
            data: ogg.0,
            created_at: at,
        }
    };
    clip.source_type = source_type;
    clip.transcription = audio.transcription.clone();
    Ok(clip)
}

/// Splits `[u16 BE length][packet]…` and muxes the packets into Ogg-Opus.
fn mux_framed(bytes: &[u8], file_id: uuid::Uuid) -> Result<(Bytes, u32), String> {
    let mut packets = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (len, tail) = match rest {
            [a, b, tail @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), tail),
            _ => return Err("raw Opus with a dangling byte: packet boundaries unknown".into()),
        };
        if len == 0 || len > tail.len() {
            return Err(format!(
                "raw Opus without 2-byte length framing (a length of {len} at byte {}): packet boundaries unknown",
                bytes.len() - rest.len()
            ));
        }
        packets.push(Bytes::copy_from_slice(&tail[..len]));
        rest = &tail[len..];
    }
    let format =
        crate::audio::ogg::ClipFormat { input_rate: 16_000, pre_skip: crate::audio::ogg::DEFAULT_PRE_SKIP };
    let serial = file_id.as_u128() as u32;
    let ogg = crate::audio::ogg::mux(&packets, format, serial).map_err(|e| format!("not Opus: {e}"))?;
    Ok((ogg.bytes, ogg.duration_ms))
}

/// An object that is Ogg already: kept, its length read from the last page's granule.
fn ogg_length(bytes: &Bytes) -> Result<(Bytes, u32), String> {
    let mut reader = ogg::reading::PacketReader::new(std::io::Cursor::new(&bytes[..]));
    let mut last = 0u64;
    while let Some(p) = reader.read_packet().map_err(|e| format!("broken Ogg: {e}"))? {
        last = last.max(p.absgp_page());
    }
    let ms = last.saturating_sub(u64::from(crate::audio::ogg::DEFAULT_PRE_SKIP)) / 48;
    Ok((bytes.clone(), u32::try_from(ms).unwrap_or(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_packets_mux_and_unframed_bytes_are_refused() {
        let mut enc = crate::audio::opus::FrameEncoder::new(16_000, 60).unwrap();
        let pcm = vec![0i16; 16 * 600];
        let mut framed = Vec::new();
        for p in enc.encode_all(&pcm).unwrap() {
            framed.extend_from_slice(&(p.len() as u16).to_be_bytes());
            framed.extend_from_slice(&p);
        }
        let (ogg, ms) = mux_framed(&framed, uuid::Uuid::nil()).unwrap();
        assert!(ogg.starts_with(b"OggS"));
        assert_eq!(ms, 600 - 7, "ten 60 ms packets less the encoder's 6.5 ms pre-skip");
        assert_eq!(ogg_length(&ogg).unwrap().1, ms);
        assert!(mux_framed(&[0xff; 40], uuid::Uuid::nil()).unwrap_err().contains("boundaries unknown"));
    }
}
