//! The store conformance suite: the same tests against SQLite and a real PostgreSQL server
//! (a throwaway cluster the test process starts, or `DATABASE_URL`), each test on its own
//! fresh database.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;
use testkit::pg::Cluster;
use uuid::Uuid;
use xiaozhi_gateway::store::model::{
    ClipRecord, MessageRecord, Role, SessionRecord, SourceType, StoreOp, TurnRecord,
};
use xiaozhi_gateway::store::queries::{Table, decode_cursor};
use xiaozhi_gateway::store::writer::{StoreWriter, WriterConfig};
use xiaozhi_gateway::store::{PoolOptions, Store, StoreError};

/// A fresh database of one kind.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    pub dir: tempfile::TempDir,
    /// Present when the test may stop and restart the server.
    cluster: Option<Cluster>,
    /// SQLite: a connection holding an exclusive lock while the database is "away".
    lock: Option<sqlx::SqliteConnection>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl TestDb {
    pub async fn new(kind: Kind) -> Self {
        Self::open(kind, false).await
    }

    /// A database the test can take away and bring back.
    pub async fn with_outages(kind: Kind) -> Self {
        Self::open(kind, true).await
    }

    async fn open(kind: Kind, private: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (url, cluster) = match kind {
            Kind::Sqlite => (format!("sqlite://{}", dir.path().join("test.db").display()), None),
            Kind::Postgres if private => {
                let c = tokio::task::spawn_blocking(|| Cluster::start(false)).await.unwrap();
                (c.fresh_database(), Some(c))
            }
            Kind::Postgres => (tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap(), None),
        };
        // Outage tests want the retry path, not a long wait for a pool connection.
        let acquire_timeout = if private { Duration::from_millis(500) } else { Duration::from_secs(5) };
        let opts = PoolOptions { acquire_timeout, ..PoolOptions::default() };
        let store = Store::connect_url_with(&url, &opts).await.unwrap();
        store.migrate().await.unwrap();
        TestDb { store, url, dir, cluster, lock: None }
    }

    /// Makes the database refuse service (PostgreSQL stops; SQLite is locked exclusively).
    pub async fn go_away(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.stop();
        } else {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await.unwrap();
            self.lock = Some(conn);
        }
    }

    pub async fn come_back(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.restart();
        } else if let Some(mut conn) = self.lock.take() {
            sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
        }
    }
}

pub fn session(device: &str, started: DateTime<Utc>) -> SessionRecord {
    SessionRecord {
        session_id: Uuid::now_v7(),
        device_id: device.into(),
        agent_id: None,
        started_at: started,
        metadata: json!({"protocol_version": 1}),
    }
}

/// A turn: a user message with its clip and an assistant message with its clip.
pub fn turn(s: &SessionRecord, seq: i32, at: DateTime<Utc>) -> TurnRecord {
    let (user_id, reply_id) = (Uuid::now_v7(), Uuid::now_v7());
    let (user_clip, reply_clip) = (Uuid::now_v7(), Uuid::now_v7());
    let clip = |file_id: Uuid, message_id: Uuid, source: SourceType, bytes: &'static [u8]| ClipRecord {
        file_id,
        message_id,
        bucket_name: "xiaozhi-audio".into(),
        object_key: format!("{}/{}/{}/{file_id}.ogg", s.device_id, at.format("%Y-%m-%d"), s.session_id),
        file_type: "ogg".into(),
        duration_ms: 1200,
        sample_rate: 16_000,
        channels: 1,
        source_type: source,
        transcription: None,
        metadata: json!({}),
        checksum: format!("{:x}", bytes.len()),
        data: Bytes::from_static(bytes),
        created_at: at,
    };
    let message = |id: Uuid, seq: i32, role: Role, content: &str, clip: Uuid| MessageRecord {
        message_id: id,
        sequence_num: seq,
        role,
        content: content.into(),
        multi_content: None,
        tool_calls: None,
        tool_call_id: None,
        audio_file_id: Some(clip),
        interrupted: false,
        created_at: at,
    };
    TurnRecord {
        session: s.clone(),
        device_id: s.device_id.clone(),
        messages: vec![
            message(user_id, seq, Role::User, &format!("user says {seq}"), user_clip),
            message(reply_id, seq + 1, Role::Assistant, &format!("assistant says {}", seq + 1), reply_clip),
        ],
        clips: vec![
            clip(user_clip, user_id, SourceType::User, b"OggS user clip bytes"),
            clip(reply_clip, reply_id, SourceType::Tts, b"OggS reply clip bytes"),
        ],
    }
}

