//! `xiaozhi-gateway import mysql` at scale: a real MariaDB holding N messages of the Python
//! server's schema (50 per conversation, one in a hundred with a 1 s WAV clip), imported by
//! the release binary into SQLite and into PostgreSQL (fsync on). Reports the rate and the
//! importer's peak RSS at 10,000 and at 100,000 messages: constant memory means the two
//! peaks are the same.
//!
//! Run: `cargo bench --bench import` (figures in BENCHMARKS.md). `IMPORT_BENCH_SIZES=1000,5000`
//! changes the sizes.
#![allow(clippy::disallowed_types)] // the session-only rule of clippy.toml

use std::process::{Command, Stdio};
use std::time::Instant;

use sqlx::mysql::MySqlPoolOptions;

const SCHEMA: &[&str] = &[
    "CREATE TABLE ai_agent (id VARCHAR(32) PRIMARY KEY, agent_name VARCHAR(64), system_prompt TEXT)",
    "CREATE TABLE ai_device (id VARCHAR(32) PRIMARY KEY, mac_address VARCHAR(50), last_connected_at DATETIME, \
     board VARCHAR(50), agent_id VARCHAR(32), app_version VARCHAR(20))",
    "CREATE TABLE ai_agent_chat_history (id BIGINT AUTO_INCREMENT PRIMARY KEY, mac_address VARCHAR(50), \
     agent_id VARCHAR(32), session_id VARCHAR(50), chat_type TINYINT(3), content VARCHAR(1024), audio_id VARCHAR(32), \
     created_at DATETIME(3) NOT NULL, INDEX idx_session (session_id)) DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE ai_agent_chat_audio (id VARCHAR(32) PRIMARY KEY, audio LONGBLOB)",
];

/// Fills a fresh source database with `n` messages; returns its URL.
async fn source(n: usize) -> String {
    let url = testkit::mariadb::create_database();
    let pool = MySqlPoolOptions::new().max_connections(1).connect(&url).await.expect("source");
    for ddl in SCHEMA {
        sqlx::query(sqlx::AssertSqlSafe(*ddl)).execute(&pool).await.expect("schema");
    }
    let samples: Vec<i16> = (0..16_000).map(|i| ((i as f32 * 0.1).sin() * 4000.0) as i16).collect();
    let wav = testkit::fake_openai::wav(16_000, &samples);
    let devices = 100;
    for d in 0..devices {
        sqlx::query("INSERT INTO ai_device VALUES (?, ?, '2025-03-01 08:00:00', 'esp32-s3', 'a1', '1.6.2')")
            .bind(format!("d{d}"))
            .bind(format!("aa:bb:cc:dd:{:02x}:{:02x}", d / 256, d % 256))
            .execute(&pool)
            .await
            .expect("device");
    }
    sqlx::query("INSERT INTO ai_agent VALUES ('a1', '小智', '我是{{assistant_name}}。')")
        .execute(&pool)
        .await
        .unwrap();
    let text = "今天天气怎么样？明天会下雨吗？我们去公园散步好不好 😊";
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut sql = String::from(
            "INSERT INTO ai_agent_chat_history (mac_address, agent_id, session_id, chat_type, content, audio_id, created_at) VALUES ",
        );
        for (k, i) in chunk.iter().enumerate() {
            let (conv, dev) = (i / 50, (i / 50) % devices);
            let audio = if i % 100 == 0 { format!("'au{i}'") } else { "NULL".into() };
            let secs = i * 3;
            if k > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('aa:bb:cc:dd:{:02x}:{:02x}', 'a1', 's{conv}', {}, '{text} #{i}', {audio}, \
                 TIMESTAMPADD(SECOND, {secs}, '2025-01-01 00:00:00'))",
                dev / 256,
                dev % 256,
                1 + i % 2
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.expect("history");
        for i in chunk.iter().filter(|i| *i % 100 == 0) {
            sqlx::query("INSERT INTO ai_agent_chat_audio VALUES (?, ?)")
                .bind(format!("au{i}"))
                .bind(&wav)
                .execute(&pool)
                .await
                .expect("audio");
        }
    }
    pool.close().await;
    url
}

/// Runs the import in a child process; its peak RSS is the kernel's high-water mark
/// (`VmHWM`), read from /proc while it runs.
fn import(source: &str, target: &str, dir: &std::path::Path) -> (f64, i64, String) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xiaozhi-gateway"))
        .args(["import", "mysql", "--url", source])
        .env("DATABASE_URL", target)
        .env("XIAOZHI_DATA_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the importer");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0i64;
    let output = loop {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: i64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            peak = peak.max(kib);
        }
        if child.try_wait().expect("wait").is_some() {
            break child.wait_with_output().expect("output");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let secs = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "import failed: {}", String::from_utf8_lossy(&output.stdout));
    (secs, peak, String::from_utf8_lossy(&output.stdout).into_owned())
}

fn main() {
    let sizes: Vec<usize> = std::env::var("IMPORT_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cluster = testkit::pg::Cluster::start(true);
    println!("| target | messages | clips | seconds | messages/s | importer peak RSS |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let src = rt.block_on(source(n));
        for target in ["sqlite", "postgres"] {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = match target {
                "sqlite" => format!("sqlite://{}", dir.path().join("xiaozhi.db").display()),
                _ => cluster.fresh_database(),
            };
            let (secs, peak_kib, out) = import(&src, &url, dir.path());
            assert!(out.contains(&format!("{n} imported")), "{out}");
            println!(
                "| {target} | {n} | {} | {secs:.1} | {:.0} | {:.1} MiB |",
                n / 100,
                n as f64 / secs,
                peak_kib as f64 / 1024.0
            );
        }
    }
}
