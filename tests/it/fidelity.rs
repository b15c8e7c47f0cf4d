//! What clients the project did not write meet: the close handshake, the session id in every
//! message, wake words with punctuation, tokens handed out by OTA, placeholder client ids, and
//! TCP keepalive.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use xiaozhi_gateway::client::{ClientError, DeviceClient, connect_raw};

use crate::helpers::{TestApp, collect_reply, expect_quiet, spawn_app, spawn_app_with};

const HELLO: &str = r#"{"type":"hello","version":1,"transport":"websocket","audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}"#;

/// A raw WebSocket to the gateway after the hello exchange, and the session id it was given.
async fn raw_session(app: &TestApp) -> (xiaozhi_gateway::client::Ws, String) {
    let (mut ws, _) = connect_raw(&app.device()).await.expect("upgrade");
    ws.send(Message::Text(HELLO.into())).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    let id = hello["session_id"].as_str().expect("hello has a session id").to_owned();
    (ws, id)
}

async fn next_json(ws: &mut xiaozhi_gateway::client::Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a message in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            Some(Ok(Message::Binary(_))) => continue,
            other => panic!("expected JSON, got {other:?}"),
        }
    }
}

/// Reads until the gateway's Close frame; fails on an abnormal end (no Close frame: 1006).
async fn close_reply(ws: &mut xiaozhi_gateway::client::Ws) -> CloseFrame {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an answer in time") {
            Some(Ok(Message::Close(Some(frame)))) => return frame,
            Some(Ok(Message::Close(None))) => panic!("a Close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("the connection ended without a Close frame: {e}"),
            None => panic!("the connection ended without a Close frame"),
        }
    }
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let app = spawn_app().await;
    let (mut ws, _) = raw_session(&app).await;
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })))
        .await
        .unwrap();
    assert_eq!(close_reply(&mut ws).await.code, CloseCode::Normal, "the code is echoed");

    // Also before the hello, and with a code of the client's own.
    let (mut ws, _) = connect_raw(&app.device()).await.unwrap();
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Library(4100), reason: "".into() })))
        .await
        .unwrap();
    assert_eq!(close_reply(&mut ws).await.code, CloseCode::Library(4100));
}

#[tokio::test]
async fn every_message_of_a_turn_names_the_session() {
    let app = spawn_app().await;
    let (mut ws, id) = raw_session(&app).await;
    ws.send(Message::Text(r#"{"type":"listen","state":"detect","text":"what time is it?"}"#.into()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let m = next_json(&mut ws).await;
        assert_eq!(m["session_id"], id.as_str(), "{m}");
        seen.push(format!("{} {}", m["type"].as_str().unwrap(), m["state"].as_str().unwrap_or("")));
        if m["type"] == "tts" && m["state"] == "stop" {
            break;
        }
    }
    assert_eq!(seen, ["stt ", "tts start", "tts sentence_start", "tts stop"]);
    // An abort sent with that id is answered.
    ws.send(Message::Text(format!(r#"{{"session_id":"{id}","type":"abort"}}"#).into())).await.unwrap();
    let m = next_json(&mut ws).await;
    assert_eq!((m["type"].as_str(), m["state"].as_str()), (Some("tts"), Some("stop")));
    assert_eq!(m["session_id"], id.as_str());
}

#[tokio::test]
async fn wake_words_are_recognised_whatever_their_punctuation() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    for heard in ["嘿，你好呀", "你好，小智", "你好小智。", " 你好 小智！", "嘿 你好呀?"]
    {
        dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some(heard)).await.unwrap();
        expect_quiet(&mut dev.rx, Duration::from_millis(300)).await;
    }
    // A phrase that merely contains a wake word is a typed turn.
    dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some("你好小智，几点了？")).await.unwrap();
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(10), Duration::ZERO).await;
    assert_eq!(reply.stt(), Some("你好小智，几点了？"));
    app.app.writer.flush().await;
    let session = uuid::Uuid::parse_str(dev.session_id()).unwrap();
    let stored = app.app.store.session_messages(session).await.unwrap();
    let texts: Vec<&str> = stored.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["你好小智，几点了？", "你好小智，几点了？"], "only the typed turn is stored");
}

#[tokio::test]
async fn ota_hands_out_the_configured_token_when_tokens_are_static() {
    let app = spawn_app_with(|s| {
        s.auth.tokens = vec!["operator-token".into()];
        s.auth.ota_token = Some("device-token".into());
    })
    .await;
    let v: Value = reqwest::Client::new()
        .post(app.http_url("/xiaozhi/ota/"))
        .header("Device-Id", "a0:b1:c2:d3:e4:01")
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["websocket"]["token"], "device-token");
    let mut cfg = app.device();
    cfg.token = Some("device-token".into());
    DeviceClient::connect(&cfg).await.expect("the token OTA gave is accepted");
}

#[tokio::test]
async fn placeholder_client_ids_are_not_kept_and_a_token_of_another_client_says_so() {
    let app = spawn_app_with(|s| s.auth.secret = Some("k".into())).await;
    let ota = |client: &'static str| {
        let url = app.http_url("/xiaozhi/ota/");
        async move {
            let v: Value = reqwest::Client::new()
                .post(url)
                .header("Device-Id", "a0:b1:c2:d3:e4:02")
                .header("Client-Id", client)
                .body(r#"{"uuid":"None"}"#)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["websocket"]["token"].as_str().unwrap().to_owned()
        }
    };
    let token = ota("None").await;
    assert_eq!(app.app.devices.get("a0:b1:c2:d3:e4:02").unwrap().client_id, None, "\"None\" is no client id");

    let mut cfg = app.device();
    cfg.device_id = Some("a0:b1:c2:d3:e4:02".into());
    cfg.client_id = Some("undefined".into());
    cfg.token = Some(token);
    DeviceClient::connect(&cfg).await.expect("the token was issued without a client id");

    let token = ota("7f3c1d7e-0000-4000-8000-000000000009").await;
    cfg.client_id = Some("7f3c1d7e-0000-4000-8000-00000000000a".into());
    cfg.token = Some(token);
    match DeviceClient::connect(&cfg).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, 403);
            assert!(body.contains("another client id"), "{body}");
        }
        Err(e) => panic!("expected a 403, got {e}"),
        Ok(_) => panic!("expected a 403, got a session"),
    }
}

#[tokio::test]
async fn device_connections_have_tcp_keepalive() {
    let app = spawn_app_with(|s| s.session.tcp_keepalive_secs = 40).await;
    let _dev = app.connect().await;
    // /proc/net/tcp: the gateway's end of the connection runs the keepalive timer (tr 02),
    // due within the 20 s of quiet the 40 s detection time allows.
    let port = format!("{:04X}", app.addr.port());
    let mut timer = (String::new(), String::new());
    // Until the hello is acknowledged the socket runs its retransmission timer (tr 01).
    for _ in 0..50 {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let ours: Vec<Vec<String>> = table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|f| f[1].ends_with(&format!(":{port}")) && f[3] == "01")
            .collect();
        assert_eq!(ours.len(), 1, "one established connection to the gateway");
        let (tr, when) = ours[0][5].split_once(':').unwrap();
        timer = (tr.to_owned(), when.to_owned());
        if tr != "01" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (timer, when) = (timer.0.as_str(), timer.1.as_str());
    assert_eq!(timer, "02", "keepalive timer running on the gateway's socket");
    let ticks = u64::from_str_radix(when, 16).unwrap();
    assert!(ticks <= 20 * 100 + 100, "first probe within 20 s: {ticks} ticks");
}
