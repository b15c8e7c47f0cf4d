//! What an operator sees: readiness that follows the database, metrics that move with the
//! traffic, structured logs, a drain on SIGTERM that loses no finished turn, and a
//! configuration reference that matches the code.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use firmware_protocol::ListenMode;
use serde_json::Value;
use testkit::pg::Cluster;
use xiaozhi_gateway::client::{DeviceClient, DeviceConfig};
use xiaozhi_gateway::config::{DatabaseKind, Settings};
use xiaozhi_gateway::store::Store;

use crate::helpers::*;

async fn readyz(app: &TestApp) -> (u16, Value) {
    let r = reqwest::get(app.http_url("/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_and_the_drain() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start(false)).await.unwrap();
    let url = cluster.fresh_database();
    let app = spawn_app_with(move |s: &mut Settings| {
        s.database.kind = DatabaseKind::Postgres;
        s.database.url = Some(url);
        s.database.acquire_timeout_ms = 500;
    })
    .await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["object_storage"]["ok"], true);
    assert_eq!(body["uploads"]["pending"], 0);

    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["database"]["ok"], false);
    assert!(body["database"]["error"].is_string());

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart();
        cluster
    })
    .await
    .unwrap();
    let mut back = false;
    for _ in 0..50 {
        if readyz(&app).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "ready again once the database is back");

    app.app.draining.cancel();
    let (status, body) = readyz(&app).await;
    assert_eq!((status, body["draining"].as_bool()), (503, Some(true)));
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_an_upload_backlog_over_its_threshold() {
    let mut s3 = tokio::task::spawn_blocking(testkit::s3::S3Server::start).await.unwrap();
    let endpoint = s3.endpoint();
    let app = spawn_app_with(move |s: &mut Settings| {
        s.storage.endpoint = Some(endpoint);
        s.storage.access_key = testkit::s3::ACCESS_KEY.into();
        s.storage.secret_key = testkit::s3::SECRET_KEY.into();
        s.storage.bucket = testkit::s3::fresh_bucket();
        s.ops.ready_max_upload_backlog = 1;
    })
    .await;
    s3.stop();
    let mut dev = app.connect().await;
    auto_turn(&mut dev).await;
    app.app.writer.flush().await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["uploads"]["pending"], 2);
    assert_eq!(body["object_storage"]["ok"], false);
    assert!(body["uploads"]["oldest_pending_age_secs"].as_f64().unwrap() >= 0.0);
}

