//! Clips reach object storage from the durable upload pool: playable, linked, not duplicated,
//! and never at the expense of the audio loop, even while S3 is down or the gateway is killed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};
use testkit::s3::S3Server;
use xiaozhi_gateway::client::{DeviceClient, DeviceConfig};
use xiaozhi_gateway::config::{DatabaseKind, Settings};
use xiaozhi_gateway::store::Store;
use xiaozhi_gateway::store::model::StoredClip;
use xiaozhi_gateway::store::queries::Table;

use crate::helpers::*;
use crate::persistence::opusinfo;

/// Postgres plus the given S3 endpoint and a fresh bucket.
async fn settings_for(endpoint: String) -> impl FnOnce(&mut Settings) {
    let url = tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap();
    move |s: &mut Settings| {
        s.database.kind = DatabaseKind::Postgres;
        s.database.url = Some(url);
        s.storage.endpoint = Some(endpoint);
        s.storage.access_key = testkit::s3::ACCESS_KEY.into();
        s.storage.secret_key = testkit::s3::SECRET_KEY.into();
        s.storage.bucket = testkit::s3::fresh_bucket();
        s.storage.upload_backoff_max_secs = 1;
    }
}

/// One voice turn in auto mode; returns the reply's frame arrival gaps.
async fn voice_turn(dev: &mut DeviceClient) -> Vec<Duration> {
    let reply = auto_turn(dev).await;
    assert!(reply.frames.len() >= speech_packets().len() - 6, "the whole echo arrived");
    reply.frames.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

/// Waits until no clip is pending; returns every clip row.
pub(crate) async fn wait_uploaded(store: &Store, expected: usize, limit: Duration) -> Vec<StoredClip> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let backlog = store.upload_backlog().await.unwrap();
        let total = store.count_rows(Table::Clips, None).await.unwrap() as usize;
        if backlog.pending == 0 && total >= expected {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "clips still pending: {backlog:?}, {total} rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sessions = store.sessions(None, None, 1000).await.unwrap().items;
    let mut clips = Vec::new();
    for s in sessions {
        clips.extend(store.session_clips(s.session_id).await.unwrap());
    }
    clips
}

/// Every clip row is uploaded, its object is the staged bytes (checksum), and it plays.
pub(crate) fn assert_in_bucket(clips: &[StoredClip], file_of: impl Fn(&str) -> std::path::PathBuf) {
    for c in clips {
        assert_eq!(c.upload_status, "uploaded", "{c:?}");
        assert!(c.uploaded_at.is_some());
        let bytes = std::fs::read(file_of(&c.object_key)).unwrap_or_else(|e| panic!("{}: {e}", c.object_key));
        assert_eq!(bytes.len() as i64, c.file_size);
        let sum: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sum, c.checksum, "object bytes are the clip's");
        let (ms, warnings) = opusinfo(&bytes);
        assert!(warnings.is_empty(), "{warnings}");
        assert!((ms as i64 - i64::from(c.duration_ms)).abs() <= 60);
    }
}

