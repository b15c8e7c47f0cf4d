//! Reading the store: the device's recent messages and active system prompt (the assistant's
//! memory), sessions of a device (newest first, cursor pagination), messages and clips of a
//! session; and the deletions the admin API offers.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::model::{Page, Role, StoredClip, StoredMessage, StoredSession};
use super::{Store, StoreError, Ts, with_pool};

const MESSAGE_COLUMNS: &str = "message_id, session_id, device_id, sequence_num, role, content, multi_content, \
     tool_calls, tool_call_id, audio_file_id, interrupted, created_at";

macro_rules! message_from_row {
    ($r:expr) => {{
        let r = $r;
        let role: String = r.try_get("role")?;
        StoredMessage {
            message_id: r.try_get("message_id")?,
            session_id: r.try_get("session_id")?,
            device_id: r.try_get("device_id")?,
            sequence_num: r.try_get("sequence_num")?,
            role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
            content: r.try_get("content")?,
            multi_content: r.try_get("multi_content")?,
            tool_calls: r.try_get("tool_calls")?,
            tool_call_id: r.try_get("tool_call_id")?,
            audio_file_id: r.try_get("audio_file_id")?,
            interrupted: r.try_get("interrupted")?,
            created_at: r.try_get::<Ts, _>("created_at")?.0,
        }
    }};
}
pub(crate) use message_from_row;

macro_rules! session_from_row {
    ($r:expr) => {{
        let r = $r;
        StoredSession {
            session_id: r.try_get("session_id")?,
            device_id: r.try_get("device_id")?,
            agent_id: r.try_get("agent_id")?,
            started_at: r.try_get::<Ts, _>("started_at")?.0,
            ended_at: r.try_get::<Option<Ts>, _>("ended_at")?.map(|t| t.0),
            status: r.try_get("status")?,
            metadata: r.try_get("metadata")?,
            message_count: r.try_get("message_count")?,
        }
    }};
}
pub(crate) use session_from_row;

macro_rules! clip_from_row {
    ($r:expr) => {{
        let r = $r;
        StoredClip {
            file_id: r.try_get("file_id")?,
            session_id: r.try_get("session_id")?,
            message_id: r.try_get("message_id")?,
            device_id: r.try_get("device_id")?,
            bucket_name: r.try_get("bucket_name")?,
            object_key: r.try_get("object_key")?,
            file_type: r.try_get("file_type")?,
            file_size: r.try_get("file_size")?,
            duration_ms: r.try_get("duration_ms")?,
            sample_rate: r.try_get("sample_rate")?,
            channels: r.try_get("channels")?,
            source_type: r.try_get("source_type")?,
            transcription: r.try_get("transcription")?,
            checksum: r.try_get("checksum")?,
            upload_status: r.try_get("upload_status")?,
            upload_attempts: r.try_get("upload_attempts")?,
            last_error: r.try_get("last_error")?,
            uploaded_at: r.try_get::<Option<Ts>, _>("uploaded_at")?.map(|t| t.0),
            created_at: r.try_get::<Ts, _>("created_at")?.0,
        }
    }};
}

const CLIP_COLUMNS: &str = "file_id, session_id, message_id, device_id, bucket_name, object_key, file_type, file_size, \
     duration_ms, sample_rate, channels, source_type, transcription, checksum, upload_status, upload_attempts, last_error, \
     uploaded_at, created_at";

pub(crate) const SESSION_COLUMNS: &str = "s.session_id, s.device_id, s.agent_id, s.started_at, s.ended_at, s.status, s.metadata, \
     (SELECT COUNT(*) FROM conversation_messages m WHERE m.session_id = s.session_id) AS message_count";

/// Where a page continues: after (time, id) (sessions by start, messages by creation).
pub(crate) fn encode_cursor(started_at: DateTime<Utc>, session_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", started_at.timestamp_micros(), session_id))
}

/// Decodes a cursor; a malformed one is the caller's error.
pub fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = raw.split_once(':')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, Uuid::parse_str(id).ok()?))
}

