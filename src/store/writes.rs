//! Writing what sessions produce, set-based. A batch of [`StoreOp`]s is committed in one
//! transaction: all of it or none of it. The batch is first sorted into rows per table, then
//! each table gets one statement for the whole batch (PostgreSQL: `UNNEST` of typed arrays, a
//! fixed text prepared once; SQLite: multi-row `VALUES`, chunked under its bound-parameter
//! limit), so a batch of 256 turns costs about as many round trips as a batch of one.
//!
//! The promises of the row-at-a-time writer stand: every insert is keyed by a
//! gateway-generated id and skips rows that already exist, so a batch retried after an
//! unknown outcome does not duplicate anything; a message whose `(session_id, sequence_num)`
//! is taken by a *different* message fails the batch (a bug to surface, not to paper over);
//! clip bytes are staged only while the clip is still pending; and writes for a conversation
//! deleted meanwhile are dropped, checked with one query for all of the batch's sessions.

mod pg;
mod sqlite;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::{ClipRecord, DeviceSighting, MessageRecord, SessionRecord, StoreOp};
use super::{Pool, Store, StoreError};

/// A message row: the message with the session and device it belongs to.
struct MessageRow<'a> {
    session_id: Uuid,
    device_id: &'a str,
    m: &'a MessageRecord,
}

/// A clip row: the clip with the session and device it belongs to.
struct ClipRow<'a> {
    session_id: Uuid,
    device_id: &'a str,
    c: &'a ClipRecord,
}

/// A device's sightings in one batch folded into one row, as if applied one after another:
/// `first_seen` from the first, `last_seen` from the last, each optional field from the last
/// sighting that had it. (PostgreSQL refuses to upsert the same key twice in one statement.)
struct DeviceRow<'a> {
    device_id: &'a str,
    client_id: Option<&'a str>,
    board: Option<&'a str>,
    firmware_version: Option<&'a str>,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

/// One batch's writes, table by table, in the order the ops came.
#[derive(Default)]
struct Rows<'a> {
    /// Every session a turn or a start or an end mentions (upserted: `DO NOTHING` if present).
    sessions: Vec<&'a SessionRecord>,
    messages: Vec<MessageRow<'a>>,
    clips: Vec<ClipRow<'a>>,
    /// Sessions ended, one entry per session (the last end wins, as it did row by row).
    ends: Vec<(Uuid, DateTime<Utc>)>,
    devices: Vec<DeviceRow<'a>>,
}

impl<'a> Rows<'a> {
    /// Sorts ops into rows, skipping those of deleted conversations.
    fn collect(ops: &'a [StoreOp], deleted: &HashSet<Uuid>) -> Self {
        let mut rows = Rows::default();
        let mut ends: HashMap<Uuid, usize> = HashMap::new();
        let mut devices: HashMap<&str, usize> = HashMap::new();
        for op in ops {
            if let Some(session) = op.session_id().filter(|s| deleted.contains(s)) {
                tracing::info!(session_id = %session, "write for a deleted conversation dropped");
                continue;
            }
            match op {
                StoreOp::Turn(turn) => {
                    let (session_id, device_id) = (turn.session.session_id, turn.device_id.as_str());
                    rows.sessions.push(&turn.session);
                    rows.messages.extend(turn.messages.iter().map(|m| MessageRow {
                        session_id,
                        device_id,
                        m,
                    }));
                    rows.clips.extend(turn.clips.iter().map(|c| ClipRow { session_id, device_id, c }));
                }
                StoreOp::SessionStarted(session) => rows.sessions.push(session),
                StoreOp::SessionEnded { session, ended_at } => {
                    rows.sessions.push(session);
                    match ends.get(&session.session_id) {
                        Some(&i) => rows.ends[i].1 = *ended_at,
                        None => {
                            ends.insert(session.session_id, rows.ends.len());
                            rows.ends.push((session.session_id, *ended_at));
                        }
                    }
                }
                StoreOp::DeviceSeen(d) => {
                    let DeviceSighting { device_id, client_id, board, firmware_version, seen_at } = d;
                    match devices.get(device_id.as_str()) {
                        Some(&i) => {
                            let row = &mut rows.devices[i];
                            row.client_id = client_id.as_deref().or(row.client_id);
                            row.board = board.as_deref().or(row.board);
                            row.firmware_version = firmware_version.as_deref().or(row.firmware_version);
                            row.last_seen = *seen_at;
                        }
                        None => {
                            devices.insert(device_id, rows.devices.len());
                            rows.devices.push(DeviceRow {
                                device_id,
                                client_id: client_id.as_deref(),
                                board: board.as_deref(),
                                firmware_version: firmware_version.as_deref(),
                                first_seen: *seen_at,
                                last_seen: *seen_at,
                            });
                        }
                    }
                }
            }
        }
        rows
    }
}

/// The distinct conversations a batch writes to.
fn session_ids(ops: &[StoreOp]) -> Vec<Uuid> {
    let mut seen = HashSet::new();
    ops.iter().filter_map(StoreOp::session_id).filter(|s| seen.insert(*s)).collect()
}

impl Store {
    /// Commits a batch of writes in one transaction.
    pub async fn write_batch(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let ids = session_ids(ops);
        match self.pool() {
            Pool::Postgres(pool) => {
                let mut tx = pool.begin_with(self.begin_write()).await?;
                let deleted = pg::deleted(&mut tx, &ids).await?;
                pg::write(&mut tx, &Rows::collect(ops, &deleted)).await?;
                tx.commit().await?;
            }
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin_with(self.begin_write()).await?;
                let deleted = sqlite::deleted(&mut tx, &ids).await?;
                sqlite::write(&mut tx, &Rows::collect(ops, &deleted)).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Commits one turn (a batch of one).
    pub async fn write_turn(&self, turn: super::model::TurnRecord) -> Result<(), StoreError> {
        self.write_batch(&[StoreOp::Turn(Box::new(turn))]).await
    }
}
