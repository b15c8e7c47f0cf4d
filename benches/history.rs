//! What an operator waits for on a 100,000-message database, on both backends: search (a
//! common and a rare Chinese three-character phrase, a two-character phrase, a rare English
//! word, one device's matches), a device's conversation list and summary, and a month of
//! statistics. 200 devices × 25 conversations × 20 messages over 60 days, Chinese and
//! English. PostgreSQL is a throwaway cluster whose database has a UTF-8 LC_CTYPE (pg_trgm
//! indexes Chinese only then); SQLite is a file in WAL mode.
//!
//! Run: `cargo bench --bench history` (figures in BENCHMARKS.md).
#![allow(clippy::disallowed_types)] // the session-only rule of clippy.toml

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use uuid::Uuid;
use xiaozhi_gateway::store::search::SearchQuery;
use xiaozhi_gateway::store::{Store, Ts};

const DEVICES: usize = 200;
const SESSIONS_PER_DEVICE: usize = 25;
const MESSAGES_PER_SESSION: usize = 20;

const USER: &[&str] = &[
    "今天天气怎么样",
    "明天会下雨吗",
    "播放周杰伦的歌",
    "把客厅的灯关掉",
    "讲一个笑话",
    "我想听新闻",
    "设置一个早上七点的闹钟",
    "音量调大一点",
    "what time is it",
    "turn on the kitchen lights",
    "tell me a story about dragons",
    "how far away is the moon",
];
const ASSISTANT: &[&str] = &[
    "今天晴，最高气温二十五度。",
    "好的，已经关掉了。",
    "正在为你播放音乐。",
    "闹钟已经设好了。",
    "It is half past seven.",
    "The kitchen lights are on.",
    "Once upon a time, a small dragon lived by the sea.",
    "About 384,000 kilometres.",
];

fn device(i: usize) -> String {
    format!("b0:00:00:00:{:02x}:{:02x}", i / 256, i % 256)
}

