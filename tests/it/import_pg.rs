//! `xiaozhi-gateway import pg` from a database of the starting design's own schema (the Go
//! server's PostgreSQL branch, BIGSERIAL ids) and its MinIO objects (raw Opus packets framed
//! by length, and WAV), into SQLite and PostgreSQL: Opus becomes Ogg-Opus that `opusinfo`
//! plays, WAV stays byte for byte, messages are renumbered in order, a broken row and broken
//! objects are reported while the rest lands, and a second run adds nothing.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use xiaozhi_gateway::config::{DatabaseKind, Settings};
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::model::Role;
use xiaozhi_gateway::store::queries::Table;
use xiaozhi_gateway::uploads::storage::ClipStorage;

use crate::binary_e2e::{Finished, gateway_command, run_within};
use crate::import_mysql::{assert_nothing_added, assert_untouched, gateway_on, line, target_url};
use crate::uploads::{assert_in_bucket, wait_uploaded};

/// The starting design's tables (docs/postgresql-minio-storage.md of the Go server), without
/// the foreign key to its `users` table.
const SCHEMA: &str = "
CREATE TABLE conversation_sessions (
    id BIGSERIAL PRIMARY KEY, session_id VARCHAR(64) NOT NULL UNIQUE, device_id VARCHAR(128) NOT NULL,
    agent_id VARCHAR(128), user_id BIGINT, started_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    ended_at TIMESTAMP WITH TIME ZONE, status VARCHAR(20) DEFAULT 'active', metadata JSONB DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE conversation_messages (
    id BIGSERIAL PRIMARY KEY, session_id VARCHAR(64) NOT NULL, device_id VARCHAR(128) NOT NULL,
    message_id VARCHAR(64) NOT NULL UNIQUE, sequence_num BIGINT NOT NULL, role VARCHAR(20) NOT NULL, content TEXT,
    multi_content JSONB, tool_calls JSONB, tool_call_id VARCHAR(64), audio_file_id VARCHAR(128),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE system_prompts (
    id BIGSERIAL PRIMARY KEY, device_id VARCHAR(128) NOT NULL UNIQUE, agent_id VARCHAR(128), prompt TEXT NOT NULL,
    is_active BOOLEAN DEFAULT true, created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE audio_files (
    id BIGSERIAL PRIMARY KEY, file_id VARCHAR(128) NOT NULL UNIQUE, session_id VARCHAR(64), message_id VARCHAR(64),
    device_id VARCHAR(128) NOT NULL, bucket_name VARCHAR(64) NOT NULL, object_key VARCHAR(512) NOT NULL,
    file_type VARCHAR(20) NOT NULL, file_size BIGINT, duration_ms INTEGER, sample_rate INTEGER DEFAULT 16000,
    channels INTEGER DEFAULT 1, source_type VARCHAR(20) NOT NULL, transcription TEXT, metadata JSONB DEFAULT '{}',
    created_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP);
";

const DEV1: &str = "aa:bb:cc:00:00:21";
const DEV2: &str = "aa:bb:cc:00:00:22";

/// Real Opus packets from the gateway's own encoder, framed by a 2-byte big-endian length.
fn framed_opus(ms: u32) -> Vec<u8> {
    let mut enc = xiaozhi_gateway::audio::opus::FrameEncoder::new(16_000, 60).unwrap();
    let pcm: Vec<i16> = (0..16 * ms)
        .map(|i| ((i as f32 * 523.0 * std::f32::consts::TAU / 16_000.0).sin() * 6000.0) as i16)
        .collect();
    let mut out = Vec::new();
    for p in enc.encode_all(&pcm).unwrap() {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(&p);
    }
    out
}

/// session, message id, sequence_num, role, content, tool_calls, tool_call_id, audio file, at.
type MessageRow<'a> = (
    &'a str,
    &'a str,
    i64,
    &'a str,
    &'a str,
    Option<serde_json::Value>,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
);
/// file_id, message_id, file_type, source_type, object_key, bytes (none: the object is missing).
type ObjectRow<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, Option<Vec<u8>>);

/// Loads the source database and bucket; returns the WAV blob.
async fn load(url: &str, endpoint: &str, bucket: &str) -> Vec<u8> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(SCHEMA).execute(&mut c).await.unwrap();
    for (sid, dev, start, end) in [
        ("sess-a", "AA:BB:CC:00:00:21", "2025-03-01T08:00:00+08:00", Some("2025-03-01T08:05:00+08:00")),
        ("sess-b", DEV2, "2025-03-02T10:00:00+08:00", None),
    ] {
        sqlx::query(
            "INSERT INTO conversation_sessions (session_id, device_id, agent_id, started_at, ended_at, status, metadata) \
             VALUES ($1, $2, 'agent-7', $3::timestamptz, $4::timestamptz, 'ended', '{\"client\":\"esp32\"}')",
        )
        .bind(sid)
        .bind(dev)
        .bind(start)
        .bind(end)
        .execute(&mut c)
        .await
        .unwrap();
    }
    let calls = json!([{"id": "call_9", "type": "function", "function": {"name": "set_volume", "arguments": "{\"v\":60}"}}]);
    // (session, message id, seq, role, content, tool_calls, tool_call_id, audio file, at)
    let rows: Vec<MessageRow> = vec![
        (
            "sess-a",
            "m1",
            1,
            "user",
            "把音量调到60 🔊",
            None,
            None,
            Some("f-wav"),
            "2025-03-01T08:00:01+08:00",
        ),
        ("sess-a", "m2", 2, "assistant", "", Some(calls), None, None, "2025-03-01T08:00:02+08:00"),
        ("sess-a", "m3", 3, "tool", "{\"ok\":true}", None, Some("call_9"), None, "2025-03-01T08:00:03+08:00"),
        (
            "sess-a",
            "m4",
            5,
            "assistant",
            "好的，音量已经调到60了。",
            None,
            None,
            Some("f-opus"),
            "2025-03-01T08:00:04+08:00",
        ),
        ("sess-a", "m5", 6, "function", "legacy role", None, None, None, "2025-03-01T08:00:05+08:00"),
        ("sess-a", "m6", 7, "user", "谢谢", None, None, Some("f-garbage"), "2025-03-01T08:00:06+08:00"),
        ("sess-b", "m7", 1, "user", "早上好 ☀️", None, None, Some("f-missing"), "2025-03-02T10:00:01+08:00"),
        ("sess-b", "m8", 2, "assistant", "早上好！", None, None, None, "2025-03-02T10:00:02+08:00"),
    ];
    for (sid, mid, seq, role, content, calls, call_id, audio, at) in &rows {
        let dev = if *sid == "sess-a" { "AA:BB:CC:00:00:21" } else { DEV2 };
        sqlx::query(
            "INSERT INTO conversation_messages (session_id, device_id, message_id, sequence_num, role, content, \
             tool_calls, tool_call_id, audio_file_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::timestamptz)",
        )
        .bind(sid)
        .bind(dev)
        .bind(mid)
        .bind(seq)
        .bind(role)
        .bind(content)
        .bind(calls)
        .bind(call_id)
        .bind(audio)
        .bind(at)
        .execute(&mut c)
        .await
        .unwrap();
    }
    let wav = testkit::fake_openai::wav(16_000, &vec![1200i16; 16 * 800]);
    let objects: [ObjectRow; 4] = [
        ("f-wav", "m1", "wav", "user", "aa/2025-03-01/sess-a/f-wav.wav", Some(wav.clone())),
        ("f-opus", "m4", "opus", "tts", "aa/2025-03-01/sess-a/f-opus.opus", Some(framed_opus(1200))),
        ("f-garbage", "m6", "opus", "user", "aa/2025-03-01/sess-a/f-garbage.opus", Some(vec![0xff; 300])),
        ("f-missing", "m7", "opus", "user", "aa/2025-03-02/sess-b/f-missing.opus", None),
    ];
    let mut settings = Settings::default();
    settings.storage.endpoint = Some(endpoint.to_owned());
    settings.storage.access_key = testkit::s3::ACCESS_KEY.into();
    settings.storage.secret_key = testkit::s3::SECRET_KEY.into();
    settings.storage.bucket = bucket.to_owned();
    xiaozhi_gateway::install_crypto_provider();
    let storage = ClipStorage::open(&settings).await.unwrap();
    for (file_id, mid, ty, source, key, data) in objects {
        sqlx::query(
            "INSERT INTO audio_files (file_id, session_id, message_id, device_id, bucket_name, object_key, file_type, source_type) \
             VALUES ($1, 'sess-x', $2, 'aa', $3, $4, $5, $6)",
        )
        .bind(file_id)
        .bind(mid)
        .bind(bucket)
        .bind(key)
        .bind(ty)
        .bind(source)
        .execute(&mut c)
        .await
        .unwrap();
        if let Some(data) = data {
            storage.put(key, Bytes::from(data), "application/octet-stream").await.unwrap();
        }
    }
    for (dev, prompt, active) in [(DEV1, "你是小智 🤖，说话简短。", true), (DEV2, "old prompt", false)]
    {
        sqlx::query("INSERT INTO system_prompts (device_id, prompt, is_active) VALUES ($1, $2, $3)")
            .bind(dev)
            .bind(prompt)
            .bind(active)
            .execute(&mut c)
            .await
            .unwrap();
    }
    c.close().await.unwrap();
    wav
}

