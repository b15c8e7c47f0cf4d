//! The OTA endpoint, authentication before the upgrade, and the session lifecycle (idle and
//! hello timeouts, reconnects, the connection limit).

use std::time::Duration;

use serde_json::{Value, json};
use xiaozhi_gateway::client::{ClientError, DeviceClient, connect_raw};

use crate::helpers::*;

fn firmware_ota_body() -> Value {
    json!({"version":2,"language":"zh-CN","flash_size":16777216,"minimum_free_heap_size":"123456",
        "mac_address":"a0:b1:c2:d3:e4:f5","uuid":"7f3c1d7e-0000-4000-8000-000000000001","chip_model_name":"esp32s3",
        "application":{"name":"xiaozhi","version":"2.4.2","compile_time":"Aug  8 2026T08:33:45Z"},
        "board":{"type":"bread-compact-wifi","name":"bread","ssid":"home","rssi":-50,"mac":"a0:b1:c2:d3:e4:f5"}})
}

async fn ota(app: &TestApp, device: Option<&str>, body: String) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(app.http_url("/xiaozhi/ota/"))
        .header("Client-Id", "7f3c1d7e-0000-4000-8000-000000000001")
        .header("User-Agent", "bread-compact-wifi/2.4.2")
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(d) = device {
        req = req.header("Device-Id", d);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn ota_points_devices_at_the_websocket_and_never_at_mqtt() {
    let app = spawn_app().await;
    let (status, v) = ota(&app, Some("A0:B1:C2:D3:E4:F5"), firmware_ota_body().to_string()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["websocket"]["url"], app.ws_url());
    assert_eq!(v["websocket"]["token"], "", "auth is off: an empty token (the SDK needs the key)");
    assert_eq!(v["websocket"]["version"], 1);
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((v["server_time"]["timestamp"].as_i64().unwrap() - now_ms).abs() < 60_000);
    assert_eq!(v["server_time"]["timezone_offset"], 480);
    for absent in ["mqtt", "firmware", "activation"] {
        assert!(v.get(absent).is_none(), "{absent} must not be offered: {v}");
    }
    let rec = app.app.devices.get("a0:b1:c2:d3:e4:f5").expect("device recorded");
    assert_eq!(rec.board.as_deref(), Some("bread-compact-wifi"));
    assert_eq!(rec.firmware_version.as_deref(), Some("2.4.2"));
    assert_eq!(rec.client_id.as_deref(), Some("7f3c1d7e-0000-4000-8000-000000000001"));

    // Any body is accepted; the device is identified by its header (or the body's MAC).
    for body in ["", "not json", "[1,2]", "{\"board\":7}"] {
        let (status, v) = ota(&app, Some("a0:b1:c2:d3:e4:f6"), body.into()).await;
        assert_eq!(status, 200, "body {body:?}: {v}");
        assert!(v["websocket"]["url"].is_string());
    }
    let (status, _) = ota(&app, None, firmware_ota_body().to_string()).await;
    assert_eq!(status, 200, "the body's mac_address identifies the device");
    let (status, v) = ota(&app, None, "{}".into()).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("Device-Id"));
}

