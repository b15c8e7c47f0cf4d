//! `import mysql`: the xinnan-tech Python server's manager database.
//!
//! * `ai_agent_chat_history` rows become messages, grouped into conversations by their
//!   `session_id` (rows without one: one conversation per device), ordered by `created_at` and
//!   then the source's id. `chat_type` 1 is the user (a voiceprint-recognised row holds
//!   `{"speaker", "content"}`: the text is `content`, the speaker goes to the conversation's
//!   metadata), 2 the assistant, 3 a tool row (a JSON array, kept as the tool message's text).
//!   `created_at` has no time zone: `--source-timezone` says which one it is.
//! * `ai_agent_chat_audio` blobs (WAV, linked by `audio_id`) become WAV clips, byte for byte,
//!   staged in the upload outbox and linked to their messages.
//! * `ai_device` rows become devices (by MAC), and each device's agent `system_prompt` (with
//!   `{{assistant_name}}` expanded to the agent's name, or 小智 as that server does) becomes the
//!   device's active prompt.
//!
//! Only `SELECT` is needed on the source. Rows stream in `session_id` order; one
//! conversation part (bounded by messages and clip bytes) is held at a time.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use futures_util::TryStreamExt;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow};
use sqlx::{MySqlPool, Row};
use std::str::FromStr;

use super::{ImportError, Part, Sink, device_id, stable_id, wav_clip};
use crate::store::model::{DeviceSighting, MessageRecord, Role, SessionRecord};

/// `import mysql`.
#[derive(Debug, clap::Args)]
pub struct MysqlArgs {
    /// The manager database: mysql://USER:PASSWORD@HOST:PORT/DATABASE (SELECT rights suffice).
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The time zone `created_at` was written in (the source keeps none).
    #[arg(long, default_value = "+08:00", value_name = "OFFSET")]
    pub source_timezone: String,
}

const SOURCE: &str = "mysql";

const HISTORY: &str = "SELECT h.id, h.mac_address, h.agent_id, h.session_id, h.chat_type, h.content, h.audio_id, \
     h.created_at, a.audio FROM ai_agent_chat_history h LEFT JOIN ai_agent_chat_audio a ON a.id = h.audio_id \
     ORDER BY h.session_id, h.mac_address, DATE_FORMAT(h.created_at, '%Y-%m-%d %H:%i:%s'), h.id";
const DEVICES: &str = "SELECT d.id, d.mac_address, d.board, d.app_version, d.last_connected_at, d.agent_id, \
     a.agent_name, a.system_prompt FROM ai_device d LEFT JOIN ai_agent a ON a.id = d.agent_id ORDER BY d.id";

/// Runs the import.
pub async fn import(args: &MysqlArgs, sink: &mut Sink) -> Result<(), ImportError> {
    let tz = FixedOffset::from_str(&args.source_timezone)
        .map_err(|e| ImportError::Source(format!("--source-timezone {:?}: {e}", args.source_timezone)))?;
    let options = MySqlConnectOptions::from_str(&args.url)
        .map_err(|e| ImportError::Source(format!("--url: {e}")))?
        .charset("utf8mb4");
    let pool = MySqlPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .map_err(|e| ImportError::Source(format!("cannot connect to the MySQL database: {e}")))?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ai_agent_chat_history")
        .fetch_one(&pool)
        .await
        .map_err(|e| ImportError::Source(format!("ai_agent_chat_history: {e}")))?;
    sink.start_progress(u64::try_from(total).ok());
    devices(&pool, sink, tz).await?;
    history(&pool, sink, tz).await?;
    pool.close().await;
    Ok(())
}

