//! The upload pool's throughput: clips per second from the outbox (SQLite staging) to a real
//! S3 server (`s3s-fs` on loopback), for 1, 4 and 16 workers.
//!
//! Run: `cargo bench --bench uploads` (figures in README.md).
#![allow(clippy::disallowed_types)] // the session-only rule of clippy.toml

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::model::{
    ClipRecord, MessageRecord, Role, SessionRecord, SourceType, StoreOp, TurnRecord,
};
use xiaozhi_gateway::uploads::pool::{PoolConfig, UploadPool};
use xiaozhi_gateway::uploads::storage::ClipStorage;

const CLIPS: usize = 200;

fn turns(n: usize) -> Vec<StoreOp> {
    let s = SessionRecord {
        session_id: Uuid::now_v7(),
        device_id: "aa:bb:cc:dd:ee:ff".into(),
        agent_id: None,
        started_at: Utc::now(),
        metadata: json!({}),
    };
    let audio = Bytes::from(vec![0x4fu8; 3000]); // ~1.5 s of speech at 16 kbit/s
    (0..n)
        .map(|i| {
            let (message_id, file_id) = (Uuid::now_v7(), Uuid::now_v7());
            let now = Utc::now();
            StoreOp::Turn(Box::new(TurnRecord {
                session: s.clone(),
                device_id: s.device_id.clone(),
                messages: vec![MessageRecord {
                    message_id,
                    sequence_num: i as i32,
                    role: Role::User,
                    content: String::new(),
                    multi_content: None,
                    tool_calls: None,
                    tool_call_id: None,
                    audio_file_id: Some(file_id),
                    interrupted: false,
                    created_at: now,
                }],
                clips: vec![ClipRecord {
                    file_id,
                    message_id,
                    bucket_name: String::new(),
                    object_key: format!("{}/2026-11-25/{}/{file_id}.ogg", s.device_id, s.session_id),
                    file_type: "ogg".into(),
                    duration_ms: 1500,
                    sample_rate: 16_000,
                    channels: 1,
                    source_type: SourceType::User,
                    transcription: None,
                    metadata: json!({}),
                    checksum: String::new(),
                    data: audio.clone(),
                    created_at: now,
                }],
            }))
        })
        .collect()
}

fn upload_pool(c: &mut Criterion) {
    xiaozhi_gateway::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = testkit::s3::S3Server::start();
    let mut group = c.benchmark_group("upload_pool");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(CLIPS as u64));
    for workers in [1usize, 4, 16] {
        group.bench_function(format!("clips_workers_{workers}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let endpoint = s3.endpoint();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = tempfile::tempdir().unwrap();
                        let mut settings =
                            Settings { data_dir: dir.path().to_owned(), ..Settings::default() };
                        settings.storage.endpoint = Some(endpoint.clone());
                        settings.storage.access_key = testkit::s3::ACCESS_KEY.into();
                        settings.storage.secret_key = testkit::s3::SECRET_KEY.into();
                        settings.storage.bucket = testkit::s3::fresh_bucket();
                        let url = format!("sqlite://{}", dir.path().join("b.db").display());
                        let store = Store::connect_url(&url).await.unwrap();
                        store.migrate().await.unwrap();
                        store.write_batch(&turns(CLIPS)).await.unwrap();
                        let storage = ClipStorage::open(&settings).await.unwrap();
                        let mut cfg = PoolConfig::from_settings(&settings.storage);
                        cfg.workers = workers;
                        let stop = CancellationToken::new();
                        let t = Instant::now();
                        let pool =
                            UploadPool::start(store.clone(), storage, cfg, Arc::default(), stop.clone());
                        pool.wake();
                        while store.upload_backlog().await.unwrap().pending > 0 {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        total += t.elapsed();
                        stop.cancel();
                    }
                    total
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, upload_pool);
criterion_main!(benches);