fn import(
    source: &str,
    endpoint: &str,
    target: &str,
    bucket: &str,
    report: &std::path::Path,
    extra: &[&str],
) -> Finished {
    let data = report.parent().unwrap().display().to_string();
    let mut args = vec![
        "import",
        "pg",
        "--url",
        source,
        "--minio-endpoint",
        endpoint,
        "--minio-access-key",
        testkit::s3::ACCESS_KEY,
        "--minio-secret-key",
        testkit::s3::SECRET_KEY,
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let env = [
        ("DATABASE_URL", target.to_owned()),
        ("XIAOZHI_DATA_DIR", data),
        ("MINIO_BUCKET_AUDIO", bucket.to_owned()),
    ];
    run_within(gateway_command(&args, &env), Duration::from_secs(60))
}

async fn pg_into(kind: DatabaseKind) {
    let source = tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap();
    let s3 = testkit::s3::shared();
    let source_bucket = testkit::s3::fresh_bucket();
    let wav = load(&source, &s3.endpoint, &source_bucket).await;
    let dir = tempfile::tempdir().unwrap();
    let target = target_url(kind, dir.path()).await;
    let bucket = testkit::s3::fresh_bucket();
    let report = dir.path().join("report.txt");

    let dry = import(&source, &s3.endpoint, &target, &bucket, &report, &["--dry-run"]);
    assert!(dry.stdout.contains("dry run"), "{}\n{}", dry.stdout, dry.stderr);
    assert!(line(&dry.stdout, "messages").contains("7 imported"), "{}", dry.stdout);
    assert_untouched(kind, dir.path(), &target).await;

    let first = import(&source, &s3.endpoint, &target, &bucket, &report, &[]);
    let out = &first.stdout;
    assert_eq!(first.status.code(), Some(1), "rows were rejected: exit 1\n{out}\n{}", first.stderr);
    assert!(line(out, "conversations").contains("2 imported"), "{out}");
    assert!(
        line(out, "messages").contains("7 imported") && line(out, "messages").contains("1 rejected"),
        "{out}"
    );
    assert!(line(out, "clips").contains("2 imported") && line(out, "clips").contains("2 rejected"), "{out}");
    assert!(line(out, "devices").contains("2 imported"), "{out}");
    assert!(line(out, "prompts").contains("1 imported"), "{out}");
    let report_text = std::fs::read_to_string(&report).unwrap();
    for why in ["role \"function\"", "f-garbage", "boundaries unknown", "f-missing"] {
        assert!(report_text.contains(why), "the report does not say {why:?}:\n{report_text}");
    }

    let store = Store::connect_url(&target).await.unwrap();
    assert_eq!(store.count_rows(Table::Sessions, None).await.unwrap(), 2);
    assert_eq!(store.count_rows(Table::Messages, None).await.unwrap(), 7);
    assert_eq!(store.count_rows(Table::Clips, None).await.unwrap(), 2);
    assert_eq!(store.count_rows(Table::Devices, None).await.unwrap(), 2);
    let session = store.sessions(Some(DEV1), None, 10).await.unwrap().items.remove(0);
    assert_eq!(session.started_at.to_rfc3339(), "2025-03-01T00:00:00+00:00");
    assert_eq!(session.ended_at.unwrap().to_rfc3339(), "2025-03-01T00:05:00+00:00");
    let messages = store.session_messages(session.session_id).await.unwrap();
    let got: Vec<(i32, Role, &str)> =
        messages.iter().map(|m| (m.sequence_num, m.role, m.content.as_str())).collect();
    assert_eq!(
        got,
        [
            (0, Role::User, "把音量调到60 🔊"),
            (1, Role::Assistant, ""),
            (2, Role::Tool, "{\"ok\":true}"),
            (3, Role::Assistant, "好的，音量已经调到60了。"),
            (4, Role::User, "谢谢"),
        ]
    );
    assert_eq!(messages[1].tool_calls.as_ref().unwrap()[0]["function"]["name"], "set_volume");
    assert_eq!(messages[2].tool_call_id.as_deref(), Some("call_9"));
    assert!(messages[4].audio_file_id.is_none(), "the garbage object was not linked");
    assert_eq!(store.system_prompt(DEV1).await.unwrap().as_deref(), Some("你是小智 🤖，说话简短。"));
    assert_eq!(store.system_prompt(DEV2).await.unwrap(), None, "an inactive prompt stays behind");

    let app = gateway_on(kind, &target, &bucket).await;
    let clips = wait_uploaded(&store, 2, Duration::from_secs(20)).await;
    let opus = clips.iter().find(|c| c.file_type == "ogg").expect("the Opus clip");
    assert_eq!(Some(opus.file_id), messages[3].audio_file_id, "message → clip");
    assert_eq!(opus.message_id, messages[3].message_id, "clip → message");
    assert_eq!(opus.source_type, "tts");
    assert!((1100..=1200).contains(&opus.duration_ms), "{}", opus.duration_ms);
    assert_in_bucket(std::slice::from_ref(opus), |k| s3.object_path(&bucket, k));
    let w = clips.iter().find(|c| c.file_type == "wav").expect("the WAV clip");
    assert_eq!(Some(w.file_id), messages[0].audio_file_id);
    assert_eq!(std::fs::read(s3.object_path(&bucket, &w.object_key)).unwrap(), wav, "WAV byte for byte");
    drop(app);

    let again = import(&source, &s3.endpoint, &target, &bucket, &report, &[]);
    assert_nothing_added(&again.stdout, &[("messages", 7), ("clips", 2), ("prompts", 1)]);
    assert_eq!(store.count_rows(Table::Messages, None).await.unwrap(), 7);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_history_clips_and_prompts_into_sqlite() {
    pg_into(DatabaseKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_history_clips_and_prompts_into_postgres() {
    pg_into(DatabaseKind::Postgres).await;
}
