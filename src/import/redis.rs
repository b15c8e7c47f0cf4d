//! `import redis`: the Go server's memory, as its `llm_memory` writes it.
//!
//! * `{prefix}:llm:{device_id}`: a sorted set per device (the MAC keeps its colons); the score
//!   is the Unix time in nanoseconds, each member a JSON chat message (`role`, `content`,
//!   OpenAI-shaped `tool_calls`, `tool_call_id`; older versions add a `timestamp`). The source
//!   has no conversation boundaries: a gap of more than `--gap-minutes` starts a new one.
//! * `{prefix}:llm:system:{device_id}`: the device's prompt string (it also matches
//!   `{prefix}:llm:*`, and is not a device).
//!
//! Keys are found with `SCAN` and read a page at a time (`ZRANGE … WITHSCORES`), so memory
//! stays flat. The database number in the URL is honoured.

use chrono::{DateTime, Utc};
use redis::aio::MultiplexedConnection;
use serde::Deserialize;

use super::{ImportError, Part, Sink, device_id, sha256_hex, stable_id};
use crate::store::model::{MessageRecord, Role, SessionRecord};

/// `import redis`.
#[derive(Debug, clap::Args)]
pub struct RedisArgs {
    /// redis://[:PASSWORD@]HOST:PORT/DB
    #[arg(long, value_name = "URL")]
    pub url: String,
    /// The Go server's `redis.key_prefix`.
    #[arg(long, default_value = "xiaozhi")]
    pub key_prefix: String,
    /// A pause longer than this (minutes) between two messages starts a new conversation.
    #[arg(long, default_value_t = 30)]
    pub gap_minutes: u64,
}

const SOURCE: &str = "redis";
const PAGE: isize = 500;

fn source_err(e: redis::RedisError) -> ImportError {
    ImportError::Source(format!("redis: {e}"))
}