/// Every file under a directory, recursively (s3s-fs keeps a bucket's objects as plain files
/// under the bucket's directory and its own metadata outside it).
pub(crate) fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Ogg files under a bucket directory of s3s-fs.
fn objects_in(dir: &std::path::Path) -> usize {
    files_under(dir).iter().filter(|p| p.extension().is_some_and(|x| x == "ogg")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_clip_reaches_the_bucket_playable_and_unstaged() {
    let s3 = tokio::task::spawn_blocking(testkit::s3::shared).await.unwrap();
    let app = spawn_app_with(settings_for(s3.endpoint.clone()).await).await;
    let bucket = app.app.settings.storage.bucket.clone();
    let mut dev = app.connect().await;
    voice_turn(&mut dev).await;
    voice_turn(&mut dev).await;
    app.app.writer.flush().await;
    let clips = wait_uploaded(&app.app.store, 4, Duration::from_secs(20)).await;
    assert_eq!(clips.len(), 4);
    assert_in_bucket(&clips, |k| s3.object_path(&bucket, k));
    assert_eq!(app.app.store.count_rows(Table::Staged, None).await.unwrap(), 0, "staged bytes dropped");
    assert_eq!(objects_in(&s3.root.join(&bucket)), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_keeps_clips_in_the_data_dir() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    voice_turn(&mut dev).await;
    app.app.writer.flush().await;
    let clips = wait_uploaded(&app.app.store, 2, Duration::from_secs(20)).await;
    let root = app.app.settings.data_dir.join("objects").join(&app.app.settings.storage.bucket);
    assert_in_bucket(&clips, |k| root.join(k));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_while_devices_talk_loses_nothing_and_delays_no_frame() {
    let mut s3 = tokio::task::spawn_blocking(S3Server::start).await.unwrap();
    let app = spawn_app_with(settings_for(s3.endpoint()).await).await;
    let bucket = app.app.settings.storage.bucket.clone();
    s3.stop();
    let mut gaps = Vec::new();
    let mut devices = Vec::new();
    for _ in 0..2 {
        devices.push(app.connect().await);
    }
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|mut dev| {
            tokio::spawn(async move {
                let mut g = voice_turn(&mut dev).await;
                g.extend(voice_turn(&mut dev).await);
                g
            })
        })
        .collect();
    for t in tasks {
        gaps.extend(t.await.unwrap());
    }
    // While S3 refuses every upload, replies still flow at the real-time pace: no gap
    // anywhere near an S3 timeout.
    let worst = gaps.iter().max().unwrap();
    assert!(*worst < Duration::from_millis(400), "a reply stalled for {worst:?} while S3 was down");
    app.app.writer.flush().await;
    let backlog = app.app.store.upload_backlog().await.unwrap();
    assert_eq!(backlog.pending, 8, "every clip waits in the outbox");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(app.app.uploads.stats().attempts_failed.load(std::sync::atomic::Ordering::Relaxed) > 0);

    let s3 = tokio::task::spawn_blocking(move || {
        s3.restart();
        s3
    })
    .await
    .unwrap();
    let clips = wait_uploaded(&app.app.store, 8, Duration::from_secs(60)).await;
    assert_eq!(clips.len(), 8);
    assert!(clips.iter().any(|c| c.upload_attempts > 1), "some clips needed retries");
    assert_in_bucket(&clips, |k| s3.object_path(&bucket, k));
    assert_eq!(objects_in(&s3.root().join(&bucket)), 8, "no clip uploaded twice under another key");
}

/// Starts the real binary against the given database and S3 endpoint.
fn start_gateway(port: u16, data: &std::path::Path, db: &str, endpoint: &str, bucket: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_xiaozhi-gateway"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("XIAOZHI_DATA_DIR", data)
        .env("DB_TYPE", "postgres")
        .env("DATABASE_URL", db)
        .env("MINIO_ENDPOINT", endpoint)
        .env("MINIO_ACCESS_KEY", testkit::s3::ACCESS_KEY)
        .env("MINIO_SECRET_KEY", testkit::s3::SECRET_KEY)
        .env("MINIO_BUCKET_AUDIO", bucket)
        .env("XIAOZHI_UPLOAD_BACKOFF_MAX_SECS", "1")
        .env("XIAOZHI_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway binary")
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway did not start listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_clips_pending_uploads_them_after_restart() {
    let mut s3 = tokio::task::spawn_blocking(S3Server::start).await.unwrap();
    let db = tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let bucket = testkit::s3::fresh_bucket();
    let port = testkit::free_port();
    // The bucket gets created while S3 is up; then S3 goes away.
    let mut gw = start_gateway(port, data.path(), &db, &s3.endpoint(), &bucket);
    wait_listening(port).await;
    s3.stop();
    let mut dev = DeviceClient::connect(&DeviceConfig::new(
        format!("ws://127.0.0.1:{port}/xiaozhi/v1/"),
        fresh_device_id(),
    ))
    .await
    .unwrap();
    voice_turn(&mut dev).await;
    voice_turn(&mut dev).await;
    let store = Store::connect_url(&db).await.unwrap();
    for _ in 0..100 {
        if store.upload_backlog().await.unwrap().pending == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.upload_backlog().await.unwrap().pending, 4, "four clips wait for S3");
    gw.kill().unwrap(); // SIGKILL: no drain, no flush
    gw.wait().unwrap();
    drop(dev);

    let s3 = tokio::task::spawn_blocking(move || {
        s3.restart();
        s3
    })
    .await
    .unwrap();
    let mut gw = start_gateway(port, data.path(), &db, &s3.endpoint(), &bucket);
    let clips = wait_uploaded(&store, 4, Duration::from_secs(60)).await;
    gw.kill().unwrap();
    gw.wait().unwrap();
    assert_eq!(clips.len(), 4);
    assert_in_bucket(&clips, |k| s3.object_path(&bucket, k));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wav_clips_when_asked() {
    let app = spawn_app_with(|s| s.storage.clip_format = xiaozhi_gateway::config::ClipFileFormat::Wav).await;
    let mut dev = app.connect().await;
    voice_turn(&mut dev).await;
    app.app.writer.flush().await;
    let clips = wait_uploaded(&app.app.store, 2, Duration::from_secs(20)).await;
    let root = app.app.settings.data_dir.join("objects").join(&app.app.settings.storage.bucket);
    for c in clips {
        assert_eq!(c.file_type, "wav");
        assert!(c.object_key.ends_with(".wav"));
        let reader = hound::WavReader::open(root.join(&c.object_key)).expect("a WAV file");
        let spec = reader.spec();
        assert_eq!((spec.sample_rate, spec.channels, spec.bits_per_sample), (16_000, 1, 16));
        let ms = i64::from(reader.duration()) * 1000 / 16_000;
        assert!((ms - i64::from(c.duration_ms)).abs() <= 60, "{ms} ms vs {}", c.duration_ms);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_conversation_deletes_its_objects() {
    let s3 = tokio::task::spawn_blocking(testkit::s3::shared).await.unwrap();
    let app = spawn_app_with(settings_for(s3.endpoint.clone()).await).await;
    let bucket = app.app.settings.storage.bucket.clone();
    let mut dev = app.connect().await;
    let session_id = uuid::Uuid::parse_str(dev.session_id()).unwrap();
    voice_turn(&mut dev).await;
    app.app.writer.flush().await;
    let clips = wait_uploaded(&app.app.store, 2, Duration::from_secs(20)).await;
    assert!(clips.iter().all(|c| s3.object_path(&bucket, &c.object_key).exists()));
    assert!(app.app.store.delete_session(session_id).await.unwrap());
    app.app.uploads.wake();
    for _ in 0..100 {
        if clips.iter().all(|c| !s3.object_path(&bucket, &c.object_key).exists())
            && app.app.store.count_rows(Table::ObjectDeletions, None).await.unwrap() == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("objects of the deleted conversation are still in the bucket");
}