#[tokio::test]
async fn ota_offers_configured_url_firmware_activation_and_version() {
    let app = spawn_app_with(|s| {
        s.public_url = Some("wss://voice.example.com/xiaozhi/v1/".into());
        s.ota.firmware_version = Some("9.9.9".into());
        s.ota.firmware_url = Some("https://fw.example.com/x.bin".into());
        s.ota.activation = true;
        s.ota.protocol_version = 3;
        s.admin.token = Some("admin-secret".into());
    })
    .await;
    let (status, v) = ota(&app, Some("a0:b1:c2:d3:e4:f5"), firmware_ota_body().to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(v["websocket"]["url"], "wss://voice.example.com/xiaozhi/v1/");
    assert_eq!(v["websocket"]["version"], 3);
    assert_eq!(v["firmware"], json!({"version":"9.9.9","url":"https://fw.example.com/x.bin"}));
    let code = v["activation"]["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 6);
    assert!(v["activation"]["message"].as_str().unwrap().contains(&code));

    let activate = || async {
        reqwest::Client::new()
            .post(app.http_url("/xiaozhi/ota/activate"))
            .header("Device-Id", "a0:b1:c2:d3:e4:f5")
            .body("{}")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(activate().await, 202, "waiting until an operator approves");
    // The operator types the code the device shows into the admin API.
    let approve = |device: &'static str, code: String| {
        let url = app.http_url(&format!("/api/devices/{device}/activate"));
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth("admin-secret")
                .json(&json!({ "code": code }))
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(approve("a0:b1:c2:d3:e4:f5", wrong.into()).await, 422, "a wrong code is refused");
    assert_eq!(activate().await, 202);
    assert_eq!(approve("ff:ff:ff:00:00:01", code.clone()).await, 404, "no activation pending there");
    assert_eq!(approve("a0:b1:c2:d3:e4:f5", code.clone()).await, 200);
    assert_eq!(activate().await, 200);
    let (_, v) = ota(&app, Some("a0:b1:c2:d3:e4:f5"), firmware_ota_body().to_string()).await;
    assert!(v.get("activation").is_none(), "an activated device is not asked again: {v}");

    // The approval is kept in the store: a restarted gateway does not ask again.
    let server = xiaozhi_gateway::startup::Application::build_with(
        (*app.app.settings).clone(),
        std::sync::Arc::new(xiaozhi_gateway::pipeline::echo::EchoPipeline::new()),
    )
    .await
    .unwrap();
    let again = TestApp::from_parts(server.local_addr(), server.state());
    tokio::spawn(server.run_until_stopped());
    let (_, v) = ota(&again, Some("a0:b1:c2:d3:e4:f5"), firmware_ota_body().to_string()).await;
    assert!(v.get("activation").is_none(), "activation survives a restart: {v}");
    let (_, v) = ota(&again, Some("a0:b1:c2:d3:e4:f6"), firmware_ota_body().to_string()).await;
    assert!(v.get("activation").is_some(), "other devices still need approval");
}

#[tokio::test]
async fn ota_answers_browser_cors_preflight() {
    let app = spawn_app().await;
    let resp = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, app.http_url("/xiaozhi/ota/"))
        .header("Origin", "http://localhost:5173")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "device-id,client-id,content-type")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let allowed = resp.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("device-id") || allowed == "*", "{allowed}");
}

fn refused_status(r: Result<DeviceClient, ClientError>) -> u16 {
    match r {
        Err(ClientError::Refused { status, .. }) => status,
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got a session"),
    }
}

#[tokio::test]
async fn static_tokens_are_checked_before_the_upgrade() {
    let app = spawn_app_with(|s| s.auth.tokens = vec!["s3cret".into()]).await;
    let mut cfg = app.device();
    assert_eq!(refused_status(DeviceClient::connect(&cfg).await), 401, "no token");
    cfg.token = Some("wrong".into());
    assert_eq!(refused_status(DeviceClient::connect(&cfg).await), 401, "wrong token");
    // The SDK sends `Authorization: Bearer` with an empty token.
    cfg.token = None;
    cfg.headers.push(("Authorization".into(), "Bearer ".into()));
    assert_eq!(refused_status(DeviceClient::connect(&cfg).await), 401, "empty bearer");
    cfg.headers.clear();
    cfg.token = Some("s3cret".into());
    DeviceClient::connect(&cfg).await.expect("right token admitted");

    // Browsers put credentials in the query string.
    let mut browser = app.device();
    browser.url =
        format!("{}?device-id=aa:bb:cc:00:00:01&client-id=c&authorization=Bearer%20s3cret", app.ws_url());
    browser.device_id = None;
    browser.client_id = None;
    DeviceClient::connect(&browser).await.expect("query-string token admitted");
}