/// Runs the import.
pub async fn import(args: &RedisArgs, sink: &mut Sink) -> Result<(), ImportError> {
    let client =
        redis::Client::open(args.url.as_str()).map_err(|e| ImportError::Source(format!("--url: {e}")))?;
    let mut con = client.get_multiplexed_async_connection().await.map_err(source_err)?;
    sink.start_progress(None);
    let memory = format!("{}:llm:", args.key_prefix);
    let system = format!("{}:llm:system:", args.key_prefix);
    let pattern = format!("{}*", glob_escape(&memory));
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(200)
            .query_async(&mut con)
            .await
            .map_err(source_err)?;
        for key in keys {
            if let Some(device) = key.strip_prefix(&system) {
                prompt(&mut con, sink, &key, device).await?;
            } else if let Some(device) = key.strip_prefix(&memory) {
                history(&mut con, sink, &key, device, args.gap_minutes).await?;
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(())
}

async fn prompt(
    con: &mut MultiplexedConnection,
    sink: &mut Sink,
    key: &str,
    device: &str,
) -> Result<(), ImportError> {
    let value: redis::RedisResult<Option<String>> = redis::cmd("GET").arg(key).query_async(con).await;
    match value {
        Ok(Some(p)) if !p.trim().is_empty() => {
            let device = device_id(device);
            let id = stable_id(SOURCE, "prompt", &format!("{device}/{}", sha256_hex(p.as_bytes())));
            sink.prompt(&device, id, &p).await
        }
        Ok(_) => Ok(()),
        Err(e) => {
            sink.reject(&format!("key {key}"), &format!("not a prompt string: {e}"));
            Ok(())
        }
    }
}

/// One message as the Go server stores it (eino's `schema.Message`).
#[derive(Debug, Deserialize)]
struct Member {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<serde_json::Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    multi_content: Option<serde_json::Value>,
}

async fn history(
    con: &mut MultiplexedConnection,
    sink: &mut Sink,
    key: &str,
    device: &str,
    gap_minutes: u64,
) -> Result<(), ImportError> {
    let kind: String = redis::cmd("TYPE").arg(key).query_async(con).await.map_err(source_err)?;
    if kind != "zset" {
        sink.reject(&format!("key {key}"), &format!("a {kind}, not the sorted set the server writes"));
        return Ok(());
    }
    let device = device_id(device);
    let gap = chrono::Duration::minutes(i64::try_from(gap_minutes).unwrap_or(i64::MAX / 60_000_000));
    let mut part: Option<Part> = None;
    let mut start: isize = 0;
    loop {
        let page: Vec<(Vec<u8>, String)> = redis::cmd("ZRANGE")
            .arg(key)
            .arg(start)
            .arg(start + PAGE - 1)
            .arg("WITHSCORES")
            .query_async(con)
            .await
            .map_err(source_err)?;
        let n = page.len();
        for (member, score) in page {
            let (m, at) = match parse(&member, &score) {
                Ok(v) => v,
                Err(reason) => {
                    sink.reject_message(&format!("key {key} score {score}"), &reason);
                    continue;
                }
            };
            if let Some(done) = part.take_if(|p| at - p.last_at > gap) {
                done.close(sink).await?;
            }
            let p = part.get_or_insert_with(|| {
                let session_key = format!("{device}/{score}");
                let session = SessionRecord {
                    session_id: stable_id(SOURCE, "conversation", &session_key),
                    device_id: device.clone(),
                    agent_id: None,
                    started_at: at,
                    metadata: serde_json::json!({ "imported_from": "xiaozhi-esp32-server-golang (Redis)" }),
                };
                Part::new(session_key, session)
            });
            let message = MessageRecord {
                message_id: stable_id(
                    SOURCE,
                    "message",
                    &format!("{device}/{score}/{}", &sha256_hex(&member)[..32]),
                ),
                sequence_num: 0,
                role: Role::parse(&m.role).unwrap_or(Role::User),
                content: m.content.unwrap_or_default(),
                multi_content: m.multi_content.filter(|v| !v.is_null()),
                tool_calls: m.tool_calls.filter(|t| t.as_array().is_some_and(|a| !a.is_empty())),
                tool_call_id: m.tool_call_id.filter(|t| !t.is_empty()),
                audio_file_id: None,
                interrupted: false,
                created_at: at,
            };
            p.push(sink, message, None).await?;
        }
        if n < PAGE as usize {
            break;
        }
        start += PAGE;
    }
    if let Some(done) = part {
        done.close(sink).await?;
    }
    Ok(())
}

/// A member and its time, or why it cannot be imported.
fn parse(member: &[u8], score: &str) -> Result<(Member, DateTime<Utc>), String> {
    let m: Member = serde_json::from_slice(member).map_err(|e| format!("not a chat message: {e}"))?;
    if Role::parse(&m.role).is_none() {
        return Err(format!("role {:?} is not user, assistant, system or tool", m.role));
    }
    let nanos: f64 = score.parse().map_err(|_| format!("score {score:?} is not a number"))?;
    if !(nanos.is_finite() && nanos > 0.0 && nanos < i64::MAX as f64) {
        return Err(format!("score {score} is not a time in Unix nanoseconds"));
    }
    Ok((m, DateTime::from_timestamp_nanos(nanos as i64)))
}

/// `SCAN MATCH` treats `*?[]\` specially; a prefix may contain them.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_scores() {
        let (m, at) = parse(br#"{"role":"user","content":"\u4f60\u597d"}"#, "1740787200000000000").unwrap();
        assert_eq!((m.role.as_str(), m.content.as_deref()), ("user", Some("你好")));
        assert_eq!(at.to_rfc3339(), "2025-03-01T00:00:00+00:00");
        assert!(parse(br#"{"role":"robot","content":"x"}"#, "1").unwrap_err().contains("robot"));
        assert!(parse(b"not json", "1").unwrap_err().contains("not a chat message"));
        assert!(parse(br#"{"role":"user"}"#, "-5").is_err());
        assert_eq!(glob_escape("a*b:llm:"), "a\\*b:llm:");
    }
}
