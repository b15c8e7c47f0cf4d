//! The operator's views through the live admin API (each answer checked against the OpenAPI
//! document): search, devices and statistics after real device conversations.

use chrono::Utc;
use reqwest::Method;
use serde_json::Value;

use crate::admin_api::{Api, TOKEN, app_with_token, text_conversation, voice_conversation};

fn contents(page: &Value) -> Vec<&str> {
    page["items"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_devices_and_statistics_after_real_conversations() {
    let app = app_with_token().await;
    let api = Api::new(&app, Some(TOKEN)).await;
    let (d1, s1) = text_conversation(&app, "今天天气怎么样").await;
    let (d2, _) = text_conversation(&app, "play some jazz music").await;
    let (dev, d3, s3, clips) = voice_conversation(&app).await;
    app.app.writer.flush().await;

    // Search: a Chinese two- and three-character phrase, an English word, filters.
    for q in ["天气", "天气怎"] {
        let (status, page) = api.call(Method::GET, &format!("/api/search?q={q}&role=user"), None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(contents(&page), ["今天天气怎么样"], "{q}");
        let hit = &page["items"][0];
        assert_eq!(hit["session_id"], s1.to_string());
        assert_eq!(hit["device_id"], d1);
        assert!(hit["snippet"].as_str().unwrap().contains(&format!("<mark>{q}</mark>")), "{hit}");
    }
    let (_, page) = api.call(Method::GET, "/api/search?q=JAZZ&role=user", None).await;
    assert_eq!(contents(&page), ["play some jazz music"]);
    let (_, page) = api.call(Method::GET, &format!("/api/search?q=jazz&device_id={d1}"), None).await;
    assert!(contents(&page).is_empty());
    // The voice conversation's messages carry their clip's URL.
    let (_, page) = api.call(Method::GET, &format!("/api/search?device_id={d3}"), None).await;
    assert!(!page["items"].as_array().unwrap().is_empty());
    for m in page["items"].as_array().unwrap() {
        assert_eq!(m["session_id"], s3.to_string());
        let url = m["audio_url"].as_str().expect("a voice message has a clip URL");
        assert!(clips.iter().any(|c| url.contains(&c.file_id.to_string())), "{url}");
    }
    // Pages of one.
    let (_, first) = api.call(Method::GET, &format!("/api/search?device_id={d2}&limit=1"), None).await;
    let cursor = first["next_cursor"].as_str().expect("two messages: a second page");
    let (_, second) =
        api.call(Method::GET, &format!("/api/search?device_id={d2}&limit=1&cursor={cursor}"), None).await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_ne!(first["items"][0]["message_id"], second["items"][0]["message_id"]);

    // Devices: totals, online now.
    let (status, d) = api.call(Method::GET, &format!("/api/devices/{d3}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (d["online"].as_bool(), d["live_session_id"].as_str()),
        (Some(true), Some(s3.to_string().as_str()))
    );
    assert_eq!((d["sessions"].as_i64(), d["turns"].as_i64()), (Some(1), Some(1)));
    assert!(d["audio_in_secs"].as_f64().unwrap() > 1.0, "{d}");
    let (_, d) = api.call(Method::GET, &format!("/api/devices/{d1}"), None).await;
    assert_eq!((d["turns"].as_i64(), d["audio_in_secs"].as_f64()), (Some(1), Some(0.0)));
    let (status, _) = api.call(Method::GET, "/api/devices/ff:ff:ff:ff:ff:ff", None).await;
    assert_eq!(status, 404);
    let (_, list) = api.call(Method::GET, "/api/devices?limit=2", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let cursor = list["next_cursor"].as_str().unwrap();
    let (_, rest) = api.call(Method::GET, &format!("/api/devices?limit=2&cursor={cursor}"), None).await;
    let mut ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["items"].as_array().unwrap())
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = [d1.as_str(), d2.as_str(), d3.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    let (_, none) = api.call(Method::GET, "/api/devices?seen_since=2999-01-01", None).await;
    assert!(none["items"].as_array().unwrap().is_empty());

    // Statistics: today has the three conversations.
    let (status, stats) = api.call(Method::GET, "/api/stats", None).await;
    assert_eq!(status, 200);
    let days = stats["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    let today = days.last().unwrap();
    assert_eq!(today["day"], Utc::now().date_naive().to_string());
    assert_eq!(
        (today["sessions"].as_i64(), today["turns"].as_i64(), today["active_devices"].as_i64()),
        (Some(3), Some(3), Some(3))
    );
    assert!(
        today["speech_in_secs"].as_f64().unwrap() > 1.0 && today["clips"].as_i64().unwrap() >= 2,
        "{today}"
    );
    let (_, mine) = api
        .call(Method::GET, &format!("/api/stats?device_id={d1}&from={}", Utc::now().date_naive()), None)
        .await;
    assert_eq!(mine["days"].as_array().unwrap().len(), 1);
    assert_eq!(mine["days"][0]["turns"], 1);

    for path in [
        "/api/search?role=robot",
        "/api/search?from=yesterday",
        "/api/search?limit=0",
        "/api/search?cursor=nonsense",
        "/api/devices?cursor=nonsense",
        "/api/devices?seen_since=soon",
        "/api/stats?bucket=hour",
        "/api/stats?from=2020-01-01&to=2026-01-01",
        "/api/stats?from=2026-02-01&to=2026-01-01",
    ] {
        let (status, body) = api.call(Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].is_string());
    }
    let long = "长".repeat(201);
    let (status, _) = api.call(Method::GET, &format!("/api/search?q={long}"), None).await;
    assert_eq!(status, 400);
    drop(dev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_messages_and_zip_a_conversation_with_its_clips() {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let app = app_with_token().await;
    let api = Api::new(&app, Some(TOKEN)).await;
    let (d1, _) = text_conversation(&app, "导出, \"这一句\"").await;
    let (dev, d3, s3, clips) = voice_conversation(&app).await;
    app.app.writer.flush().await;

    let r = api.fetch(Method::GET, &format!("/api/export?format=csv&device_id={d1}"), None).await;
    assert_eq!(r.status, 200);
    assert!(r.ctype.starts_with("text/csv"));
    let mut reader = csv::Reader::from_reader(&r.bytes[..]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!((&rows[0][4], &rows[0][5]), ("user", "导出, \"这一句\""));
    let r = api.fetch(Method::GET, "/api/export", None).await;
    assert_eq!((r.status, r.ctype.as_str()), (200, "application/x-ndjson"));
    let lines: Vec<Value> =
        std::str::from_utf8(&r.bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "two conversations of two messages");
    let (status, _) = api.call(Method::GET, "/api/export?format=xml", None).await;
    assert_eq!(status, 400);

    // One conversation as a zip: its transcript and its clips, byte for byte.
    let r = api.fetch(Method::GET, &format!("/api/conversations/{s3}/export"), None).await;
    assert_eq!((r.status, r.ctype.as_str()), (200, "application/zip"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(r.bytes.to_vec())).unwrap();
    let mut transcript = String::new();
    zip.by_name("conversation.json").unwrap().read_to_string(&mut transcript).unwrap();
    let transcript: Value = serde_json::from_str(&transcript).unwrap();
    assert_eq!(transcript["session"]["device_id"], d3);
    assert_eq!(transcript["messages"].as_array().unwrap().len(), 2);
    assert!(transcript["missing_clips"].as_array().unwrap().is_empty());
    for c in &clips {
        let name = format!("clips/{}.{}", c.file_id, c.file_type);
        let mut bytes = Vec::new();
        zip.by_name(&name).unwrap().read_to_end(&mut bytes).unwrap();
        let sum: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sum, c.checksum, "{name}");
        assert!(transcript["messages"].as_array().unwrap().iter().any(|m| m["clip"] == name.as_str()));
    }
    let (status, _) =
        api.call(Method::GET, &format!("/api/conversations/{}/export", uuid::Uuid::new_v4()), None).await;
    assert_eq!(status, 404);
    drop(dev);

    // The command line exports the same from the gateway's own database.
    let out = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_xiaozhi-gateway"))
            .arg("export")
            .args(args)
            .env("XIAOZHI_DATA_DIR", &app.app.settings.data_dir)
            .output()
            .unwrap()
    };
    let csv_path = out.path().join("all.csv");
    let o = run(&["--format", "csv", "--output", csv_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = csv::Reader::from_path(&csv_path).unwrap().records().count();
    assert_eq!(rows, 4);
    let zip_path = out.path().join("c.zip");
    let o = run(&["--conversation", &s3.to_string(), "-o", zip_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let zip = zip::ZipArchive::new(std::fs::File::open(&zip_path).unwrap()).unwrap();
    assert_eq!(zip.len(), 1 + clips.len());
    let o = run(&["--from", "next tuesday", "-o", "x"]);
    assert_eq!(o.status.code(), Some(2), "a bad argument is a usage error");
}

/// `XIAOZHI_KEEP_AUDIO=user` on a running gateway: the device's speech is kept and uploaded,
/// the reply's audio is not; both messages are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_audio_user_keeps_only_the_devices_speech() {
    use xiaozhi_gateway::config::KeepAudio;
    let app = crate::helpers::spawn_app_with(|s| {
        s.admin.token = Some(TOKEN.into());
        s.storage.keep_audio = KeepAudio::User;
    })
    .await;
    let (dev, _device, sid, clips) = voice_conversation(&app).await;
    assert_eq!(clips.iter().map(|c| c.source_type.as_str()).collect::<Vec<_>>(), ["user"]);
    let api = Api::new(&app, Some(TOKEN)).await;
    let (_, m) = api.call(Method::GET, &format!("/api/conversations/{sid}/messages"), None).await;
    let items = m["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items[0]["audio_url"].is_string() && items[1]["audio_url"].is_null(), "{m}");
    drop(dev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_search_through_the_api_with_embeddings_from_a_fake_provider() {
    let fake = testkit::fake_openai::FakeOpenAi::start().await;
    let url = fake.base_url();
    let app = crate::helpers::spawn_app_with(move |s| {
        s.admin.token = Some(TOKEN.into());
        s.embeddings.url = Some(url);
        s.embeddings.model = "fake-embed".into();
    })
    .await;
    let api = Api::new(&app, Some(TOKEN)).await;
    text_conversation(&app, "今天天气怎么样").await;
    text_conversation(&app, "play some jazz music").await;
    app.app.writer.flush().await;
    for _ in 0..100 {
        if app.app.store.embedded_count("fake-embed").await.unwrap() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, page) = api.call(Method::GET, "/api/search?mode=semantic&q=天气好吗&role=user", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["content"], "今天天气怎么样");
    assert!(page["items"][0]["score"].as_f64().unwrap() > 0.3, "{page}");
    assert!(page["next_cursor"].is_null());
    let (_, page) = api.call(Method::GET, "/api/search?mode=semantic&q=jazz%20music&limit=1", None).await;
    assert_eq!(contents(&page), ["play some jazz music"]);
    for path in ["/api/search?mode=semantic", "/api/search?mode=fuzzy&q=x"] {
        let (status, _) = api.call(Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}");
    }
    // Without a provider, semantic search is refused with the setting to set.
    let plain = app_with_token().await;
    let (status, body) =
        Api::new(&plain, Some(TOKEN)).await.call(Method::GET, "/api/search?mode=semantic&q=x", None).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("XIAOZHI_EMBEDDINGS_URL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_lists_filter_and_messages_come_page_by_page() {
    let app = app_with_token().await;
    let api = Api::new(&app, Some(TOKEN)).await;
    let (device, sid) = text_conversation(&app, "第一句").await;
    app.app.writer.flush().await;
    let today = Utc::now().date_naive();
    let (_, page) =
        api.call(Method::GET, &format!("/api/conversations?device_id={device}&from={today}"), None).await;
    assert_eq!(page["items"][0]["session_id"], sid.to_string());
    let (_, page) = api.call(Method::GET, &format!("/api/conversations?to={today}"), None).await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");
    // The device disconnected: its session is ended.
    for _ in 0..50 {
        app.app.writer.flush().await;
        let (_, page) = api.call(Method::GET, "/api/conversations?status=ended", None).await;
        if !page["items"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, page) = api.call(Method::GET, "/api/conversations?status=ended", None).await;
    assert_eq!(page["items"][0]["session_id"], sid.to_string());
    let (_, first) = api.call(Method::GET, &format!("/api/conversations/{sid}/messages?limit=1"), None).await;
    assert_eq!(contents(&first), ["第一句"]);
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let (_, second) = api
        .call(Method::GET, &format!("/api/conversations/{sid}/messages?limit=1&cursor={cursor}"), None)
        .await;
    assert_eq!(second["items"][0]["role"], "assistant");
    assert!(second["next_cursor"].is_null());
    for path in [
        "/api/conversations?status=paused".to_owned(),
        "/api/conversations?from=last-week".to_owned(),
        format!("/api/conversations/{sid}/messages?cursor=zzz"),
        format!("/api/conversations/{sid}/messages?limit=501"),
    ] {
        let (status, _) = api.call(Method::GET, &path, None).await;
        assert_eq!(status, 400, "{path}");
    }
}