/// A deterministic pseudo-random sequence (no dependency for a benchmark's data).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Inserts the data set with multi-row statements straight through sqlx (the store's own
/// writer would take minutes for 100,000 messages on PostgreSQL round trips).
async fn fill(url: &str) -> Store {
    let store = Store::connect_url(url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let now = Utc::now();
    let mut rng = Lcg(7);
    let mut devices = Vec::new();
    let mut sessions = Vec::new();
    let mut messages = Vec::new();
    for d in 0..DEVICES {
        let id = device(d);
        devices.push((id.clone(), Ts(now - chrono::Duration::minutes(d as i64))));
        for s in 0..SESSIONS_PER_DEVICE {
            let sid = Uuid::now_v7();
            let start = now - chrono::Duration::minutes(((s * DEVICES + d) * 17 % (60 * 24 * 60)) as i64);
            sessions.push((sid, id.clone(), Ts(start)));
            for m in 0..MESSAGES_PER_SESSION {
                let user = m % 2 == 0;
                let mut text =
                    if user { USER[rng.next(USER.len())] } else { ASSISTANT[rng.next(ASSISTANT.len())] }
                        .to_owned();
                // Rare words: one message in a thousand.
                if rng.next(1000) == 0 {
                    text.push_str(if user {
                        "，我梦见了一只紫色的长颈鹿"
                    } else {
                        " Play the xylophone."
                    });
                }
                let at = Ts(start + chrono::Duration::seconds(m as i64 * 5));
                messages.push((
                    Uuid::now_v7(),
                    sid,
                    id.clone(),
                    m as i32,
                    if user { "user" } else { "assistant" },
                    text,
                    at,
                ));
            }
        }
    }
    let postgres = url.starts_with("postgres");
    let ph = |n: usize| if postgres { format!("${n}") } else { format!("?{n}") };
    let rows = |cols: usize, count: usize| -> String {
        (0..count)
            .map(|r| format!("({})", (1..=cols).map(|c| ph(r * cols + c)).collect::<Vec<_>>().join(", ")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    macro_rules! insert_all {
        ($pool:expr) => {{
            let pool = $pool;
            for chunk in devices.chunks(500) {
                let sql = format!("INSERT INTO devices (device_id, first_seen, last_seen) VALUES {}", rows(3, chunk.len()));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (id, seen) in chunk {
                    q = q.bind(id).bind(*seen).bind(*seen);
                }
                q.execute(&pool).await.expect("devices");
            }
            for chunk in sessions.chunks(500) {
                let sql = format!(
                    "INSERT INTO conversation_sessions (session_id, device_id, started_at, status) VALUES {}",
                    rows(4, chunk.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (sid, id, at) in chunk {
                    q = q.bind(*sid).bind(id).bind(*at).bind("ended");
                }
                q.execute(&pool).await.expect("sessions");
            }
            for chunk in messages.chunks(500) {
                let sql = format!(
                    "INSERT INTO conversation_messages (message_id, session_id, device_id, sequence_num, role, content, created_at) VALUES {}",
                    rows(7, chunk.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (mid, sid, id, seq, role, text, at) in chunk {
                    q = q.bind(*mid).bind(*sid).bind(id).bind(*seq).bind(*role).bind(text).bind(*at);
                }
                q.execute(&pool).await.expect("messages");
            }
            sqlx::query("ANALYZE").execute(&pool).await.expect("analyze");
        }};
    }
    if postgres {
        insert_all!(sqlx::PgPool::connect(url).await.expect("pg"));
    } else {
        insert_all!(sqlx::SqlitePool::connect(url).await.expect("sqlite"));
    }
    store
}

fn search(text: &str) -> SearchQuery {
    SearchQuery { text: text.into(), limit: 20, ..SearchQuery::default() }
}

fn bench_backend(c: &mut Criterion, name: &str, url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let store = rt.block_on(fill(url));
    eprintln!("{name}: 100,000 messages loaded in {:.1} s", started.elapsed().as_secs_f64());
    let mut g = c.benchmark_group(format!("history/{name}"));
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let queries = [
        ("search 周杰伦 (3 chars, ~8% of messages)", search("周杰伦")),
        ("search 长颈鹿 (3 chars, rare)", search("长颈鹿")),
        ("search 天气 (2 chars, scan)", search("天气")),
        ("search xylophone (rare)", search("xylophone")),
        ("search 周杰伦 of one device", SearchQuery { device_id: Some(device(7)), ..search("周杰伦") }),
    ];
    for (label, q) in queries {
        let n = rt.block_on(store.search_messages(&q)).unwrap().items.len();
        eprintln!("{name}: {label}: {n} hits on the first page");
        g.bench_function(label, |b| {
            b.to_async(&rt).iter(|| async { store.search_messages(&q).await.unwrap() })
        });
    }
    let dev = device(7);
    g.bench_function("a device's conversations (first page of 20)", |b| {
        b.to_async(&rt).iter(|| async { store.sessions(Some(&dev), None, 20).await.unwrap() })
    });
    g.bench_function("a device's summary (sessions, turns, audio)", |b| {
        b.to_async(&rt).iter(|| async { store.device(&dev).await.unwrap() })
    });
    let today = Utc::now().date_naive();
    let from: NaiveDate = today - chrono::Duration::days(30);
    g.bench_function("statistics, 30 days, all devices", |b| {
        b.to_async(&rt).iter(|| async { store.daily_stats(from, today, None).await.unwrap() })
    });
    g.finish();
    rt.block_on(store.close());
}

fn history(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
    bench_backend(c, "sqlite", &sqlite);

    let cluster = testkit::pg::Cluster::start(true);
    let url = {
        let admin = cluster.admin_url();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&admin).await.expect("admin");
            sqlx::query("CREATE DATABASE history TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8'")
                .execute(&pool)
                .await
                .expect("create database");
        });
        admin.replace("/postgres", "/history")
    };
    bench_backend(c, "postgres", &url);
}

criterion_group!(benches, history);
criterion_main!(benches);