#[tokio::test]
async fn ota_issued_tokens_are_bound_to_the_device() {
    let app = spawn_app_with(|s| s.auth.secret = Some("k3y".into())).await;
    let cfg = app.device();
    let device = cfg.device_id.clone().unwrap();
    let resp: Value = reqwest::Client::new()
        .post(app.http_url("/xiaozhi/ota/"))
        .header("Device-Id", &device)
        .header("Client-Id", cfg.client_id.clone().unwrap())
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = resp["websocket"]["token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());

    let mut with_token = cfg.clone();
    with_token.token = Some(token.clone());
    let mut dev = DeviceClient::connect(&with_token).await.expect("issued token admitted");
    dev.tx.close().await.unwrap();

    let mut other_device = app.device();
    other_device.client_id = cfg.client_id.clone();
    other_device.token = Some(token.clone());
    assert_eq!(refused_status(DeviceClient::connect(&other_device).await), 403);

    let mut tampered = cfg.clone();
    tampered.token = Some(format!("{}x", token));
    assert_eq!(refused_status(DeviceClient::connect(&tampered).await), 401);
}

#[tokio::test]
async fn allowed_devices_need_no_token() {
    let app = spawn_app_with(|s| {
        s.auth.tokens = vec!["t".into()];
        s.auth.allowed_devices = vec!["AA:BB:CC:DD:EE:FF".into()];
    })
    .await;
    let mut cfg = app.device();
    cfg.device_id = Some("aa:bb:cc:dd:ee:ff".into());
    DeviceClient::connect(&cfg).await.expect("allowed device admitted");
}

#[tokio::test]
async fn upgrades_without_device_id_or_with_a_bad_version_are_refused() {
    let app = spawn_app().await;
    let mut cfg = app.device();
    cfg.device_id = None;
    assert_eq!(refused_status(DeviceClient::connect(&cfg).await), 400);
    let mut cfg = app.device();
    cfg.version_header = false;
    cfg.headers.push(("Protocol-Version".into(), "7".into()));
    assert_eq!(refused_status(DeviceClient::connect(&cfg).await), 400);

    // A plain GET on the WebSocket path says what lives there; elsewhere, 404.
    let r = reqwest::get(app.http_url("/xiaozhi/v1/")).await.unwrap();
    assert_eq!(r.status().as_u16(), 426);
    let r = reqwest::get(app.http_url("/nothing")).await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(reqwest::get(app.http_url("/healthz")).await.unwrap().text().await.unwrap(), "ok");
}

#[tokio::test]
async fn idle_sessions_are_closed_cleanly() {
    let app = spawn_app_with(|s| s.session.idle_timeout_secs = 1).await;
    let mut dev = app.connect().await;
    assert_eq!(expect_close(&mut dev.rx, Duration::from_secs(5)).await, Some(1000));
    assert!(wait_until(|| app.app.sessions.is_empty()).await, "session not unregistered");
}

/// Silence streamed in auto mode is not activity (a device left listening in an empty room
/// is closed), speech is: a session that talks outlives the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_speech_keeps_a_session_from_the_idle_timeout() {
    let app = spawn_app_with(|s| s.session.idle_timeout_secs = 2).await;
    let mut silent = app.connect().await;
    silent.tx.listen_start(firmware_protocol::ListenMode::Auto).await.unwrap();
    let started = std::time::Instant::now();
    let streaming = tokio::spawn(async move {
        // 4 s of real-time silence, longer than the timeout.
        let _ = silent.tx.stream_audio(&silence_packets(66), Duration::from_millis(60)).await;
        silent
    });

    let mut talker = app.connect().await;
    for _ in 0..3 {
        // A turn a second: speech, the echo, a pause; 3+ s in all.
        let reply = auto_turn(&mut talker).await;
        assert!(!reply.frames.is_empty());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(3), "the talker outlived the 2 s timeout");
    talker.tx.listen(firmware_protocol::ListenState::Detect, None, Some("still here")).await.unwrap();
    let reply = collect_reply(&mut talker.rx, Duration::from_secs(5), Duration::ZERO).await;
    assert_eq!(reply.sentences(), vec!["still here"], "the talking session is still open");

    let mut silent = streaming.await.unwrap();
    assert_eq!(expect_close(&mut silent.rx, Duration::from_secs(1)).await, Some(1000), "silence is idleness");
}

#[tokio::test]
async fn a_hello_that_never_comes_closes_the_connection() {
    let app = spawn_app_with(|s| s.session.hello_timeout_ms = 300).await;
    let (mut ws, _) = connect_raw(&app.device()).await.unwrap();
    use futures_util::StreamExt;
    let close = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(m) = ws.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(c)) = m {
                return c.map(|c| u16::from(c.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(close, Some(1008));
}

#[tokio::test]
async fn a_reconnecting_device_replaces_its_previous_session() {
    let app = spawn_app().await;
    let cfg = app.device();
    let mut first = DeviceClient::connect(&cfg).await.unwrap();
    let mut second = DeviceClient::connect(&cfg).await.unwrap();
    assert_eq!(expect_close(&mut first.rx, Duration::from_secs(3)).await, Some(4000));
    let device = cfg.device_id.unwrap();
    assert_eq!(app.app.sessions.get(&device).unwrap().session_id, second.session_id());
    // The new session works.
    second.tx.listen(firmware_protocol::ListenState::Detect, None, Some("hello again")).await.unwrap();
    let reply = collect_reply(&mut second.rx, Duration::from_secs(5), Duration::ZERO).await;
    assert_eq!(reply.sentences(), vec!["hello again"]);
}

#[tokio::test]
async fn the_connection_limit_refuses_with_503_and_frees_on_tcp_drop() {
    let app = spawn_app_with(|s| s.session.max_connections = 2).await;
    let a = app.connect().await;
    let _b = app.connect().await;
    assert_eq!(refused_status(DeviceClient::connect(&app.device()).await), 503);
    // A device that vanishes without a Close frame frees its slot.
    drop(a);
    assert!(wait_until(|| app.app.connections.available_permits() == 1).await, "slot not freed");
    DeviceClient::connect(&app.device()).await.expect("slot reused");
}

/// Polls `cond` for up to 5 s.
async fn wait_until(cond: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