fn op(t: TurnRecord) -> StoreOp {
    StoreOp::Turn(Box::new(t))
}

async fn counts(db: &TestDb, device: Option<&str>) -> (i64, i64, i64) {
    let s = &db.store;
    (
        s.count_rows(Table::Sessions, device).await.unwrap(),
        s.count_rows(Table::Messages, device).await.unwrap(),
        s.count_rows(Table::Clips, device).await.unwrap(),
    )
}

async fn a_turn_lands_whole_and_linked(db: TestDb) {
    let s = session("aa:00:00:00:00:01", Utc::now());
    let t = turn(&s, 0, Utc::now());
    db.store.write_turn(t.clone()).await.unwrap();
    let msgs = db.store.session_messages(s.session_id).await.unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!((msgs[0].role, msgs[1].role), (Role::User, Role::Assistant));
    assert_eq!((msgs[0].sequence_num, msgs[1].sequence_num), (0, 1));
    let clips = db.store.session_clips(s.session_id).await.unwrap();
    assert_eq!(clips.len(), 2);
    for m in &msgs {
        let clip =
            clips.iter().find(|c| Some(c.file_id) == m.audio_file_id).expect("message points at its clip");
        assert_eq!(clip.message_id, m.message_id, "clip points back at its message");
        assert_eq!(clip.upload_status, "pending");
        assert!(clip.file_size > 0);
    }
    assert_eq!(db.store.count_rows(Table::Staged, None).await.unwrap(), 2, "clip bytes staged with the turn");
    let stored = db.store.session(s.session_id).await.unwrap().unwrap();
    assert_eq!(stored.status, "active");
    assert_eq!(stored.message_count, 2);
    assert_eq!(stored.metadata, json!({"protocol_version": 1}));

    let ended = Utc::now();
    db.store.write_batch(&[StoreOp::SessionEnded { session: s.clone(), ended_at: ended }]).await.unwrap();
    let stored = db.store.session(s.session_id).await.unwrap().unwrap();
    assert_eq!(stored.status, "ended");
    assert_eq!(stored.ended_at.unwrap().timestamp_micros(), ended.timestamp_micros());
}

async fn a_failing_turn_leaves_nothing(db: TestDb) {
    let s = session("aa:00:00:00:00:02", Utc::now());
    let good = turn(&s, 0, Utc::now());
    let mut bad = turn(&s, 2, Utc::now());
    bad.messages[1].sequence_num = bad.messages[0].sequence_num; // two messages, one slot
    let err = db.store.write_batch(&[op(good), op(bad)]).await.unwrap_err();
    assert!(!err.is_transient(), "a constraint violation is not retried: {err}");
    assert_eq!(counts(&db, None).await, (0, 0, 0), "the whole batch rolled back");
    assert_eq!(db.store.count_rows(Table::Staged, None).await.unwrap(), 0);
}

/// A writer killed at any point of its transaction leaves all of a batch or none of it.
async fn a_writer_killed_mid_transaction_leaves_all_or_nothing(db: TestDb) {
    let store = db.store.clone();
    for round in 0..12u64 {
        let s = session(&format!("aa:00:00:00:01:{round:02}"), Utc::now());
        let batch: Vec<StoreOp> = (0..20).map(|i| op(turn(&s, i * 2, Utc::now()))).collect();
        let st = store.clone();
        let task = tokio::spawn(async move { st.write_batch(&batch).await });
        tokio::time::sleep(Duration::from_micros(round * 900)).await;
        task.abort();
        let _ = task.await;
        let (sessions, messages, clips) = db.store.device_counts(&s.device_id).await.unwrap();
        assert!(
            (sessions, messages, clips) == (0, 0, 0) || (sessions, messages, clips) == (1, 40, 40),
            "round {round}: partial batch ({sessions}, {messages}, {clips})"
        );
    }
}

