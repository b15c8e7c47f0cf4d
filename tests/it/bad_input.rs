//! What devices and clients get wrong, and the defined outcome of each: ignored with a log
//! line (the session carries on), or a close with a code. Never a panic or a stuck session.

use std::time::Duration;

use firmware_protocol::frame::ProtocolVersion;
use firmware_protocol::{ListenMode, ListenState};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use xiaozhi_gateway::client::{DeviceClient, connect_raw};

use crate::helpers::*;

const LIMIT: Duration = Duration::from_secs(10);

/// The session still answers a text turn.
async fn still_answers(dev: &mut DeviceClient) {
    dev.tx.listen(ListenState::Detect, None, Some("are you there")).await.unwrap();
    let reply = collect_reply(&mut dev.rx, LIMIT, Duration::ZERO).await;
    assert_eq!(reply.sentences(), vec!["are you there"]);
}

#[tokio::test]
async fn malformed_and_unknown_text_messages_are_ignored() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    for junk in [
        "{not json",
        "[1,2,3]",
        "\"just a string\"",
        "{}",
        r#"{"type":42}"#,
        r#"{"type":"dance","moves":3}"#,
        r#"{"type":"listen","state":"sing"}"#,
        r#"{"type":"listen","state":"start","mode":"telepathic"}"#,
        r#"{"type":"mcp","payload":[1]}"#,
        r#"{"type":"abort","reason":{"nested":true}}"#,
        r#"{"type":"iot","update":true,"states":[{"name":"Speaker","state":{"volume":80}}]}"#,
        r#"{"type":"mcp","payload":{"jsonrpc":"2.0","id":"x","result":{}}}"#,
    ] {
        dev.tx.send_text(junk.into()).await.unwrap();
    }
    expect_quiet(&mut dev.rx, Duration::from_millis(300)).await;
    still_answers(&mut dev).await;
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let app = spawn_app_with(|s| s.session.max_message_bytes = 4096).await;
    let mut dev = app.connect().await;
    let big = format!(r#"{{"type":"listen","state":"detect","text":"{}"}}"#, "x".repeat(5000));
    dev.tx.send_text(big).await.unwrap();
    assert_eq!(expect_close(&mut dev.rx, LIMIT).await, Some(1009));

    let mut dev = app.connect().await;
    dev.tx.send_binary(vec![0u8; 5000]).await.unwrap();
    assert_eq!(expect_close(&mut dev.rx, LIMIT).await, Some(1009));

    // Messages at the limit are fine.
    let mut dev = app.connect().await;
    dev.tx.send_binary(vec![0xF8; 4000]).await.unwrap();
    still_answers(&mut dev).await;
}

#[tokio::test]
async fn frames_whose_header_lies_are_dropped_and_the_rest_is_heard() {
    let app = spawn_app().await;
    for version in [ProtocolVersion::V2, ProtocolVersion::V3] {
        let mut cfg = app.device();
        cfg.version = version;
        let mut dev = DeviceClient::connect(&cfg).await.unwrap();
        let packets = speech_packets();
        dev.tx.listen_start(ListenMode::Manual).await.unwrap();
        for (i, p) in packets.iter().enumerate() {
            let mut framed = firmware_protocol::frame::encode(version, 0, p).unwrap();
            if i % 5 == 0 {
                // Claim more payload than the message carries.
                let n = framed.len();
                framed[n - p.len() - 1] = framed[n - p.len() - 1].wrapping_add(7);
            }
            dev.tx.send_binary(framed).await.unwrap();
        }
        // Truncated headers and a v2 header announcing a JSON frame.
        dev.tx.send_binary(vec![0, 0]).await.unwrap();
        let mut json_type = firmware_protocol::frame::encode(version, 0, &packets[1]).unwrap();
        json_type[if version == ProtocolVersion::V2 { 3 } else { 0 }] = 1;
        dev.tx.send_binary(json_type).await.unwrap();
        dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
        let reply = collect_reply(&mut dev.rx, LIMIT, Duration::ZERO).await;
        let honest = packets.len() - packets.len().div_ceil(5);
        assert_eq!(reply.frames.len(), honest, "v{version}: only honest frames are heard");
    }
}