async fn devices(pool: &MySqlPool, sink: &mut Sink, tz: FixedOffset) -> Result<(), ImportError> {
    let mut rows = sqlx::query(DEVICES).fetch(pool);
    while let Some(row) = rows.try_next().await.map_err(|e| ImportError::Source(format!("ai_device: {e}")))? {
        let id: String = row.try_get::<Option<String>, _>("id").ok().flatten().unwrap_or_default();
        let what = format!("ai_device id={id}");
        let mac = match row.try_get::<Option<String>, _>("mac_address") {
            Ok(Some(mac)) if !mac.trim().is_empty() => device_id(&mac),
            Ok(_) => {
                sink.reject_device(&what, "no mac_address");
                continue;
            }
            Err(e) => {
                sink.reject_device(&what, &e.to_string());
                continue;
            }
        };
        let seen = row
            .try_get::<Option<NaiveDateTime>, _>("last_connected_at")
            .ok()
            .flatten()
            .and_then(|t| local_to_utc(t, tz))
            .unwrap_or_else(Utc::now);
        let text = |col: &str| row.try_get::<Option<String>, _>(col).ok().flatten().filter(|s| !s.is_empty());
        sink.device(DeviceSighting {
            device_id: mac.clone(),
            client_id: None,
            board: text("board"),
            firmware_version: text("app_version"),
            seen_at: seen,
        })
        .await?;
        if let Some(prompt) = text("system_prompt") {
            let name = text("agent_name").unwrap_or_else(|| "小智".to_owned());
            let prompt = prompt.replace("{{assistant_name}}", &name);
            let key = format!("{mac}/{}", super::sha256_hex(prompt.as_bytes()));
            sink.prompt(&mac, stable_id(SOURCE, "prompt", &key), &prompt).await?;
        }
    }
    Ok(())
}

async fn history(pool: &MySqlPool, sink: &mut Sink, tz: FixedOffset) -> Result<(), ImportError> {
    let mut rows = sqlx::query(HISTORY).fetch(pool);
    let mut part: Option<Part> = None;
    while let Some(row) =
        rows.try_next().await.map_err(|e| ImportError::Source(format!("ai_agent_chat_history: {e}")))?
    {
        let id: i64 = match row.try_get("id") {
            Ok(id) => id,
            Err(e) => {
                sink.reject_message("ai_agent_chat_history (no id)", &e.to_string());
                continue;
            }
        };
        let what = format!("ai_agent_chat_history id={id}");
        let row = match Source::read(&row, tz) {
            Ok(r) => r,
            Err(reason) => {
                sink.reject_message(&what, &reason);
                continue;
            }
        };
        let key = match &row.session_id {
            Some(s) => format!("session/{s}"),
            None => format!("device/{}", row.device_id),
        };
        if let Some(done) = part.take_if(|p| p.key != key) {
            done.close(sink).await?;
        }
        let p = part.get_or_insert_with(|| {
            let session = SessionRecord {
                session_id: stable_id(SOURCE, "conversation", &key),
                device_id: row.device_id.clone(),
                agent_id: row.agent_id.clone(),
                started_at: row.at,
                metadata: serde_json::json!({
                    "imported_from": "xiaozhi-esp32-server (MySQL)",
                    "source_session_id": row.session_id,
                }),
            };
            Part::new(key.clone(), session)
        });
        let message_id = stable_id(SOURCE, "message", &id.to_string());
        let mut clip = None;
        if let Some(audio) = row.audio {
            let file_id =
                stable_id(SOURCE, "audio", &format!("{}/{id}", row.audio_id.as_deref().unwrap_or("")));
            let (session_id, device) = (p.session.session_id, p.session.device_id.clone());
            match wav_clip(file_id, message_id, session_id, &device, &sink.bucket, row.at, audio) {
                Ok(c) => clip = Some(c),
                Err(reason) => sink.reject_clip(
                    &format!("ai_agent_chat_audio id={} (of {what})", row.audio_id.as_deref().unwrap_or("")),
                    &format!("{reason}; the message is imported without it"),
                ),
            }
        }
        if let Some(speaker) = &row.speaker
            && let serde_json::Value::Object(meta) = &mut p.session.metadata
        {
            meta.entry("speakers").or_insert_with(|| serde_json::json!([]));
            if let Some(list) = meta.get_mut("speakers").and_then(|v| v.as_array_mut())
                && !list.iter().any(|v| v == speaker)
            {
                list.push(serde_json::Value::String(speaker.clone()));
            }
        }
        let message = MessageRecord {
            message_id,
            sequence_num: 0,
            role: row.role,
            content: row.content,
            multi_content: None,
            tool_calls: None,
            tool_call_id: None,
            audio_file_id: clip.as_ref().map(|c| c.file_id),
            interrupted: false,
            created_at: row.at,
        };
        p.push(sink, message, clip).await?;
    }
    if let Some(done) = part {
        done.close(sink).await?;
    }
    Ok(())
}

