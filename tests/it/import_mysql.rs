//! `xiaozhi-gateway import mysql` from a real MariaDB loaded with the xinnan-tech manager
//! schema (its Liquibase table definitions), into SQLite and into PostgreSQL: a dry run
//! writes nothing; the import lands every good row (Chinese text byte for byte, order and
//! roles, WAV clips linked both ways and uploaded by the gateway's upload pool, devices,
//! prompts active per device); broken rows are reported and skipped; a second run adds nothing.

use std::time::Duration;

use sqlx::mysql::MySqlPoolOptions;
use xiaozhi_gateway::config::DatabaseKind;
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::model::Role;
use xiaozhi_gateway::store::queries::Table;

use crate::binary_e2e::{Finished, gateway_command, run_within};
use crate::helpers::*;
use crate::uploads::wait_uploaded;

/// The tables as the manager's Liquibase changelogs create them (columns the importer does
/// not read kept, so the source looks like the real thing).
const SCHEMA: &[&str] = &[
    "CREATE TABLE ai_agent (
        id VARCHAR(32) NOT NULL, user_id BIGINT, agent_code VARCHAR(36), agent_name VARCHAR(64),
        asr_model_id VARCHAR(32), vad_model_id VARCHAR(64), llm_model_id VARCHAR(32), tts_model_id VARCHAR(32),
        tts_voice_id VARCHAR(32), mem_model_id VARCHAR(32), intent_model_id VARCHAR(32),
        system_prompt TEXT, lang_code VARCHAR(10), language VARCHAR(10), sort INT UNSIGNED DEFAULT 0,
        creator BIGINT, created_at DATETIME, updater BIGINT, updated_at DATETIME, PRIMARY KEY (id)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE ai_device (
        id VARCHAR(32) NOT NULL, user_id BIGINT, mac_address VARCHAR(50), last_connected_at DATETIME,
        auto_update TINYINT UNSIGNED DEFAULT 0, board VARCHAR(50), alias VARCHAR(64) DEFAULT NULL,
        agent_id VARCHAR(32), app_version VARCHAR(20), sort INT UNSIGNED DEFAULT 0,
        creator BIGINT, create_date DATETIME, updater BIGINT, update_date DATETIME, PRIMARY KEY (id),
        INDEX idx_ai_device_created_at (mac_address)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE ai_agent_chat_history (
        id BIGINT AUTO_INCREMENT PRIMARY KEY, mac_address VARCHAR(50), agent_id VARCHAR(32),
        session_id VARCHAR(50), chat_type TINYINT(3), content VARCHAR(1024), audio_id VARCHAR(32),
        created_at DATETIME(3) DEFAULT CURRENT_TIMESTAMP(3) NOT NULL,
        updated_at DATETIME(3) DEFAULT CURRENT_TIMESTAMP(3) NOT NULL ON UPDATE CURRENT_TIMESTAMP(3),
        INDEX idx_ai_agent_chat_history_mac (mac_address),
        INDEX idx_ai_agent_chat_history_session_id (session_id),
        INDEX idx_ai_agent_chat_history_agent_id (agent_id),
        INDEX idx_ai_agent_chat_history_agent_session_created (agent_id, session_id, created_at)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE ai_agent_chat_audio (id VARCHAR(32) PRIMARY KEY, audio LONGBLOB) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];

const MAC1: &str = "AA:BB:CC:00:00:01";
const MAC2: &str = "aa:bb:cc:00:00:02";
const LONG_LINE: &str = "这是一段很长的回答，";

/// 16 kHz mono 16-bit, as the Python server keeps its audio.
fn wav(ms: u32, freq: f32) -> Vec<u8> {
    let n = 16 * ms;
    let samples: Vec<i16> = (0..n)
        .map(|i| ((i as f32 * freq * std::f32::consts::TAU / 16_000.0).sin() * 8000.0) as i16)
        .collect();
    testkit::fake_openai::wav(16_000, &samples)
}

/// The long assistant message (1000 characters; the column holds 1024).
fn long_message() -> String {
    LONG_LINE.repeat(100)
}

/// id, mac_address, session_id, chat_type, content, audio_id, created_at.
type HistoryRow<'a> = (i64, &'a str, &'a str, i8, String, Option<&'a str>, &'a str);

/// Loads the fixture; returns the WAV blobs of the two good clips.
async fn load(url: &str) -> (Vec<u8>, Vec<u8>) {
    let pool = MySqlPoolOptions::new().max_connections(1).connect(url).await.unwrap();
    for ddl in SCHEMA {
        sqlx::query(sqlx::AssertSqlSafe(*ddl)).execute(&pool).await.unwrap();
    }
    for (id, name, prompt) in [
        ("agent1", Some("小美"), "我是{{assistant_name}}，你的好朋友 🐼。"),
        ("agent2", None, "你好，我是{{assistant_name}}。"),
    ] {
        sqlx::query("INSERT INTO ai_agent (id, agent_name, system_prompt) VALUES (?, ?, ?)")
            .bind(id)
            .bind(name)
            .bind(prompt)
            .execute(&pool)
            .await
            .unwrap();
    }
    for (id, mac, agent) in
        [("d1", Some(MAC1), "agent1"), ("d2", Some(MAC2), "agent2"), ("d3", None, "agent1")]
    {
        sqlx::query(
            "INSERT INTO ai_device (id, mac_address, board, app_version, agent_id, last_connected_at) \
             VALUES (?, ?, 'esp32-s3-box3', '1.6.2', ?, '2025-03-01 20:00:00')",
        )
        .bind(id)
        .bind(mac)
        .bind(agent)
        .execute(&pool)
        .await
        .unwrap();
    }
    let (a1, a2) = (wav(700, 440.0), wav(1200, 660.0));
    for (id, blob) in
        [("audio1", a1.clone()), ("audio2", a2.clone()), ("audio3", b"not a wav at all".to_vec())]
    {
        sqlx::query("INSERT INTO ai_agent_chat_audio (id, audio) VALUES (?, ?)")
            .bind(id)
            .bind(blob)
            .execute(&pool)
            .await
            .unwrap();
    }
    // id order within the same second is the speaking order (rows 5 and 6).
    let rows: &[HistoryRow] = &[
        (1, MAC1, "s1", 1, "你好小智 😊".into(), Some("audio1"), "2025-03-01 08:00:00.000"),
        (2, MAC1, "s1", 2, "你好呀！有什么可以帮你？🎉".into(), Some("audio2"), "2025-03-01 08:00:02.500"),
        (
            3,
            MAC1,
            "s1",
            1,
            r#"{"speaker":"妈妈","content":"今天天气怎么样？"}"#.into(),
            None,
            "2025-03-01 08:00:10.000",
        ),
        (4, MAC1, "s1", 9, "broken chat_type".into(), None, "2025-03-01 08:00:11.000"),
        (
            6,
            MAC1,
            "s1",
            3,
            r#"[{"name":"get_weather","arguments":{"city":"北京"}}]"#.into(),
            None,
            "2025-03-01 08:00:12.900",
        ),
        (7, MAC1, "s1", 2, long_message(), None, "2025-03-01 08:00:12.100"),
        (8, MAC1, "s1", 1, "再见 👋".into(), Some("audio3"), "2025-03-01 08:00:20.000"),
        (9, MAC2, "s2", 1, "讲个故事".into(), Some("missing"), "2025-03-02 09:00:00.000"),
        (10, MAC2, "s2", 2, "从前有座山……".into(), None, "2025-03-02 09:00:03.000"),
    ];
    for (id, mac, session, chat_type, content, audio, at) in rows {
        sqlx::query(
            "INSERT INTO ai_agent_chat_history (id, mac_address, agent_id, session_id, chat_type, content, audio_id, created_at) \
             VALUES (?, ?, 'agent1', ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(mac)
        .bind(session)
        .bind(chat_type)
        .bind(content)
        .bind(audio)
        .bind(at)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    (a1, a2)
}

/// `import mysql` against the target `DATABASE_URL`.
fn import(source: &str, target: &str, bucket: &str, report: &std::path::Path, extra: &[&str]) -> Finished {
    let data = report.parent().unwrap().display().to_string();
    let mut args = vec!["import", "mysql", "--url", source, "--report", report.to_str().unwrap()];
    args.extend_from_slice(extra);
    let env = [
        ("DATABASE_URL", target.to_owned()),
        ("XIAOZHI_DATA_DIR", data),
        ("MINIO_BUCKET_AUDIO", bucket.to_owned()),
    ];
    run_within(gateway_command(&args, &env), Duration::from_secs(60))
}

/// The closing report's line about `what` (messages, clips…).
pub(crate) fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines().find(|l| l.trim_start().starts_with(what)).unwrap_or_else(|| panic!("no {what} line:\n{out}"))
}

/// A fresh target store URL of `kind` (SQLite under `dir`).
pub(crate) async fn target_url(kind: DatabaseKind, dir: &std::path::Path) -> String {
    match kind {
        DatabaseKind::Sqlite => format!("sqlite://{}", dir.join("xiaozhi.db").display()),
        DatabaseKind::Postgres => tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap(),
    }
}

/// A second run's report: nothing imported, everything already present.
pub(crate) fn assert_nothing_added(out: &str, present: &[(&str, u64)]) {
    for (what, n) in present {
        let l = line(out, what);
        assert!(l.contains(" 0 imported") && l.contains(&format!(" {n} already present")), "{what}: {out}");
    }
}

/// A gateway on the target store and bucket: its upload pool puts the staged clips there.
pub(crate) async fn gateway_on(kind: DatabaseKind, target: &str, bucket: &str) -> TestApp {
    let s3 = testkit::s3::shared();
    let (target, bucket, endpoint) = (target.to_owned(), bucket.to_owned(), s3.endpoint.clone());
    spawn_app_with(move |s| {
        s.database.kind = kind;
        s.database.url = Some(target);
        s.storage.endpoint = Some(endpoint);
        s.storage.access_key = testkit::s3::ACCESS_KEY.into();
        s.storage.secret_key = testkit::s3::SECRET_KEY.into();
        s.storage.bucket = bucket;
    })
    .await
}

/// A dry run left the target as it was: no SQLite file, no schema in PostgreSQL.
pub(crate) async fn assert_untouched(kind: DatabaseKind, dir: &std::path::Path, target: &str) {
    match kind {
        DatabaseKind::Sqlite => assert!(!dir.join("xiaozhi.db").exists(), "the dry run created the database"),
        DatabaseKind::Postgres => {
            let store = Store::connect_url(target).await.unwrap();
            assert_eq!(store.applied_version().await.unwrap(), 0, "the dry run migrated the target");
            store.close().await;
        }
    }
}

async fn mysql_into(kind: DatabaseKind) {
    let rw = tokio::task::spawn_blocking(testkit::mariadb::create_database).await.unwrap();
    let (a1, a2) = load(&rw).await;
    let ro = {
        let rw = rw.clone();
        tokio::task::spawn_blocking(move || testkit::mariadb::read_only_url(&rw)).await.unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let target = target_url(kind, dir.path()).await;
    let s3 = testkit::s3::shared();
    let bucket = testkit::s3::fresh_bucket();
    let report = dir.path().join("report.txt");

    // A dry run counts and shows samples, and writes nothing.
    let dry = import(&ro, &target, &bucket, &report, &["--dry-run"]);
    assert!(dry.stdout.contains("dry run"), "{}\n{}", dry.stdout, dry.stderr);
    assert!(line(&dry.stdout, "messages").contains("8 imported"), "{}", dry.stdout);
    assert!(dry.stdout.contains("sample: aa:bb:cc:00:00:01"), "{}", dry.stdout);
    assert_untouched(kind, dir.path(), &target).await;

    // The import, with the importer holding only SELECT rights on the source.
    let first = import(&ro, &target, &bucket, &report, &[]);
    assert_eq!(
        first.status.code(),
        Some(1),
        "rows were rejected: exit 1\n{}\n{}",
        first.stdout,
        first.stderr
    );
    let out = &first.stdout;
    assert!(line(out, "conversations").contains("2 imported"), "{out}");
    assert!(
        line(out, "messages").contains("8 imported") && line(out, "messages").contains("1 rejected"),
        "{out}"
    );
    assert!(line(out, "clips").contains("2 imported") && line(out, "clips").contains("1 rejected"), "{out}");
    assert!(
        line(out, "devices").contains("2 imported") && line(out, "devices").contains("1 rejected"),
        "{out}"
    );
    assert!(line(out, "prompts").contains("2 imported"), "{out}");
    let report_text = std::fs::read_to_string(&report).unwrap();
    for why in
        ["ai_agent_chat_history id=4", "chat_type Some(9)", "ai_device id=d3", "no mac_address", "not a WAV"]
    {
        assert!(report_text.contains(why), "the report does not say {why:?}:\n{report_text}");
    }

    let store = Store::connect_url(&target).await.unwrap();
    assert_eq!(store.count_rows(Table::Sessions, None).await.unwrap(), 2);
    assert_eq!(store.count_rows(Table::Messages, None).await.unwrap(), 8);
    assert_eq!(store.count_rows(Table::Clips, None).await.unwrap(), 2);
    assert_eq!(store.count_rows(Table::Devices, None).await.unwrap(), 2);
    let dev1 = MAC1.to_ascii_lowercase();
    let sessions = store.sessions(Some(&dev1), None, 10).await.unwrap().items;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].status, "ended");
    let messages = store.session_messages(sessions[0].session_id).await.unwrap();
    let got: Vec<(Role, &str)> = messages.iter().map(|m| (m.role, m.content.as_str())).collect();
    let long = long_message();
    assert_eq!(
        got,
        [
            (Role::User, "你好小智 😊"),
            (Role::Assistant, "你好呀！有什么可以帮你？🎉"),
            (Role::User, "今天天气怎么样？"),
            (Role::Tool, r#"[{"name":"get_weather","arguments":{"city":"北京"}}]"#),
            (Role::Assistant, long.as_str()),
            (Role::User, "再见 👋"),
        ]
    );
    assert_eq!(messages[4].content.as_bytes(), long.as_bytes(), "the long message byte for byte");
    assert_eq!(messages.iter().map(|m| m.sequence_num).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(messages[0].created_at.to_rfc3339(), "2025-03-01T00:00:00+00:00", "+08:00 shifted to UTC");
    assert_eq!(sessions[0].metadata["speakers"], serde_json::json!(["妈妈"]));

    // Clips: linked both ways, WAV byte for byte once the gateway's upload pool has run.
    let clips = store.session_clips(sessions[0].session_id).await.unwrap();
    assert_eq!(clips.len(), 2);
    for (m, blob) in [(&messages[0], &a1), (&messages[1], &a2)] {
        let clip = clips.iter().find(|c| Some(c.file_id) == m.audio_file_id).expect("message → clip");
        assert_eq!(clip.message_id, m.message_id, "clip → message");
        assert_eq!((clip.file_type.as_str(), clip.sample_rate, clip.channels), ("wav", 16_000, 1));
        assert_eq!(clip.file_size as usize, blob.len());
    }
    assert_eq!(clips.iter().find(|c| c.message_id == messages[0].message_id).unwrap().duration_ms, 700);
    assert!(messages[2].audio_file_id.is_none() && messages[5].audio_file_id.is_none());

    // Prompts: active per device, {{assistant_name}} expanded as the Python server does.
    assert_eq!(store.system_prompt(&dev1).await.unwrap().as_deref(), Some("我是小美，你的好朋友 🐼。"));
    assert_eq!(store.system_prompt(MAC2).await.unwrap().as_deref(), Some("你好，我是小智。"));

    let app = gateway_on(kind, &target, &bucket).await;
    let uploaded = wait_uploaded(&store, 2, Duration::from_secs(20)).await;
    for (m, blob) in [(&messages[0], &a1), (&messages[1], &a2)] {
        let clip = uploaded.iter().find(|c| c.message_id == m.message_id).unwrap();
        assert_eq!(clip.upload_status, "uploaded");
        let object = std::fs::read(s3.object_path(&bucket, &clip.object_key)).unwrap();
        assert_eq!(&object, blob, "WAV kept byte for byte");
        let wav = hound::WavReader::new(std::io::Cursor::new(object)).expect("a playable WAV");
        assert_eq!(
            (wav.spec().sample_rate, wav.spec().channels, wav.spec().bits_per_sample),
            (16_000, 1, 16)
        );
    }
    drop(app);

    // A second run adds nothing.
    let again = import(&ro, &target, &bucket, &report, &[]);
    assert_nothing_added(&again.stdout, &[("messages", 8), ("clips", 2), ("devices", 2), ("prompts", 2)]);
    assert_eq!(store.count_rows(Table::Messages, None).await.unwrap(), 8);
    assert_eq!(store.count_rows(Table::Clips, None).await.unwrap(), 2);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_history_devices_and_prompts_into_sqlite() {
    mysql_into(DatabaseKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_history_devices_and_prompts_into_postgres() {
    mysql_into(DatabaseKind::Postgres).await;
}