/// The value of one sample in a Prometheus text exposition.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_sessions_and_turns() {
    let app = spawn_app_with(|s: &mut Settings| s.auth.tokens = vec!["t".into()]).await;
    let scrape = || async { reqwest::get(app.http_url("/metrics")).await.unwrap().text().await.unwrap() };
    let before = scrape().await;
    assert_eq!(sample(&before, "xiaozhi_sessions_active{protocol_version=\"2\"}"), 0.0);
    assert!(sample(&before, "process_resident_memory_bytes") > 0.0);
    assert!(before.contains("process_cpu_seconds_total"));

    let mut cfg = app.device();
    cfg.version = firmware_protocol::frame::ProtocolVersion::V2;
    cfg.token = Some("wrong".into());
    assert!(DeviceClient::connect(&cfg).await.is_err());
    cfg.token = Some("t".into());
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    let uplink = spoken_turn();
    let reply = auto_turn(&mut dev).await;
    app.app.writer.flush().await;

    let during = scrape().await;
    assert_eq!(sample(&during, "xiaozhi_sessions_active{protocol_version=\"2\"}"), 1.0);
    assert_eq!(sample(&during, "xiaozhi_connections_active"), 1.0);
    assert_eq!(sample(&during, "xiaozhi_handshakes_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(sample(&during, "xiaozhi_handshakes_total{outcome=\"auth_refused\"}"), 1.0);
    assert_eq!(sample(&during, "xiaozhi_frames_in_total"), uplink.len() as f64);
    assert_eq!(sample(&during, "xiaozhi_frames_out_total"), reply.frames.len() as f64);
    assert!(sample(&during, "xiaozhi_bytes_out_total") > 0.0);
    assert_eq!(sample(&during, "xiaozhi_turns_total{kind=\"voice\"}"), 1.0);
    assert_eq!(sample(&during, "xiaozhi_turn_latency_seconds_count{stage=\"eos_to_first_audio\"}"), 1.0);
    assert!(sample(&during, "xiaozhi_store_commit_seconds_count") >= 1.0);
    assert!(sample(&during, "xiaozhi_store_committed_total") >= 2.0);

    drop(dev);
    for _ in 0..50 {
        let after = scrape().await;
        if sample(&after, "xiaozhi_sessions_active{protocol_version=\"2\"}") == 0.0 {
            assert_eq!(sample(&after, "xiaozhi_connections_active"), 0.0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the session gauge did not fall when the device left");
}

#[test]
fn the_configuration_reference_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIGURATION.md");
    let doc = std::fs::read_to_string(path).expect("docs/CONFIGURATION.md exists");
    let table = Settings::reference_markdown();
    assert!(
        doc.contains(&table),
        "docs/CONFIGURATION.md is out of date: regenerate its table with `xiaozhi-gateway config`"
    );
    // Every setting is in the document (that each variable really sets its key, with the
    // documented default, is checked by config's unit test
    // `every_documented_setting_is_read_from_its_variable_into_its_key`).
    for s in xiaozhi_gateway::config::SETTINGS {
        assert!(doc.contains(s.env), "{} missing", s.env);
    }
}

/// SIGTERM while devices talk: every turn a device heard completely is in the database,
/// sessions end with 1001, the process exits 0; log lines are JSON with the session's ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_loses_no_finished_turn() {
    let db = tokio::task::spawn_blocking(testkit::pg::database_url).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = testkit::free_port();
    let mut gw = Command::new(env!("CARGO_BIN_EXE_xiaozhi-gateway"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("XIAOZHI_DATA_DIR", data.path())
        .env("DATABASE_URL", &db)
        .env("XIAOZHI_LOG_FORMAT", "json")
        .env("XIAOZHI_DRAIN_SECS", "10")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = gw.stderr.take().unwrap();
    let logs =
        std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("ws://127.0.0.1:{port}/xiaozhi/v1/");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut dev = DeviceClient::connect(&DeviceConfig::new(url, fresh_device_id())).await.unwrap();
            let session = uuid::Uuid::parse_str(dev.session_id()).unwrap();
            let uplink = spoken_turn();
            let mut completed = 0;
            // Talk until the gateway closes the session.
            loop {
                if dev.tx.listen_start(ListenMode::Auto).await.is_err() {
                    break;
                }
                if dev.tx.stream_audio(&uplink, Duration::from_millis(20)).await.is_err() {
                    break;
                }
                match reply_or_close(&mut dev.rx).await {
                    Some(true) => completed += 1,
                    Some(false) => continue,
                    None => break,
                }
            }
            (session, completed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(gw.id() as i32, libc::SIGTERM) };
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let status = tokio::task::spawn_blocking(move || gw.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let store = Store::connect_url(&db).await.unwrap();
    let mut total = 0;
    for (session, completed) in results {
        let messages = store.session_messages(session).await.unwrap();
        assert!(
            messages.len() >= completed * 2,
            "session {session}: {completed} replies heard, {} messages stored",
            messages.len()
        );
        let s = store.session(session).await.unwrap().unwrap();
        assert_eq!(s.status, "ended", "the session was closed cleanly");
        total += completed;
    }
    assert!(total > 0, "some turns completed before the drain");

    let logs = logs.join().unwrap();
    let json: Vec<Value> =
        logs.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    let session_lines: Vec<&Value> = json.iter().filter(|v| v["message"] == "user turn").collect();
    assert!(!session_lines.is_empty());
    for v in session_lines {
        assert!(v["span"]["device_id"].is_string() && v["span"]["session_id"].is_string(), "{v}");
    }
    assert!(json.iter().any(|v| v["message"] == "draining"));
}

/// Reads one reply: Some(true) when it ended with `tts stop`, None when the session closed.
async fn reply_or_close(rx: &mut xiaozhi_gateway::client::DeviceReceiver) -> Option<bool> {
    use firmware_protocol::{ServerMessage, TtsState};
    use xiaozhi_gateway::client::Event;
    loop {
        match rx.next_within(Duration::from_secs(20)).await {
            Ok(Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. })) => return Some(true),
            Ok(Event::Closed(c)) => {
                assert!(c.is_none() || c.as_ref().map(|c| c.0) == Some(1001), "closed with {c:?}");
                return None;
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}