/// One history row, checked.
struct Source {
    device_id: String,
    agent_id: Option<String>,
    session_id: Option<String>,
    role: Role,
    content: String,
    speaker: Option<String>,
    audio_id: Option<String>,
    audio: Option<Vec<u8>>,
    at: DateTime<Utc>,
}

impl Source {
    fn read(row: &MySqlRow, tz: FixedOffset) -> Result<Self, String> {
        let text = |col: &str| row.try_get::<Option<String>, _>(col).map_err(|e| format!("{col}: {e}"));
        let mac = text("mac_address")?.filter(|m| !m.trim().is_empty()).ok_or("no mac_address")?;
        let chat_type: Option<i64> = row
            .try_get::<Option<i8>, _>("chat_type")
            .map(|v| v.map(i64::from))
            .or_else(|_| row.try_get::<Option<i64>, _>("chat_type"))
            .map_err(|e| format!("chat_type: {e}"))?;
        let role = match chat_type {
            Some(1) => Role::User,
            Some(2) => Role::Assistant,
            Some(3) => Role::Tool,
            other => return Err(format!("chat_type {other:?} is not 1 (user), 2 (assistant) or 3 (tool)")),
        };
        let raw = text("content")?.unwrap_or_default();
        let (content, speaker) = match role {
            Role::User => voiceprint(&raw),
            _ => (raw, None),
        };
        let created: NaiveDateTime = row
            .try_get::<Option<NaiveDateTime>, _>("created_at")
            .map_err(|e| format!("created_at: {e}"))?
            .ok_or("no created_at")?;
        let at =
            local_to_utc(created, tz).ok_or_else(|| format!("created_at {created} is not a valid time"))?;
        let audio: Option<Vec<u8>> = row.try_get("audio").map_err(|e| format!("audio: {e}"))?;
        Ok(Source {
            device_id: device_id(&mac),
            agent_id: text("agent_id")?.filter(|a| !a.is_empty()),
            session_id: text("session_id")?.filter(|s| !s.trim().is_empty()),
            role,
            content,
            speaker,
            audio_id: text("audio_id")?,
            audio: audio.filter(|a| !a.is_empty()),
            at,
        })
    }
}

/// A user row recognised by voiceprint holds `{"speaker": …, "content": …}`.
fn voiceprint(raw: &str) -> (String, Option<String>) {
    if raw.trim_start().starts_with('{')
        && let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(raw)
        && let Some(content) = o.get("content").and_then(|c| c.as_str())
    {
        let speaker = o.get("speaker").and_then(|s| s.as_str()).map(str::to_owned);
        return (content.to_owned(), speaker);
    }
    (raw.to_owned(), None)
}

fn local_to_utc(t: NaiveDateTime, tz: FixedOffset) -> Option<DateTime<Utc>> {
    tz.from_local_datetime(&t).single().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voiceprint_rows_yield_their_content() {
        assert_eq!(
            voiceprint(r#"{"speaker":"妈妈","content":"你好 😊"}"#),
            ("你好 😊".into(), Some("妈妈".into()))
        );
        assert_eq!(voiceprint("{not json"), ("{not json".into(), None));
        assert_eq!(voiceprint("你好"), ("你好".into(), None));
    }

    #[test]
    fn source_time_is_shifted_to_utc() {
        let t = NaiveDateTime::parse_from_str("2025-03-01 08:00:00.250", "%Y-%m-%d %H:%M:%S%.f").unwrap();
        let tz = FixedOffset::from_str("+08:00").unwrap();
        assert_eq!(local_to_utc(t, tz).unwrap().to_rfc3339(), "2025-03-01T00:00:00.250+00:00");
    }
}
