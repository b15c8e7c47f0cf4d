//! Turns committed per second, for both backends: one turn per transaction (what a quiet
//! gateway does, and a single turn's commit latency), batches of 32 and 256 turns, and the
//! store writer draining a backlog of 1,024 turns from 64 sessions (group commit, and several
//! connections on PostgreSQL). PostgreSQL is a throwaway cluster with fsync on; SQLite is a
//! file in WAL mode, as in production.
//!
//! Run: `cargo bench --bench store` (figures in BENCHMARKS.md).
#![allow(clippy::disallowed_types)] // the session-only rule of clippy.toml

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use uuid::Uuid;
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::model::{
    ClipRecord, MessageRecord, Role, SessionRecord, SourceType, StoreOp, TurnRecord,
};
use xiaozhi_gateway::store::writer::{StoreWriter, WriterConfig};

/// A realistic turn: two messages and two ~1.5 s clips (Opus at ~16 kbit/s).
fn turn(s: &SessionRecord, seq: i32) -> StoreOp {
    let now = Utc::now();
    let audio = Bytes::from(vec![0x4fu8; 3000]);
    let mut messages = Vec::new();
    let mut clips = Vec::new();
    for (i, role) in [Role::User, Role::Assistant].into_iter().enumerate() {
        let (message_id, file_id) = (Uuid::now_v7(), Uuid::now_v7());
        messages.push(MessageRecord {
            message_id,
            sequence_num: seq + i as i32,
            role,
            content: "turn on the kitchen lights please".into(),
            multi_content: None,
            tool_calls: None,
            tool_call_id: None,
            audio_file_id: Some(file_id),
            interrupted: false,
            created_at: now,
        });
        clips.push(ClipRecord {
            file_id,
            message_id,
            bucket_name: "xiaozhi-audio".into(),
            object_key: format!("{}/2026-11-25/{}/{file_id}.ogg", s.device_id, s.session_id),
            file_type: "ogg".into(),
            duration_ms: 1500,
            sample_rate: 16_000,
            channels: 1,
            source_type: if i == 0 { SourceType::User } else { SourceType::Tts },
            transcription: None,
            metadata: json!({}),
            checksum: "0".repeat(64),
            data: audio.clone(),
            created_at: now,
        });
    }
    StoreOp::Turn(Box::new(TurnRecord {
        session: s.clone(),
        device_id: s.device_id.clone(),
        messages,
        clips,
    }))
}

fn session() -> SessionRecord {
    SessionRecord {
        session_id: Uuid::now_v7(),
        device_id: "aa:bb:cc:dd:ee:ff".into(),
        agent_id: None,
        started_at: Utc::now(),
        metadata: json!({}),
    }
}

fn bench_backend(c: &mut Criterion, name: &str, store: Store, rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group(format!("store_{name}"));
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    for batch in [1usize, 32, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("turns_per_tx_{batch}"), |b| {
            b.to_async(rt).iter_custom(|iters| {
                let store = store.clone();
                async move {
                    let s = session();
                    let mut seq = 0;
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let ops: Vec<StoreOp> = (0..batch)
                            .map(|_| {
                                seq += 2;
                                turn(&s, seq)
                            })
                            .collect();
                        let t = Instant::now();
                        store.write_batch(&ops).await.expect("commit");
                        total += t.elapsed();
                    }
                    total
                }
            })
        });
    }
    // The writer with a backlog: 64 sessions hand over 16 turns each, then wait for all of it.
    const SESSIONS: usize = 64;
    const PER_SESSION: usize = 16;
    group.throughput(Throughput::Elements((SESSIONS * PER_SESSION) as u64));
    group.bench_function("writer_backlog_1024", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let dir = tempfile::tempdir().expect("spill dir");
                let (writer, _task) = StoreWriter::start(store, WriterConfig::new(dir.path()));
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let sessions: Vec<SessionRecord> = (0..SESSIONS).map(|_| session()).collect();
                    let ops: Vec<StoreOp> = (0..PER_SESSION)
                        .flat_map(|i| sessions.iter().map(move |s| turn(s, 2 * i as i32)))
                        .collect();
                    let t = Instant::now();
                    for op in ops {
                        writer.submit(op);
                    }
                    writer.flush().await;
                    total += t.elapsed();
                }
                assert_eq!(writer.stats().dead_lettered.load(std::sync::atomic::Ordering::Relaxed), 0);
                total
            }
        })
    });
    group.finish();
}

fn store_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = rt.block_on(async {
        let s =
            Store::connect_url(&format!("sqlite://{}", dir.path().join("bench.db").display())).await.unwrap();
        s.migrate().await.unwrap();
        s
    });
    bench_backend(c, "sqlite", sqlite, &rt);

    let cluster = testkit::pg::Cluster::start(true);
    let url = cluster.fresh_database();
    let pg = rt.block_on(async {
        let s = Store::connect_url(&url).await.unwrap();
        s.migrate().await.unwrap();
        s
    });
    bench_backend(c, "postgres", pg, &rt);
    drop(cluster);
}

criterion_group!(benches, store_benches);
criterion_main!(benches);