impl Store {
    /// The device's last `limit` messages across its sessions, oldest first.
    pub async fn recent_messages(
        &self,
        device_id: &str,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM conversation_messages WHERE device_id = $1 \
                 ORDER BY created_at DESC, sequence_num DESC LIMIT $2"
            )
        });
        let mut out = with_pool!(self, p => {
            let rows = sqlx::query(self.sql(leak(&SQL))).bind(device_id).bind(limit).fetch_all(p).await?;
            rows.iter().map(|r| Ok(message_from_row!(r))).collect::<Result<Vec<_>, StoreError>>()?
        });
        out.reverse();
        Ok(out)
    }

    /// Messages of a session in speaking order.
    pub async fn session_messages(&self, session_id: Uuid) -> Result<Vec<StoredMessage>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM conversation_messages WHERE session_id = $1 ORDER BY sequence_num"
            )
        });
        Ok(with_pool!(self, p => {
            let rows = sqlx::query(self.sql(leak(&SQL))).bind(session_id).fetch_all(p).await?;
            rows.iter().map(|r| Ok(message_from_row!(r))).collect::<Result<Vec<_>, StoreError>>()?
        }))
    }

    /// One session.
    pub async fn session(&self, session_id: Uuid) -> Result<Option<StoredSession>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("SELECT {SESSION_COLUMNS} FROM conversation_sessions s WHERE s.session_id = $1")
        });
        Ok(with_pool!(self, p => {
            match sqlx::query(self.sql(leak(&SQL))).bind(session_id).fetch_optional(p).await? {
                Some(r) => Some(session_from_row!(&r)),
                None => None,
            }
        }))
    }

    /// Sessions, newest first, optionally of one device; `cursor` continues a listing (the
    /// unfiltered case of [`Store::list_sessions`]).
    pub async fn sessions(
        &self,
        device_id: Option<&str>,
        cursor: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Page<StoredSession>, StoreError> {
        let filter =
            super::listing::SessionFilter { device_id: device_id.map(str::to_owned), ..Default::default() };
        self.list_sessions(&filter, cursor, limit).await
    }

    /// The clips of a session.
    pub async fn session_clips(&self, session_id: Uuid) -> Result<Vec<StoredClip>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {CLIP_COLUMNS} FROM audio_files WHERE session_id = $1 ORDER BY created_at, file_id"
            )
        });
        Ok(with_pool!(self, p => {
            let rows = sqlx::query(self.sql(leak(&SQL))).bind(session_id).fetch_all(p).await?;
            rows.iter().map(|r| Ok(clip_from_row!(r))).collect::<Result<Vec<_>, StoreError>>()?
        }))
    }

    /// One clip's row.
    pub async fn clip(&self, file_id: Uuid) -> Result<Option<StoredClip>, StoreError> {
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| format!("SELECT {CLIP_COLUMNS} FROM audio_files WHERE file_id = $1"));
        Ok(with_pool!(self, p => {
            match sqlx::query(self.sql(leak(&SQL))).bind(file_id).fetch_optional(p).await? {
                Some(r) => Some(clip_from_row!(&r)),
                None => None,
            }
        }))
    }

    /// Whether an operator approved the device's activation (persisted across restarts).
    pub async fn device_activated(&self, device_id: &str) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM devices WHERE device_id = $1 AND activated";
        let n: i64 =
            with_pool!(self, p => sqlx::query_scalar(self.sql(SQL)).bind(device_id).fetch_one(p).await?);
        Ok(n > 0)
    }

    /// Records an operator's approval of the device's activation. Returns false for a device
    /// the store has never seen.
    pub async fn set_device_activated(&self, device_id: &str) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE devices SET activated = TRUE WHERE device_id = $1";
        let n = with_pool!(self, p => sqlx::query(self.sql(SQL)).bind(device_id).execute(p).await?.rows_affected());
        Ok(n > 0)
    }

    /// The device's active system prompt.
    pub async fn system_prompt(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        const SQL: &str = "SELECT prompt FROM system_prompts WHERE device_id = $1 AND is_active";
        Ok(with_pool!(self, p => sqlx::query_scalar(self.sql(SQL)).bind(device_id).fetch_optional(p).await?))
    }

    /// Replaces the device's active system prompt (the old one stays, inactive).
    pub async fn set_system_prompt(&self, device_id: &str, prompt: &str) -> Result<(), StoreError> {
        const DEACTIVATE: &str =
            "UPDATE system_prompts SET is_active = FALSE, updated_at = $2 WHERE device_id = $1 AND is_active";
        const INSERT: &str = "INSERT INTO system_prompts (prompt_id, device_id, prompt, is_active, created_at, updated_at) \
             VALUES ($1, $2, $3, TRUE, $4, $4)";
        let now = Ts(Utc::now());
        with_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            sqlx::query(self.sql(DEACTIVATE)).bind(device_id).bind(now).execute(&mut *tx).await?;
            sqlx::query(self.sql(INSERT)).bind(Uuid::now_v7()).bind(device_id).bind(prompt).bind(now).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes a session's rows; its objects are queued for deletion in the same transaction,
    /// and the session is remembered as deleted so that a late write cannot bring it back.
    /// Returns whether the session existed.
    pub async fn delete_session(&self, session_id: Uuid) -> Result<bool, StoreError> {
        const QUEUE: &str = "INSERT INTO object_deletions (object_key, bucket_name, queued_at) \
             SELECT object_key, bucket_name, $2 FROM audio_files WHERE session_id = $1 ON CONFLICT (object_key) DO NOTHING";
        const DELETE: &str = "DELETE FROM conversation_sessions WHERE session_id = $1";
        const TOMBSTONE: &str = "INSERT INTO deleted_sessions (session_id, deleted_at) \
             SELECT session_id, $2 FROM conversation_sessions WHERE session_id = $1 \
             ON CONFLICT (session_id) DO NOTHING";
        let now = Ts(Utc::now());
        let n = with_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            sqlx::query(self.sql(QUEUE)).bind(session_id).bind(now).execute(&mut *tx).await?;
            sqlx::query(self.sql(TOMBSTONE)).bind(session_id).bind(now).execute(&mut *tx).await?;
            let n = sqlx::query(self.sql(DELETE)).bind(session_id).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }

    /// Forgets a device: every session, message, clip row (objects queued for deletion),
    /// prompt and the device row. Returns the number of sessions deleted.
    pub async fn delete_device_data(&self, device_id: &str) -> Result<u64, StoreError> {
        const QUEUE: &str = "INSERT INTO object_deletions (object_key, bucket_name, queued_at) \
             SELECT object_key, bucket_name, $2 FROM audio_files WHERE device_id = $1 ON CONFLICT (object_key) DO NOTHING";
        const SESSIONS: &str = "DELETE FROM conversation_sessions WHERE device_id = $1";
        const TOMBSTONES: &str = "INSERT INTO deleted_sessions (session_id, deleted_at) \
             SELECT session_id, $2 FROM conversation_sessions WHERE device_id = $1 \
             ON CONFLICT (session_id) DO NOTHING";
        const PROMPTS: &str = "DELETE FROM system_prompts WHERE device_id = $1";
        const DEVICE: &str = "DELETE FROM devices WHERE device_id = $1";
        let now = Ts(Utc::now());
        Ok(with_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            sqlx::query(self.sql(QUEUE)).bind(device_id).bind(now).execute(&mut *tx).await?;
            sqlx::query(self.sql(TOMBSTONES)).bind(device_id).bind(now).execute(&mut *tx).await?;
            let n = sqlx::query(self.sql(SESSIONS)).bind(device_id).execute(&mut *tx).await?.rows_affected();
            sqlx::query(self.sql(PROMPTS)).bind(device_id).execute(&mut *tx).await?;
            sqlx::query(self.sql(DEVICE)).bind(device_id).execute(&mut *tx).await?;
            tx.commit().await?;
            n
        }))
    }

    /// A device's sessions, messages and clips, counted in one statement (one snapshot).
    pub async fn device_counts(&self, device_id: &str) -> Result<(i64, i64, i64), StoreError> {
        const SQL: &str = "SELECT (SELECT COUNT(*) FROM conversation_sessions WHERE device_id = $1) AS s, \
             (SELECT COUNT(*) FROM conversation_messages WHERE device_id = $1) AS m, \
             (SELECT COUNT(*) FROM audio_files WHERE device_id = $1) AS c";
        Ok(with_pool!(self, p => {
            let r = sqlx::query(self.sql(SQL)).bind(device_id).fetch_one(p).await?;
            (r.try_get("s")?, r.try_get("m")?, r.try_get("c")?)
        }))
    }

    /// Row counts by table (operators and tests).
    pub async fn count_rows(&self, table: Table, device_id: Option<&str>) -> Result<i64, StoreError> {
        let sql = match table {
            Table::Sessions => {
                "SELECT COUNT(*) FROM conversation_sessions WHERE ($1 IS NULL OR device_id = $1)"
            }
            Table::Messages => {
                "SELECT COUNT(*) FROM conversation_messages WHERE ($1 IS NULL OR device_id = $1)"
            }
            Table::Clips => "SELECT COUNT(*) FROM audio_files WHERE ($1 IS NULL OR device_id = $1)",
            Table::Staged => "SELECT COUNT(*) FROM audio_staging",
            Table::Devices => "SELECT COUNT(*) FROM devices WHERE ($1 IS NULL OR device_id = $1)",
            Table::ObjectDeletions => "SELECT COUNT(*) FROM object_deletions",
        };
        let needs_arg = sql.contains("$1");
        Ok(with_pool!(self, p => {
            let q = sqlx::query_scalar(self.sql(sql));
            let q = if needs_arg { q.bind(device_id) } else { q };
            q.fetch_one(p).await?
        }))
    }
}

/// Tables [`Store::count_rows`] can count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Sessions,
    Messages,
    Clips,
    Staged,
    Devices,
    ObjectDeletions,
}

/// A `LazyLock<String>`'s contents as `&'static str` (statics live forever).
pub(crate) fn leak(s: &'static std::sync::LazyLock<String>) -> &'static str {
    s.as_str()
}