async fn concurrent_sessions_keep_their_own_order(db: TestDb) {
    let (writer, _task) = StoreWriter::start(db.store.clone(), WriterConfig::new(db.dir.path()));
    let mut tasks = Vec::new();
    let mut sessions = Vec::new();
    for d in 0..16 {
        let s = session(&format!("aa:00:00:00:02:{d:02}"), Utc::now());
        sessions.push(s.clone());
        let w = writer.clone();
        tasks.push(tokio::spawn(async move {
            for t in 0..10 {
                w.submit(op(turn(&s, t * 2, Utc::now())));
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    writer.flush().await;
    for s in sessions {
        let msgs = db.store.session_messages(s.session_id).await.unwrap();
        let seqs: Vec<i32> = msgs.iter().map(|m| m.sequence_num).collect();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "session {}", s.session_id);
        assert!(msgs.windows(2).all(|w| w[0].created_at <= w[1].created_at), "created_at follows sequence");
    }
    assert_eq!(writer.stats().backlog(), 0);
}

async fn a_retried_turn_is_not_duplicated(db: TestDb) {
    let s = session("aa:00:00:00:00:03", Utc::now());
    let t = turn(&s, 0, Utc::now());
    for _ in 0..3 {
        db.store.write_turn(t.clone()).await.unwrap();
    }
    let (a, b) = (db.store.clone(), db.store.clone());
    let (t1, t2) = (t.clone(), t.clone());
    let (r1, r2) = tokio::join!(a.write_turn(t1), b.write_turn(t2));
    // Concurrent duplicates may meet a unique key; whichever way, one copy remains.
    let _ = (r1, r2);
    assert_eq!(counts(&db, None).await, (1, 2, 2));
    assert_eq!(db.store.count_rows(Table::Staged, None).await.unwrap(), 2);

    // A retry after the clip was uploaded does not stage it again.
    db.store.mark_uploaded(t.clips[0].file_id, Utc::now()).await.unwrap();
    db.store.write_turn(t.clone()).await.unwrap();
    assert_eq!(db.store.count_rows(Table::Staged, None).await.unwrap(), 1);
}

/// A reply that finishes after its conversation was deleted, or a spilled write replayed
/// later, must not bring the conversation back; other conversations are written as usual.
async fn a_deleted_conversation_stays_deleted(db: TestDb) {
    let device = "aa:00:00:00:00:0a";
    let s = session(device, Utc::now());
    db.store.write_turn(turn(&s, 0, Utc::now())).await.unwrap();
    assert!(db.store.delete_session(s.session_id).await.unwrap());
    let late =
        [op(turn(&s, 2, Utc::now())), StoreOp::SessionEnded { session: s.clone(), ended_at: Utc::now() }];
    db.store.write_batch(&late).await.unwrap();
    assert_eq!(db.store.session(s.session_id).await.unwrap(), None, "the deleted conversation stays deleted");
    assert!(db.store.session_messages(s.session_id).await.unwrap().is_empty());
    assert_eq!(counts(&db, Some(device)).await, (0, 0, 0));

    // Forgetting a device: its conversations stay gone too, while a new one of the same
    // device (it reconnects later) is kept.
    let (old, new) = (session(device, Utc::now()), session(device, Utc::now()));
    db.store.write_turn(turn(&old, 0, Utc::now())).await.unwrap();
    db.store.delete_device_data(device).await.unwrap();
    db.store.write_batch(&[op(turn(&old, 2, Utc::now())), op(turn(&new, 0, Utc::now()))]).await.unwrap();
    assert_eq!(db.store.session(old.session_id).await.unwrap(), None);
    assert_eq!(db.store.session_messages(new.session_id).await.unwrap().len(), 2);
}

async fn the_database_going_away_loses_no_turn(mut db: TestDb) {
    let mut cfg = WriterConfig::new(db.dir.path());
    cfg.queue_capacity = 8; // small, so that the outage also exercises the spill to disk
    let (writer, _task) = StoreWriter::start(db.store.clone(), cfg);
    let s = session("aa:00:00:00:00:04", Utc::now());
    writer.submit(op(turn(&s, 0, Utc::now())));
    writer.flush().await;
    db.go_away().await;
    for t in 1..30 {
        writer.submit(op(turn(&s, t * 2, Utc::now())));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(writer.stats().backlog() > 0, "nothing could have been written");
    db.come_back().await;
    tokio::time::timeout(Duration::from_secs(60), writer.flush()).await.expect("writer caught up");
    // Spilled ops are replayed in the same flush.
    for _ in 0..100 {
        if writer.stats().backlog() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer.flush().await;
    }
    let msgs = db.store.session_messages(s.session_id).await.unwrap();
    assert_eq!(msgs.len(), 60, "every turn landed");
    assert_eq!(writer.stats().dead_lettered.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(writer.stats().commit_errors.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

async fn retention_deletes_exactly_what_expired(db: TestDb) {
    let now = Utc::now();
    let old_day = now - chrono::Duration::days(40);
    let old = session("aa:00:00:00:00:05", old_day);
    let fresh = session("aa:00:00:00:00:05", now);
    let old_turn = turn(&old, 0, old_day);
    db.store.write_turn(old_turn.clone()).await.unwrap();
    db.store.write_batch(&[StoreOp::SessionEnded { session: old.clone(), ended_at: old_day }]).await.unwrap();
    // A long session: one old turn, one fresh turn.
    let long = session("aa:00:00:00:00:06", old_day);
    db.store.write_turn(turn(&long, 0, old_day)).await.unwrap();
    db.store.write_turn(turn(&long, 2, now)).await.unwrap();
    db.store.write_turn(turn(&fresh, 0, now)).await.unwrap();

    let cutoff = now - chrono::Duration::days(30);
    let (a, b) = (db.store.clone(), db.store.clone());
    let (r1, r2) = tokio::join!(a.expire_before(cutoff), b.expire_before(cutoff));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(r1.messages + r2.messages, 4, "two old turns of two messages");
    assert_eq!(r1.clips + r2.clips, 4);
    assert_eq!(r1.sessions + r2.sessions, 1, "only the ended, emptied session goes");
    assert!(db.store.session(old.session_id).await.unwrap().is_none());
    assert_eq!(db.store.session_messages(long.session_id).await.unwrap().len(), 2);
    assert_eq!(db.store.session_messages(fresh.session_id).await.unwrap().len(), 2);
    assert_eq!(db.store.count_rows(Table::ObjectDeletions, None).await.unwrap(), 4, "expired objects queued");
    let keys: HashSet<String> =
        db.store.pending_object_deletions(100).await.unwrap().into_iter().map(|d| d.object_key).collect();
    assert!(old_turn.clips.iter().all(|c| keys.contains(&c.object_key)));
    let again = db.store.expire_before(cutoff).await.unwrap();
    assert_eq!((again.messages, again.clips, again.sessions), (0, 0, 0), "idempotent");
}

async fn history_queries_serve_memory_and_admin(db: TestDb) {
    let device = "aa:00:00:00:00:07";
    let t0 = Utc::now() - chrono::Duration::minutes(30);
    let mut all_sessions = Vec::new();
    for i in 0..7 {
        let start = t0 + chrono::Duration::minutes(i * 3);
        let s = session(device, start);
        db.store.write_turn(turn(&s, 0, start)).await.unwrap();
        db.store.write_turn(turn(&s, 2, start + chrono::Duration::seconds(10))).await.unwrap();
        all_sessions.push(s);
    }
    db.store.write_turn(turn(&session("other", t0), 0, t0)).await.unwrap();

    let recent = db.store.recent_messages(device, 5).await.unwrap();
    assert_eq!(recent.len(), 5);
    assert!(
        recent
            .windows(2)
            .all(|w| (w[0].created_at, w[0].sequence_num) < (w[1].created_at, w[1].sequence_num))
    );
    assert_eq!(recent.last().unwrap().session_id, all_sessions.last().unwrap().session_id);
    assert_eq!(recent.last().unwrap().content, "assistant says 3");

    // Sessions newest first, page by page, each exactly once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = db.store.sessions(Some(device), cursor, 3).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|s| s.session_id));
        match page.next_cursor {
            Some(c) => cursor = Some(decode_cursor(&c).expect("cursor decodes")),
            None => break,
        }
    }
    let expected: Vec<Uuid> = all_sessions.iter().rev().map(|s| s.session_id).collect();
    assert_eq!(seen, expected);
    assert_eq!(db.store.sessions(None, None, 100).await.unwrap().items.len(), 8);
    assert!(decode_cursor("garbage").is_none());

    assert_eq!(db.store.system_prompt(device).await.unwrap(), None);
    db.store.set_system_prompt(device, "You are a pirate.").await.unwrap();
    db.store.set_system_prompt(device, "You are a poet.").await.unwrap();
    assert_eq!(db.store.system_prompt(device).await.unwrap().as_deref(), Some("You are a poet."));

    assert!(db.store.delete_session(all_sessions[0].session_id).await.unwrap());
    assert!(!db.store.delete_session(all_sessions[0].session_id).await.unwrap());
    assert_eq!(db.store.count_rows(Table::ObjectDeletions, None).await.unwrap(), 4);
    assert_eq!(db.store.delete_device_data(device).await.unwrap(), 6);
    assert_eq!(counts(&db, Some(device)).await, (0, 0, 0));
    assert_eq!(db.store.system_prompt(device).await.unwrap(), None);
    assert_eq!(counts(&db, Some("other")).await, (1, 2, 2), "other devices untouched");
}

async fn upload_claims_are_exclusive_and_outcomes_recorded(db: TestDb) {
    let s = session("aa:00:00:00:00:08", Utc::now());
    for t in 0..10 {
        db.store.write_turn(turn(&s, t * 2, Utc::now())).await.unwrap();
    }
    let now = Utc::now() + chrono::Duration::seconds(1);
    let lease = now + chrono::Duration::seconds(60);
    let mut claimers = Vec::new();
    for _ in 0..4 {
        let st = db.store.clone();
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = st.claim_pending_clips(3, now, lease).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.file_id));
            }
        }));
    }
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    let unique: HashSet<_> = claimed.iter().collect();
    assert_eq!(claimed.len(), 20, "every clip claimed");
    assert_eq!(unique.len(), 20, "no clip claimed twice");
    assert!(
        db.store.claim_pending_clips(10, now, lease).await.unwrap().is_empty(),
        "leased clips are not due"
    );

    let backlog = db.store.upload_backlog().await.unwrap();
    assert_eq!(backlog.pending, 20);
    assert!(backlog.oldest_pending.is_some());

    assert!(db.store.mark_uploaded(claimed[0], Utc::now()).await.unwrap());
    assert!(!db.store.mark_uploaded(claimed[0], Utc::now()).await.unwrap(), "only once");
    db.store.mark_attempt_failed(claimed[1], "503 Slow Down", Some(now)).await.unwrap();
    db.store.mark_attempt_failed(claimed[2], "403 Forbidden", None).await.unwrap();
    let again = db.store.claim_pending_clips(10, now, lease).await.unwrap();
    assert_eq!(again.iter().map(|c| c.file_id).collect::<Vec<_>>(), vec![claimed[1]]);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(&again[0].data[..4], b"OggS");
    let failed = db.store.clip(claimed[2]).await.unwrap().unwrap();
    assert_eq!(
        (failed.upload_status.as_str(), failed.last_error.as_deref()),
        ("failed", Some("403 Forbidden"))
    );
    let uploaded = db.store.clip(claimed[0]).await.unwrap().unwrap();
    assert_eq!(uploaded.upload_status, "uploaded");
    assert!(uploaded.uploaded_at.is_some());
    assert_eq!(db.store.count_rows(Table::Staged, None).await.unwrap(), 19, "uploaded bytes unstaged");
    let backlog = db.store.upload_backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.failed), (18, 1));
    assert_eq!(db.store.retry_failed_clips(Utc::now()).await.unwrap(), 1);
}

