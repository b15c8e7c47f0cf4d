//! The PostgreSQL side of set-based writes: one statement per table per batch, each taking
//! its rows as typed arrays (`UNNEST($1::uuid[], $2::text[], …)`). The statement text never
//! changes with the batch size, so each is prepared once per connection.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::Rows;
use crate::store::StoreError;

const DELETED: &str = "SELECT session_id FROM deleted_sessions WHERE session_id = ANY($1)";

const UPSERT_SESSIONS: &str = "INSERT INTO conversation_sessions (session_id, device_id, agent_id, started_at, status, metadata) \
     SELECT u.session_id, u.device_id, u.agent_id, u.started_at, 'active', u.metadata \
     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[]) \
         AS u(session_id, device_id, agent_id, started_at, metadata) \
     ON CONFLICT (session_id) DO NOTHING";

const INSERT_MESSAGES: &str = "INSERT INTO conversation_messages (message_id, session_id, device_id, sequence_num, role, content, \
     multi_content, tool_calls, tool_call_id, audio_file_id, interrupted, created_at) \
     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[], \
         $7::jsonb[], $8::jsonb[], $9::text[], $10::uuid[], $11::bool[], $12::timestamptz[]) \
     ON CONFLICT (message_id) DO NOTHING";

const INSERT_CLIPS: &str = "INSERT INTO audio_files (file_id, session_id, message_id, device_id, bucket_name, object_key, file_type, \
     file_size, duration_ms, sample_rate, channels, source_type, transcription, metadata, checksum, upload_status, \
     upload_attempts, next_attempt_at, created_at) \
     SELECT u.file_id, u.session_id, u.message_id, u.device_id, u.bucket_name, u.object_key, u.file_type, \
         u.file_size, u.duration_ms, u.sample_rate, u.channels, u.source_type, u.transcription, u.metadata, \
         u.checksum, 'pending', 0, u.created_at, u.created_at \
     FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::int8[], $9::int4[], $10::int4[], $11::int2[], $12::text[], $13::text[], $14::jsonb[], $15::text[], \
         $16::timestamptz[]) \
         AS u(file_id, session_id, message_id, device_id, bucket_name, object_key, file_type, file_size, \
             duration_ms, sample_rate, channels, source_type, transcription, metadata, checksum, created_at) \
     ON CONFLICT (file_id) DO NOTHING";

/// Staged only while the clip is still pending: a retried turn must not re-stage a clip the
/// upload workers already finished.
const STAGE_CLIPS: &str = "INSERT INTO audio_staging (file_id, data) \
     SELECT u.file_id, u.data FROM UNNEST($1::uuid[], $2::bytea[]) AS u(file_id, data) \
     WHERE EXISTS (SELECT 1 FROM audio_files a WHERE a.file_id = u.file_id AND a.upload_status = 'pending') \
     ON CONFLICT (file_id) DO NOTHING";

const END_SESSIONS: &str = "UPDATE conversation_sessions s SET ended_at = u.ended_at, status = 'ended' \
     FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(session_id, ended_at) WHERE s.session_id = u.session_id";

const UPSERT_DEVICES: &str = "INSERT INTO devices (device_id, client_id, board, firmware_version, first_seen, last_seen) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[]) \
     ON CONFLICT (device_id) DO UPDATE SET \
     last_seen = excluded.last_seen, client_id = COALESCE(excluded.client_id, devices.client_id), \
     board = COALESCE(excluded.board, devices.board), \
     firmware_version = COALESCE(excluded.firmware_version, devices.firmware_version)";

/// Which of `ids` were deleted through the admin API.
pub(super) async fn deleted(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<Uuid> = sqlx::query_scalar(DELETED).bind(ids).fetch_all(&mut *conn).await?;
    Ok(found.into_iter().collect())
}

/// Runs a batch's statements inside an open transaction.
pub(super) async fn write(conn: &mut PgConnection, rows: &Rows<'_>) -> Result<(), StoreError> {
    if !rows.sessions.is_empty() {
        let s = &rows.sessions;
        sqlx::query(UPSERT_SESSIONS)
            .bind(s.iter().map(|s| s.session_id).collect::<Vec<_>>())
            .bind(s.iter().map(|s| s.device_id.as_str()).collect::<Vec<_>>())
            .bind(s.iter().map(|s| s.agent_id.as_deref()).collect::<Vec<_>>())
            .bind(s.iter().map(|s| s.started_at).collect::<Vec<_>>())
            .bind(s.iter().map(|s| &s.metadata).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    if !rows.messages.is_empty() {
        let m = &rows.messages;
        sqlx::query(INSERT_MESSAGES)
            .bind(m.iter().map(|r| r.m.message_id).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.session_id).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.device_id).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.sequence_num).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.role.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.content.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.multi_content.as_ref()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.tool_calls.as_ref()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.tool_call_id.as_deref()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.audio_file_id).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.interrupted).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.m.created_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    if !rows.clips.is_empty() {
        let c = &rows.clips;
        sqlx::query(INSERT_CLIPS)
            .bind(c.iter().map(|r| r.c.file_id).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.session_id).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.message_id).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.device_id).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.bucket_name.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.object_key.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.file_type.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.data.len() as i64).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.duration_ms).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.sample_rate).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.channels).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.source_type.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.transcription.as_deref()).collect::<Vec<_>>())
            .bind(c.iter().map(|r| &r.c.metadata).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.checksum.as_str()).collect::<Vec<_>>())
            .bind(c.iter().map(|r| r.c.created_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        sqlx::query(STAGE_CLIPS)
            .bind(c.iter().map(|r| r.c.file_id).collect::<Vec<_>>())
            .bind(c.iter().map(|r| &r.c.data[..]).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    if !rows.ends.is_empty() {
        sqlx::query(END_SESSIONS)
            .bind(rows.ends.iter().map(|e| e.0).collect::<Vec<_>>())
            .bind(rows.ends.iter().map(|e| e.1).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    if !rows.devices.is_empty() {
        let d = &rows.devices;
        sqlx::query(UPSERT_DEVICES)
            .bind(d.iter().map(|d| d.device_id).collect::<Vec<_>>())
            .bind(d.iter().map(|d| d.client_id).collect::<Vec<_>>())
            .bind(d.iter().map(|d| d.board).collect::<Vec<_>>())
            .bind(d.iter().map(|d| d.firmware_version).collect::<Vec<_>>())
            .bind(d.iter().map(|d| d.first_seen).collect::<Vec<_>>())
            .bind(d.iter().map(|d| d.last_seen).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
