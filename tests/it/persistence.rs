//! End to end: conversations with the running gateway land in the database (PostgreSQL and
//! the embedded SQLite), each clip linked to its message and back, and every clip decodes
//! with an independent Ogg-Opus tool.

use std::process::Command;
use std::time::Duration;

use firmware_protocol::{ListenMode, ListenState};
use xiaozhi_gateway::client::Event;
use xiaozhi_gateway::config::DatabaseKind;
use xiaozhi_gateway::store::model::Role;

use crate::helpers::*;

async fn spawn(kind: DatabaseKind) -> TestApp {
    let url = match kind {
        DatabaseKind::Postgres => Some(tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap()),
        DatabaseKind::Sqlite => None,
    };
    spawn_app_with(move |s| {
        s.database.kind = kind;
        s.database.url = url;
    })
    .await
}

/// The playback length `opusinfo` reports, in ms, and its warnings.
pub fn opusinfo(bytes: &[u8]) -> (u64, String) {
    let file = tempfile::Builder::new().suffix(".ogg").tempfile().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let out = Command::new("opusinfo").arg(file.path()).output().expect("opusinfo (Debian opus-tools) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "opusinfo failed: {text}");
    let line = text.lines().find(|l| l.contains("Playback length")).unwrap_or_else(|| panic!("{text}"));
    // "Playback length: 0m:01.560s"
    let v = line.split(':').skip(1).collect::<Vec<_>>().join(":");
    let v = v.trim().trim_end_matches('s');
    let (m, s) = v.split_once("m:").unwrap();
    let ms = m.trim().parse::<u64>().unwrap() * 60_000 + (s.parse::<f64>().unwrap() * 1000.0).round() as u64;
    let warnings =
        text.lines().filter(|l| l.to_ascii_lowercase().contains("warning")).collect::<Vec<_>>().join("\n");
    (ms, warnings)
}

async fn conversation_is_kept(kind: DatabaseKind) {
    let app = spawn(kind).await;
    let mut dev = app.connect().await;
    let session_id = uuid::Uuid::parse_str(dev.session_id()).unwrap();
    let device = app.app.sessions.iter_device_ids().pop().unwrap();
    let uplink = spoken_turn();
    for _ in 0..2 {
        dev.tx.listen_start(ListenMode::Auto).await.unwrap();
        dev.tx.stream_audio(&uplink, Duration::from_millis(10)).await.unwrap();
        collect_reply(&mut dev.rx, Duration::from_secs(15), Duration::ZERO).await;
    }
    dev.tx.listen(ListenState::Detect, None, Some("turn off the lights")).await.unwrap();
    collect_reply(&mut dev.rx, Duration::from_secs(15), Duration::ZERO).await;
    dev.tx.close().await.unwrap();
    drop(dev);
    let store = &app.app.store;
    // The session ends when the gateway notices the close; then everything is flushed.
    let mut ended = false;
    for _ in 0..100 {
        app.app.writer.flush().await;
        if store.session(session_id).await.unwrap().is_some_and(|s| s.status == "ended") {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ended, "session row marked ended");
    let session = store.session(session_id).await.unwrap().unwrap();
    assert_eq!(session.device_id, device);
    assert!(session.ended_at.unwrap() >= session.started_at);
    assert_eq!(session.metadata["protocol_version"], 1);

    let messages = store.session_messages(session_id).await.unwrap();
    let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant].repeat(3));
    assert_eq!(messages.iter().map(|m| m.sequence_num).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
    assert_eq!(messages[4].content, "turn off the lights");
    assert_eq!(messages[5].content, "turn off the lights");
    assert!(
        messages[4].audio_file_id.is_none() && messages[5].audio_file_id.is_none(),
        "text turns have no audio"
    );

    let clips = store.session_clips(session_id).await.unwrap();
    assert_eq!(clips.len(), 4, "two clips per voice turn");
    for m in &messages[..4] {
        let clip = clips.iter().find(|c| Some(c.file_id) == m.audio_file_id).expect("message → clip");
        assert_eq!(clip.message_id, m.message_id, "clip → message");
        assert_eq!(clip.source_type, if m.role == Role::User { "user" } else { "tts" });
        assert_eq!((clip.file_type.as_str(), clip.channels, clip.sample_rate), ("ogg", 1, 16_000));
        assert!(clip.object_key.starts_with(&format!("{device}/")) && clip.object_key.ends_with(".ogg"));
        assert!(clip.object_key.contains(&session_id.to_string()));
    }
    // Every clip, once uploaded, is a real Ogg-Opus file of the stated length.
    for _ in 0..200 {
        if store.upload_backlog().await.unwrap().pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for row in store.session_clips(session_id).await.unwrap() {
        assert_eq!(row.upload_status, "uploaded");
        let data = app.app.storage.get(&row.object_key).await.unwrap();
        assert_eq!(row.file_size as usize, data.len());
        let (ms, warnings) = opusinfo(&data);
        assert!(warnings.is_empty(), "opusinfo warnings: {warnings}");
        assert!(
            (ms as i64 - i64::from(row.duration_ms)).abs() <= 60,
            "opusinfo {ms} ms vs row {}",
            row.duration_ms
        );
        assert!(ms >= 1000, "a clip of the ~1.3 s utterance, got {ms} ms");
    }
    let devices =
        store.count_rows(xiaozhi_gateway::store::queries::Table::Devices, Some(&device)).await.unwrap();
    assert_eq!(devices, 1, "the device is recorded");
}

#[tokio::test]
async fn conversation_is_kept_in_postgres() {
    conversation_is_kept(DatabaseKind::Postgres).await
}

#[tokio::test]
async fn conversation_is_kept_in_embedded_sqlite() {
    conversation_is_kept(DatabaseKind::Sqlite).await
}

#[tokio::test]
async fn an_interrupted_reply_is_recorded_with_what_was_sent() {
    let app = spawn(DatabaseKind::Postgres).await;
    let mut dev = app.connect().await;
    let session_id = uuid::Uuid::parse_str(dev.session_id()).unwrap();
    let mut uplink = Vec::new();
    for _ in 0..4 {
        uplink.extend(speech_packets());
    }
    dev.tx.listen_start(ListenMode::Manual).await.unwrap();
    dev.tx.stream_audio(&uplink, Duration::ZERO).await.unwrap();
    dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
    let mut heard = 0;
    while heard < 5 {
        if let Event::Audio { .. } = dev.rx.next_within(Duration::from_secs(10)).await.unwrap() {
            heard += 1;
        }
    }
    dev.tx.abort(None).await.unwrap();
    let rest = collect_reply(&mut dev.rx, Duration::from_secs(5), Duration::from_millis(200)).await;
    let heard = heard + rest.frames.len();
    app.app.writer.flush().await;
    let mut messages = Vec::new();
    for _ in 0..50 {
        app.app.writer.flush().await;
        messages = app.app.store.session_messages(session_id).await.unwrap();
        if messages.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(messages.len(), 2);
    assert!(!messages[0].interrupted);
    assert!(messages[1].interrupted, "the reply is marked interrupted");
    let clips = app.app.store.session_clips(session_id).await.unwrap();
    let reply_clip = clips.iter().find(|c| Some(c.file_id) == messages[1].audio_file_id).unwrap();
    let user_clip = clips.iter().find(|c| Some(c.file_id) == messages[0].audio_file_id).unwrap();
    let packets = reply_clip.duration_ms as usize / 60 + 1;
    assert!(packets.abs_diff(heard) <= 2, "reply clip holds what was sent ({packets} vs {heard} heard)");
    assert!(reply_clip.duration_ms < user_clip.duration_ms / 2);
}

/// Retention on a running gateway: at start (and hourly) it deletes the rows older than the
/// retention period, and the upload workers remove their objects; what is younger stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_expired_rows_and_their_objects() {
    use crate::store_suite::{session, turn};
    use std::sync::Arc;
    use xiaozhi_gateway::pipeline::echo::EchoPipeline;
    let data = tempfile::tempdir().unwrap();
    let settings = |days: u32| {
        let mut s = xiaozhi_gateway::config::Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_owned(),
            ..Default::default()
        };
        s.database.message_retention_days = days;
        s
    };
    let objects = data.path().join("objects").join("xiaozhi-audio");
    let (old_day, now) = (chrono::Utc::now() - chrono::Duration::days(40), chrono::Utc::now());
    let (old, fresh) = (session("aa:00:00:00:0e:01", old_day), session("aa:00:00:00:0e:01", now));
    let (old_turn, fresh_turn) = (turn(&old, 0, old_day), turn(&fresh, 0, now));

    // Without retention: both turns are kept and their clips uploaded.
    let keep = xiaozhi_gateway::startup::Application::build_with(settings(0), Arc::new(EchoPipeline::new()))
        .await
        .unwrap()
        .state();
    keep.store.write_turn(old_turn.clone()).await.unwrap();
    keep.store.write_turn(fresh_turn.clone()).await.unwrap();
    let all: Vec<_> = old_turn.clips.iter().chain(&fresh_turn.clips).collect();
    for _ in 0..100 {
        if all.iter().all(|c| objects.join(&c.object_key).exists()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(all.iter().all(|c| objects.join(&c.object_key).exists()), "clips uploaded");
    keep.shutdown.cancel();

    // A gateway with 30 days of retention: the 40-day-old turn goes, rows and objects.
    let app = xiaozhi_gateway::startup::Application::build_with(settings(30), Arc::new(EchoPipeline::new()))
        .await
        .unwrap()
        .state();
    let gone = |c: &&xiaozhi_gateway::store::model::ClipRecord| !objects.join(&c.object_key).exists();
    for _ in 0..100 {
        if old_turn.clips.iter().all(|c| gone(&c)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(old_turn.clips.iter().all(|c| gone(&c)), "expired objects deleted");
    assert!(fresh_turn.clips.iter().all(|c| !gone(&c)), "young objects kept");
    assert!(app.store.session_messages(old.session_id).await.unwrap().is_empty());
    assert_eq!(app.store.session_messages(fresh.session_id).await.unwrap().len(), 2);
    app.shutdown.cancel();
}