#[tokio::test]
async fn empty_and_undecodable_audio_is_ignored() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    let packets = speech_packets();
    dev.tx.listen_start(ListenMode::Auto).await.unwrap();
    dev.tx.send_binary(Vec::new()).await.unwrap(); // 0-byte message (browser end of recording)
    dev.tx.send_binary(vec![0x03]).await.unwrap(); // code-3 TOC without its frame count
    dev.tx.send_binary(vec![0x1b, 0x00]).await.unwrap(); // code 3 with zero frames
    dev.tx.send_binary(vec![0x58; 200]).await.unwrap(); // valid TOC, garbage body: VAD hears silence
    let mut uplink = packets.clone();
    uplink.extend(silence_packets(12));
    dev.tx.stream_audio(&uplink, Duration::from_millis(10)).await.unwrap();
    let reply = collect_reply(&mut dev.rx, LIMIT, Duration::ZERO).await;
    assert!(reply.frames.len() >= packets.len() - 6, "{} frames", reply.frames.len());
}

#[tokio::test]
async fn audio_before_hello_is_ignored_and_the_hello_still_answered() {
    let app = spawn_app().await;
    let (ws, _) = connect_raw(&app.device()).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    for p in speech_packets().into_iter().take(5) {
        sink.send(Message::Binary(p.into())).await.unwrap();
    }
    sink.send(Message::Text(r#"{"type":"listen","state":"start","mode":"auto"}"#.into())).await.unwrap();
    sink.send(Message::Text(firmware_protocol::ClientMessage::Hello(Default::default()).to_json().into()))
        .await
        .unwrap();
    let first = tokio::time::timeout(LIMIT, stream.next()).await.unwrap().unwrap().unwrap();
    let Message::Text(t) = first else { panic!("expected the server hello, got {first:?}") };
    assert!(t.contains(r#""type":"hello""#) && t.contains(r#""transport":"websocket""#), "{t}");
}

#[tokio::test]
async fn permessage_deflate_offers_are_declined() {
    let app = spawn_app().await;
    let mut cfg = app.device();
    cfg.headers
        .push(("Sec-WebSocket-Extensions".into(), "permessage-deflate; client_max_window_bits".into()));
    let (ws, resp) = connect_raw(&cfg).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    assert!(resp.headers().get("sec-websocket-extensions").is_none(), "compression must not be negotiated");
    drop(ws);
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    still_answers(&mut dev).await;
}

#[tokio::test]
async fn a_device_that_vanishes_mid_reply_is_cleaned_up() {
    let app = spawn_app().await;
    let cfg = app.device();
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    dev.tx.listen_start(ListenMode::Manual).await.unwrap();
    dev.tx.stream_audio(&speech_packets(), Duration::ZERO).await.unwrap();
    dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
    loop {
        if let xiaozhi_gateway::client::Event::Audio { .. } = dev.rx.next_within(LIMIT).await.unwrap() {
            break;
        }
    }
    drop(dev); // TCP gone, no Close frame, as firmware does
    for _ in 0..100 {
        if app.app.sessions.is_empty() && app.app.connections.available_permits() == 10_000 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("session of a vanished device was not cleaned up");
}

/// The close code a raw connection receives within [`LIMIT`].
async fn raw_close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let fut = async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(c)) = m {
                return c.map(|c| u16::from(c.code));
            }
        }
        None
    };
    tokio::time::timeout(LIMIT, fut).await.expect("closed in time")
}

#[tokio::test]
async fn limits_and_shutdown_apply_before_the_hello_too() {
    let app = spawn_app_with(|s| s.session.max_message_bytes = 4096).await;
    let (mut ws, _) = connect_raw(&app.device()).await.unwrap();
    ws.send(Message::Text("x".repeat(5000).into())).await.unwrap();
    assert_eq!(raw_close_code(&mut ws).await, Some(1009));

    let (mut waiting, _) = connect_raw(&app.device()).await.unwrap();
    let mut talking = app.connect().await;
    app.app.shutdown.cancel();
    assert_eq!(raw_close_code(&mut waiting).await, Some(1001), "no hello yet");
    assert_eq!(expect_close(&mut talking.rx, LIMIT).await, Some(1001), "in session");
}

#[tokio::test]
async fn packets_larger_than_any_opus_packet_are_dropped() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    let packets = speech_packets();
    dev.tx.listen_start(ListenMode::Manual).await.unwrap();
    for _ in 0..50 {
        // Claims 2.5 ms each (CELT config 16), carries 5 KB: a memory attack, not audio.
        let mut big = vec![16u8 << 3];
        big.resize(5000, 0x55);
        dev.tx.audio(&big).await.unwrap();
    }
    dev.tx.stream_audio(&packets, Duration::ZERO).await.unwrap();
    dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
    let reply = collect_reply(&mut dev.rx, LIMIT, Duration::ZERO).await;
    assert_eq!(reply.frames.len(), packets.len(), "only the real packets were heard");
}
