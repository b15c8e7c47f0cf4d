//! The SQLite side of set-based writes: one multi-row `VALUES` statement per table per batch,
//! split into chunks that stay under SQLite's limit of bound parameters per statement.

use std::collections::HashSet;

use sqlx::query_builder::Separated;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::Rows;
use crate::store::{StoreError, Ts};

/// `SQLITE_MAX_VARIABLE_NUMBER` of the bundled SQLite (3.32 and later).
const MAX_PARAMS: usize = 32_766;

type Row<'b> = Separated<'b, Sqlite, &'static str>;

/// `head VALUES (…), (…) tail` for one chunk of rows.
fn values<T>(head: &str, rows: &[T], tail: &str, push: &mut impl FnMut(Row<'_>, &T)) -> QueryBuilder<Sqlite> {
    let mut qb = QueryBuilder::new(head);
    qb.push_values(rows, push);
    qb.push(tail);
    qb
}

/// Rows per statement for a row of `binds` parameters.
fn chunk(binds: usize) -> usize {
    (MAX_PARAMS / binds).max(1)
}

/// Runs `head VALUES … tail` over all `rows`, a chunk at a time.
async fn execute<T>(
    conn: &mut SqliteConnection,
    head: &str,
    rows: &[T],
    binds: usize,
    tail: &str,
    mut push: impl FnMut(Row<'_>, &T),
) -> Result<(), StoreError> {
    for part in rows.chunks(chunk(binds)) {
        values(head, part, tail, &mut push).build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Which of `ids` were deleted through the admin API.
pub(super) async fn deleted(conn: &mut SqliteConnection, ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
    let mut found = HashSet::new();
    for part in ids.chunks(chunk(1)) {
        let mut qb = values(
            "SELECT d.session_id FROM deleted_sessions d JOIN (",
            part,
            ") AS v ON d.session_id = v.column1",
            &mut |mut b: Row<'_>, id: &Uuid| {
                b.push_bind(*id);
            },
        );
        let rows: Vec<Uuid> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
        found.extend(rows);
    }
    Ok(found)
}

/// Runs a batch's statements inside an open transaction.
pub(super) async fn write(conn: &mut SqliteConnection, rows: &Rows<'_>) -> Result<(), StoreError> {
    if !rows.sessions.is_empty() {
        execute(
            conn,
            "INSERT INTO conversation_sessions (session_id, device_id, agent_id, started_at, status, metadata) ",
            &rows.sessions,
            5,
            " ON CONFLICT (session_id) DO NOTHING",
            |mut b, s| {
                b.push_bind(s.session_id)
                    .push_bind(s.device_id.clone())
                    .push_bind(s.agent_id.clone())
                    .push_bind(Ts(s.started_at))
                    .push("'active'")
                    .push_bind(s.metadata.clone());
            },
        )
        .await?;
    }
    if !rows.messages.is_empty() {
        execute(
            conn,
            "INSERT INTO conversation_messages (message_id, session_id, device_id, sequence_num, role, content, \
             multi_content, tool_calls, tool_call_id, audio_file_id, interrupted, created_at) ",
            &rows.messages,
            12,
            " ON CONFLICT (message_id) DO NOTHING",
            |mut b, r| {
                let m = r.m;
                b.push_bind(m.message_id)
                    .push_bind(r.session_id)
                    .push_bind(r.device_id.to_owned())
                    .push_bind(m.sequence_num)
                    .push_bind(m.role.as_str())
                    .push_bind(m.content.clone())
                    .push_bind(m.multi_content.clone())
                    .push_bind(m.tool_calls.clone())
                    .push_bind(m.tool_call_id.clone())
                    .push_bind(m.audio_file_id)
                    .push_bind(m.interrupted)
                    .push_bind(Ts(m.created_at));
            },
        )
        .await?;
    }
    if !rows.clips.is_empty() {
        execute(
            conn,
            "INSERT INTO audio_files (file_id, session_id, message_id, device_id, bucket_name, object_key, file_type, \
             file_size, duration_ms, sample_rate, channels, source_type, transcription, metadata, checksum, \
             upload_status, upload_attempts, next_attempt_at, created_at) ",
            &rows.clips,
            17,
            " ON CONFLICT (file_id) DO NOTHING",
            |mut b, r| {
                let c = r.c;
                b.push_bind(c.file_id)
                    .push_bind(r.session_id)
                    .push_bind(c.message_id)
                    .push_bind(r.device_id.to_owned())
                    .push_bind(c.bucket_name.clone())
                    .push_bind(c.object_key.clone())
                    .push_bind(c.file_type.clone())
                    .push_bind(c.data.len() as i64)
                    .push_bind(c.duration_ms)
                    .push_bind(c.sample_rate)
                    .push_bind(c.channels)
                    .push_bind(c.source_type.as_str())
                    .push_bind(c.transcription.clone())
                    .push_bind(c.metadata.clone())
                    .push_bind(c.checksum.clone())
                    .push("'pending'")
                    .push("0")
                    .push_bind(Ts(c.created_at))
                    .push_bind(Ts(c.created_at));
            },
        )
        .await?;
        // Staged only while the clip is still pending: a retried turn must not re-stage a
        // clip the upload workers already finished.
        execute(
            conn,
            "INSERT INTO audio_staging (file_id, data) SELECT v.column1, v.column2 FROM (",
            &rows.clips,
            2,
            ") AS v WHERE EXISTS (SELECT 1 FROM audio_files a \
             WHERE a.file_id = v.column1 AND a.upload_status = 'pending') ON CONFLICT (file_id) DO NOTHING",
            |mut b, r| {
                b.push_bind(r.c.file_id).push_bind(r.c.data.to_vec());
            },
        )
        .await?;
    }
    if !rows.ends.is_empty() {
        execute(
            conn,
            "UPDATE conversation_sessions SET ended_at = v.column2, status = 'ended' FROM (",
            &rows.ends,
            2,
            ") AS v WHERE conversation_sessions.session_id = v.column1",
            |mut b, (id, at)| {
                b.push_bind(*id).push_bind(Ts(*at));
            },
        )
        .await?;
    }
    if !rows.devices.is_empty() {
        execute(
            conn,
            "INSERT INTO devices (device_id, client_id, board, firmware_version, first_seen, last_seen) ",
            &rows.devices,
            6,
            " ON CONFLICT (device_id) DO UPDATE SET \
             last_seen = excluded.last_seen, client_id = COALESCE(excluded.client_id, devices.client_id), \
             board = COALESCE(excluded.board, devices.board), \
             firmware_version = COALESCE(excluded.firmware_version, devices.firmware_version)",
            |mut b, d| {
                b.push_bind(d.device_id.to_owned())
                    .push_bind(d.client_id.map(str::to_owned))
                    .push_bind(d.board.map(str::to_owned))
                    .push_bind(d.firmware_version.map(str::to_owned))
                    .push_bind(Ts(d.first_seen))
                    .push_bind(Ts(d.last_seen));
            },
        )
        .await?;
    }
    Ok(())
}
