//! Writing what sessions produce. A batch of [`StoreOp`]s is committed in one transaction:
//! all of it or none of it. Every insert is keyed by a gateway-generated id and skips rows
//! that already exist, so a batch retried after an unknown outcome does not duplicate
//! anything. A message whose `(session_id, sequence_num)` is taken by a *different* message
//! fails the batch: that is a bug to surface, not to paper over.

use super::model::{ClipRecord, DeviceSighting, MessageRecord, SessionRecord, StoreOp, TurnRecord};
use super::{Store, StoreError, Ts, with_pool};

const UPSERT_SESSION: &str = "INSERT INTO conversation_sessions (session_id, device_id, agent_id, started_at, status, metadata) \
     VALUES ($1, $2, $3, $4, 'active', $5) ON CONFLICT (session_id) DO NOTHING";
const END_SESSION: &str =
    "UPDATE conversation_sessions SET ended_at = $2, status = 'ended' WHERE session_id = $1";
const INSERT_MESSAGE: &str = "INSERT INTO conversation_messages (message_id, session_id, device_id, sequence_num, role, content, \
     multi_content, tool_calls, tool_call_id, audio_file_id, interrupted, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (message_id) DO NOTHING";
const INSERT_CLIP: &str = "INSERT INTO audio_files (file_id, session_id, message_id, device_id, bucket_name, object_key, file_type, \
     file_size, duration_ms, sample_rate, channels, source_type, transcription, metadata, checksum, upload_status, \
     upload_attempts, next_attempt_at, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'pending', 0, $16, $16) \
     ON CONFLICT (file_id) DO NOTHING";
/// Staged only while the clip is still pending: a retried turn must not re-stage a clip the
/// upload workers already finished.
const STAGE_CLIP: &str = "INSERT INTO audio_staging (file_id, data) SELECT $1, $2 \
     WHERE EXISTS (SELECT 1 FROM audio_files WHERE file_id = $1 AND upload_status = 'pending') \
     ON CONFLICT (file_id) DO NOTHING";
const UPSERT_DEVICE: &str = "INSERT INTO devices (device_id, client_id, board, firmware_version, first_seen, last_seen) \
     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (device_id) DO UPDATE SET \
     last_seen = excluded.last_seen, client_id = COALESCE(excluded.client_id, devices.client_id), \
     board = COALESCE(excluded.board, devices.board), \
     firmware_version = COALESCE(excluded.firmware_version, devices.firmware_version)";

const DELETED: &str = "SELECT COUNT(*) FROM deleted_sessions WHERE session_id = $1";

/// Runs the writes of a batch inside an open transaction (`$conn` is `&mut *tx`). Writes for
/// a session deleted meanwhile (through the admin API) are dropped with a log line.
macro_rules! write_ops {
    ($store:expr, $conn:expr, $ops:expr) => {{
        for op in $ops {
            if let Some(session) = op.session_id() {
                let deleted: i64 =
                    sqlx::query_scalar($store.sql(DELETED)).bind(session).fetch_one(&mut *$conn).await?;
                if deleted > 0 {
                    tracing::info!(session_id = %session, "write for a deleted conversation dropped");
                    continue;
                }
            }
            match op {
                StoreOp::Turn(turn) => {
                    let TurnRecord { session, device_id, messages, clips } = &**turn;
                    upsert_session!($store, $conn, session);
                    for m in messages {
                        insert_message!($store, $conn, session, device_id, m);
                    }
                    for c in clips {
                        insert_clip!($store, $conn, session, device_id, c);
                    }
                }
                StoreOp::SessionStarted(session) => upsert_session!($store, $conn, session),
                StoreOp::SessionEnded { session, ended_at } => {
                    upsert_session!($store, $conn, session);
                    sqlx::query($store.sql(END_SESSION))
                        .bind(session.session_id)
                        .bind(Ts(*ended_at))
                        .execute(&mut *$conn)
                        .await?;
                }
                StoreOp::DeviceSeen(d) => {
                    let DeviceSighting { device_id, client_id, board, firmware_version, seen_at } = d;
                    sqlx::query($store.sql(UPSERT_DEVICE))
                        .bind(device_id)
                        .bind(client_id)
                        .bind(board)
                        .bind(firmware_version)
                        .bind(Ts(*seen_at))
                        .execute(&mut *$conn)
                        .await?;
                }
            }
        }
    }};
}

macro_rules! upsert_session {
    ($store:expr, $conn:expr, $s:expr) => {{
        let s: &SessionRecord = $s;
        sqlx::query($store.sql(UPSERT_SESSION))
            .bind(s.session_id)
            .bind(&s.device_id)
            .bind(&s.agent_id)
            .bind(Ts(s.started_at))
            .bind(&s.metadata)
            .execute(&mut *$conn)
            .await?;
    }};
}

macro_rules! insert_message {
    ($store:expr, $conn:expr, $session:expr, $device:expr, $m:expr) => {{
        let m: &MessageRecord = $m;
        sqlx::query($store.sql(INSERT_MESSAGE))
            .bind(m.message_id)
            .bind($session.session_id)
            .bind($device)
            .bind(m.sequence_num)
            .bind(m.role.as_str())
            .bind(&m.content)
            .bind(&m.multi_content)
            .bind(&m.tool_calls)
            .bind(&m.tool_call_id)
            .bind(m.audio_file_id)
            .bind(m.interrupted)
            .bind(Ts(m.created_at))
            .execute(&mut *$conn)
            .await?;
    }};
}

macro_rules! insert_clip {
    ($store:expr, $conn:expr, $session:expr, $device:expr, $c:expr) => {{
        let c: &ClipRecord = $c;
        sqlx::query($store.sql(INSERT_CLIP))
            .bind(c.file_id)
            .bind($session.session_id)
            .bind(c.message_id)
            .bind($device)
            .bind(&c.bucket_name)
            .bind(&c.object_key)
            .bind(&c.file_type)
            .bind(c.data.len() as i64)
            .bind(c.duration_ms)
            .bind(c.sample_rate)
            .bind(c.channels)
            .bind(c.source_type.as_str())
            .bind(&c.transcription)
            .bind(&c.metadata)
            .bind(&c.checksum)
            .bind(Ts(c.created_at))
            .execute(&mut *$conn)
            .await?;
        sqlx::query($store.sql(STAGE_CLIP)).bind(c.file_id).bind(&c.data[..]).execute(&mut *$conn).await?;
    }};
}

impl Store {
    /// Commits a batch of writes in one transaction.
    pub async fn write_batch(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            {
                let conn = &mut *tx;
                write_ops!(self, conn, ops);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Commits one turn (a batch of one).
    pub async fn write_turn(&self, turn: TurnRecord) -> Result<(), StoreError> {
        self.write_batch(&[StoreOp::Turn(Box::new(turn))]).await
    }
}