async fn migrations_are_idempotent_and_newer_schemas_refused(db: TestDb) {
    db.store.migrate().await.unwrap();
    let v = db.store.applied_version().await.unwrap();
    assert_eq!(v, xiaozhi_gateway::store::schema_version());
    let sql = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
               VALUES (9999, 'from the future', TRUE, X'00', 0)";
    let pg_sql = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
               VALUES (9999, 'from the future', TRUE, '\\x00', 0)";
    let fresh = Store::connect_url(&db.url).await.unwrap();
    let res = match fresh.kind() {
        xiaozhi_gateway::config::DatabaseKind::Sqlite => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query(sql).execute(&mut c).await.map(|_| ())
        }
        xiaozhi_gateway::config::DatabaseKind::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(pg_sql).execute(&mut c).await.map(|_| ())
        }
    };
    res.unwrap();
    match fresh.migrate().await {
        Err(StoreError::SchemaTooNew { found: 9999, .. }) => {}
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::TestDb::new(super::Kind::Sqlite).await).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::TestDb::new(super::Kind::Postgres).await).await } )*
        }
    };
}
pub(crate) use conformance;

conformance!(
    a_turn_lands_whole_and_linked,
    a_failing_turn_leaves_nothing,
    a_writer_killed_mid_transaction_leaves_all_or_nothing,
    concurrent_sessions_keep_their_own_order,
    a_retried_turn_is_not_duplicated,
    retention_deletes_exactly_what_expired,
    history_queries_serve_memory_and_admin,
    upload_claims_are_exclusive_and_outcomes_recorded,
    migrations_are_idempotent_and_newer_schemas_refused,
    a_deleted_conversation_stays_deleted,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outage_loses_no_turn() {
    the_database_going_away_loses_no_turn(TestDb::with_outages(Kind::Sqlite).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_no_turn() {
    the_database_going_away_loses_no_turn(TestDb::with_outages(Kind::Postgres).await).await
}

/// At exit with the database away, what the writer still holds goes to disk, and the next
/// writer (the restarted gateway) commits it.
async fn writes_abandoned_at_exit_are_committed_after_restart(mut db: TestDb) {
    let (writer, task) = StoreWriter::start(db.store.clone(), WriterConfig::new(db.dir.path()));
    let s = session("aa:00:00:00:00:09", Utc::now());
    db.go_away().await;
    for t in 0..5 {
        writer.submit(op(turn(&s, t * 2, Utc::now())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.abandon();
    tokio::time::timeout(Duration::from_secs(30), writer.flush()).await.expect("abandoned writes go to disk");
    assert_eq!(writer.stats().spilled.load(std::sync::atomic::Ordering::Relaxed), 5);
    // The process exits: the writer task ends once its last handle is gone.
    drop(writer);
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("the writer ends").unwrap();
    assert_eq!(
        std::fs::read_dir(db.dir.path().join("store-spill")).unwrap().count(),
        5,
        "one file per write"
    );
    db.come_back().await;
    let (again, _task) = StoreWriter::start(db.store.clone(), WriterConfig::new(db.dir.path()));
    again.submit(StoreOp::SessionEnded { session: s.clone(), ended_at: Utc::now() });
    again.flush().await;
    for _ in 0..100 {
        if db.store.session_messages(s.session_id).await.unwrap().len() == 10 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        again.flush().await;
    }
    panic!("spilled turns were not replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_abandoned_writes_survive_a_restart() {
    writes_abandoned_at_exit_are_committed_after_restart(TestDb::with_outages(Kind::Sqlite).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_abandoned_writes_survive_a_restart() {
    writes_abandoned_at_exit_are_committed_after_restart(TestDb::with_outages(Kind::Postgres).await).await
}
