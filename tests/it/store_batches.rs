//! Set-based writes on both backends: large batches land whole (past SQLite's bound-parameter
//! limit), keep every promise of the row-at-a-time writer inside one batch (duplicates, a
//! deleted conversation, a taken sequence number, a device seen twice), and the writer drains a
//! backlog from many conversations without reordering any of them.

use chrono::{Duration as Days, Utc};
use uuid::Uuid;
use xiaozhi_gateway::store::model::{DeviceSighting, StoreOp, TurnRecord};
use xiaozhi_gateway::store::queries::Table;
use xiaozhi_gateway::store::writer::{StoreWriter, WriterConfig};

use crate::store_suite::{Kind, TestDb, conformance, session, turn};

fn op(t: TurnRecord) -> StoreOp {
    StoreOp::Turn(Box::new(t))
}

/// `(client_id, board, firmware_version)` of a device, read straight from the table.
async fn device_row(db: &TestDb, device: &str) -> (Option<String>, Option<String>, Option<String>) {
    if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_as("SELECT client_id, board, firmware_version FROM devices WHERE device_id = ?1")
            .bind(device)
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_as("SELECT client_id, board, firmware_version FROM devices WHERE device_id = $1")
            .bind(device)
            .fetch_one(&pool)
            .await
            .unwrap()
    }
}

/// 1,500 turns from 30 conversations in one batch: 3,000 messages and clips, more rows than
/// one SQLite statement can bind. Inside the batch: a turn twice (a retry), a conversation
/// deleted before the batch, a conversation ended twice, a device seen twice.
async fn a_large_mixed_batch_lands_whole(db: TestDb) {
    let device = "aa:00:00:00:05:01";
    let sessions: Vec<_> = (0..30).map(|_| session(device, Utc::now())).collect();
    let gone = session(device, Utc::now());
    db.store.write_turn(turn(&gone, 0, Utc::now())).await.unwrap();
    assert!(db.store.delete_session(gone.session_id).await.unwrap());

    let mut batch: Vec<StoreOp> = Vec::new();
    for i in 0..50 {
        for s in &sessions {
            batch.push(op(turn(s, i * 2, Utc::now())));
        }
    }
    let retried = match &batch[7] {
        StoreOp::Turn(t) => (**t).clone(),
        _ => unreachable!(),
    };
    batch.push(op(retried));
    batch.push(op(turn(&gone, 2, Utc::now())));
    let (first_end, last_end) = (Utc::now() - Days::seconds(5), Utc::now());
    batch.push(StoreOp::SessionEnded { session: sessions[0].clone(), ended_at: first_end });
    batch.push(StoreOp::SessionEnded { session: sessions[0].clone(), ended_at: last_end });
    let seen = |client: Option<&str>, board: Option<&str>| {
        StoreOp::DeviceSeen(DeviceSighting {
            device_id: device.into(),
            client_id: client.map(Into::into),
            board: board.map(Into::into),
            firmware_version: None,
            seen_at: Utc::now(),
        })
    };
    batch.push(seen(Some("client-1"), Some("board-a")));
    batch.push(seen(None, Some("board-b")));

    db.store.write_batch(&batch).await.unwrap();

    assert_eq!(db.store.device_counts(device).await.unwrap(), (30, 3000, 3000));
    assert_eq!(db.store.count_rows(Table::Staged, None).await.unwrap(), 3000);
    for s in &sessions {
        let seqs: Vec<i32> =
            db.store.session_messages(s.session_id).await.unwrap().iter().map(|m| m.sequence_num).collect();
        assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    }
    assert_eq!(db.store.session(gone.session_id).await.unwrap(), None, "deleted stays deleted");
    let ended = db.store.session(sessions[0].session_id).await.unwrap().unwrap();
    assert_eq!(ended.status, "ended");
    assert_eq!(ended.ended_at.map(|t| t.timestamp_micros()), Some(last_end.timestamp_micros()));
    assert_eq!(db.store.session(sessions[1].session_id).await.unwrap().unwrap().status, "active");
    let (client, board, firmware) = device_row(&db, device).await;
    assert_eq!((client.as_deref(), board.as_deref(), firmware), (Some("client-1"), Some("board-b"), None));

    // The same batch again (a retry after an unknown outcome) changes nothing.
    db.store.write_batch(&batch).await.unwrap();
    assert_eq!(db.store.device_counts(device).await.unwrap(), (30, 3000, 3000));
}

/// One message that takes another message's `(session_id, sequence_num)` fails the whole large
/// batch, and nothing of it stays.
async fn a_taken_sequence_number_fails_the_whole_batch(db: TestDb) {
    let device = "aa:00:00:00:05:02";
    let s = session(device, Utc::now());
    db.store.write_turn(turn(&s, 0, Utc::now())).await.unwrap();
    let others: Vec<_> = (0..20).map(|_| session(device, Utc::now())).collect();
    let mut batch: Vec<StoreOp> = (0..20)
        .flat_map(|i| others.iter().map(move |o| (o, i)))
        .map(|(o, i)| op(turn(o, i * 2, Utc::now())))
        .collect();
    let mut clash = turn(&s, 0, Utc::now());
    clash.messages[0].message_id = Uuid::now_v7();
    batch.insert(200, op(clash));
    let err = db.store.write_batch(&batch).await.unwrap_err();
    assert!(!err.is_transient(), "a constraint violation is not retried: {err}");
    assert_eq!(db.store.device_counts(device).await.unwrap(), (1, 2, 2), "only the earlier turn");
}

/// A backlog of 1,024 turns from 64 conversations, handed over at once: the writer takes it
/// in large batches (several transactions side by side on PostgreSQL) and every conversation
/// keeps its order.
async fn the_writer_drains_a_backlog_in_order(db: TestDb) {
    let (writer, _task) = StoreWriter::start(db.store.clone(), WriterConfig::new(db.dir.path()));
    let sessions: Vec<_> = (0..64).map(|d| session(&format!("aa:00:00:00:06:{d:02x}"), Utc::now())).collect();
    for i in 0..16 {
        for s in &sessions {
            writer.submit(op(turn(s, i * 2, Utc::now())));
        }
    }
    writer.flush().await;
    for s in &sessions {
        let msgs = db.store.session_messages(s.session_id).await.unwrap();
        let seqs: Vec<i32> = msgs.iter().map(|m| m.sequence_num).collect();
        assert_eq!(seqs, (0..32).collect::<Vec<_>>(), "session {}", s.session_id);
        assert!(msgs.windows(2).all(|w| w[0].created_at <= w[1].created_at), "created_at follows sequence");
    }
    let stats = writer.stats();
    assert_eq!(stats.backlog(), 0);
    assert_eq!(stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed), 0);
}

conformance!(
    a_large_mixed_batch_lands_whole,
    a_taken_sequence_number_fails_the_whole_batch,
    the_writer_drains_a_backlog_in_order,
);
