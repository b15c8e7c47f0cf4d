//! Conversation turns as a device experiences them, in every listening mode and protocol
//! version, with the echo brain.

use std::time::Duration;

use firmware_protocol::frame::ProtocolVersion;
use firmware_protocol::{ClientHello, ListenMode, ListenState, ServerMessage, TtsState};
use xiaozhi_gateway::client::{DeviceClient, DeviceConfig, Event};

use crate::helpers::*;

const REPLY_LIMIT: Duration = Duration::from_secs(15);
const LINGER: Duration = Duration::from_millis(300);
/// Fast uplink: VAD works in audio time, so tests need not stream in real time.
const FAST: Duration = Duration::from_millis(15);

/// Checks the echo reply's shape: stt, tts start, sentence, the user's own packets in order,
/// tts stop after the last frame and nothing after it.
fn assert_echo_of(reply: &ObservedReply, sent: &[Vec<u8>]) {
    let states = reply.tts_states();
    assert_eq!(states.first(), Some(&TtsState::Start), "messages: {:?}", reply.messages);
    assert_eq!(states.last(), Some(&TtsState::Stop), "messages: {:?}", reply.messages);
    assert!(states.contains(&TtsState::SentenceStart));
    let stt_pos = reply.messages.iter().position(|m| matches!(m, ServerMessage::Stt { .. }));
    let start_pos =
        reply.messages.iter().position(|m| matches!(m, ServerMessage::Tts { state: TtsState::Start, .. }));
    assert!(stt_pos.is_some() && stt_pos < start_pos, "stt must precede tts start: {:?}", reply.messages);
    assert!(!reply.frames.is_empty(), "no audio in the reply");
    assert_eq!(reply.frames_after_stop, 0, "audio after tts stop is dropped by the device");
    // Every frame is one of the user's packets, in the order they were spoken.
    let mut cursor = 0;
    for (_, f) in &reply.frames {
        let pos =
            sent[cursor..].iter().position(|p| p[..] == f[..]).expect("reply frame is not an uplink packet");
        cursor += pos + 1;
    }
    let last_frame = reply.frames.last().unwrap().0;
    assert!(reply.stop_at.unwrap() >= last_frame);
}

/// Frames must be paced, not burst: the device's decode queue holds 40 packets and drops the
/// rest. This is a lower bound on the spread, so a slow machine cannot fail it.
fn assert_paced(reply: &ObservedReply, prebuffer_frames: usize) {
    let n = reply.frames.len();
    if n > prebuffer_frames + 2 {
        let spread = reply.frames[n - 1].0 - reply.frames[0].0;
        let min = Duration::from_millis(60) * (n - prebuffer_frames - 2) as u32;
        assert!(spread >= min.mul_f32(0.9), "{n} frames arrived within {spread:?}: not paced");
        // tts stop comes after the last frame has had time to play.
        let stop_gap = reply.stop_at.unwrap() - reply.frames[n - 1].0;
        assert!(stop_gap >= Duration::from_millis(60), "tts stop {stop_gap:?} after the last frame");
    }
}

#[tokio::test]
async fn auto_mode_turn_is_ended_by_vad_and_echoed_in_real_time() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    // The echo announces the rate of the packets it plays back: the device's own.
    assert_eq!(dev.server_hello.audio_params.sample_rate, 16_000);
    assert_eq!(dev.server_hello.audio_params.frame_duration, 60);
    assert!(uuid::Uuid::parse_str(dev.session_id()).is_ok());

    let speech = speech_packets();
    let mut uplink = speech.clone();
    uplink.extend(silence_packets(15));
    for turn in 0..2 {
        dev.tx.listen_start(ListenMode::Auto).await.unwrap();
        dev.tx.stream_audio(&uplink, FAST).await.unwrap();
        let reply = collect_reply(&mut dev.rx, REPLY_LIMIT, LINGER).await;
        assert_echo_of(&reply, &uplink);
        assert_paced(&reply, 2);
        // The echo keeps the speech but trims the trailing silence.
        assert!(reply.frames.len() >= speech.len() - 6, "turn {turn}: {} frames", reply.frames.len());
        assert!(reply.frames.len() <= speech.len() + 4, "turn {turn}: {} frames", reply.frames.len());
        assert!(reply.stt().unwrap().contains("echo"));
    }
}

#[tokio::test]
async fn silence_alone_never_makes_a_turn() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    dev.tx.listen_start(ListenMode::Auto).await.unwrap();
    dev.tx.stream_audio(&silence_packets(40), FAST).await.unwrap();
    expect_quiet(&mut dev.rx, Duration::from_millis(800)).await;
}

#[tokio::test]
async fn manual_mode_turn_ends_on_listen_stop_and_keeps_everything() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    let mut uplink = speech_packets();
    uplink.extend(silence_packets(3));
    dev.tx.listen_start(ListenMode::Manual).await.unwrap();
    dev.tx.stream_audio(&uplink, FAST).await.unwrap();
    // No VAD in push-to-talk: nothing happens until the button is released.
    expect_quiet(&mut dev.rx, Duration::from_millis(700)).await;
    dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
    let reply = collect_reply(&mut dev.rx, REPLY_LIMIT, LINGER).await;
    assert_echo_of(&reply, &uplink);
    assert_eq!(reply.frames.len(), uplink.len(), "push-to-talk replays every packet");
}

#[tokio::test]
async fn realtime_mode_speech_during_the_reply_barges_in() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    let speech = speech_packets();
    let mut long = Vec::new();
    for _ in 0..3 {
        long.extend(speech.iter().cloned());
    }
    long.extend(silence_packets(12));
    dev.tx.listen_start(ListenMode::Realtime).await.unwrap();
    dev.tx.stream_audio(&long, FAST).await.unwrap();

    // Wait for the reply to be under way.
    let mut frames = 0;
    while frames < 3 {
        match dev.rx.next_within(REPLY_LIMIT).await.unwrap() {
            Event::Audio { .. } => frames += 1,
            Event::Json(_) => {}
            Event::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    // The user talks over the reply (the microphone never stops in realtime mode).
    let (mut tx, mut rx) = (dev.tx, dev.rx);
    let talk = tokio::spawn(async move {
        let mut uplink = speech_packets();
        uplink.extend(silence_packets(12));
        tx.stream_audio(&uplink, Duration::from_millis(60)).await.unwrap();
        tx
    });
    let mut stopped_after = None;
    let mut next_turn = None;
    let deadline = tokio::time::Instant::now() + REPLY_LIMIT;
    while tokio::time::Instant::now() < deadline {
        match rx.next_within(REPLY_LIMIT).await.unwrap() {
            Event::Audio { .. } if stopped_after.is_none() => frames += 1,
            Event::Audio { .. } => {}
            Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. }) if stopped_after.is_none() => {
                stopped_after = Some(frames)
            }
            Event::Json(ServerMessage::Stt { text }) if stopped_after.is_some() => {
                next_turn = Some(text);
                break;
            }
            Event::Json(_) => {}
            Event::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    let _ = talk.await;
    let stopped_after = stopped_after.expect("barge-in sent tts stop");
    assert!(stopped_after < long.len() - 12, "reply was not cut short ({stopped_after} frames)");
    assert!(next_turn.is_some(), "the interrupting speech became the next turn");
}

#[tokio::test]
async fn text_turn_is_answered_with_its_text_and_wake_words_are_not() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    dev.tx.listen(ListenState::Detect, None, Some("你好小智")).await.unwrap();
    expect_quiet(&mut dev.rx, Duration::from_millis(500)).await;

    dev.tx.listen(ListenState::Detect, None, Some("what time is it?")).await.unwrap();
    let reply = collect_reply(&mut dev.rx, REPLY_LIMIT, LINGER).await;
    assert_eq!(reply.stt(), Some("what time is it?"));
    assert_eq!(reply.sentences(), vec!["what time is it?"]);
    assert_eq!(reply.tts_states(), vec![TtsState::Start, TtsState::SentenceStart, TtsState::Stop]);
    assert!(reply.frames.is_empty());
}

#[tokio::test]
async fn abort_during_a_reply_stops_the_audio_at_once() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    let mut uplink = Vec::new();
    for _ in 0..3 {
        uplink.extend(speech_packets());
    }
    dev.tx.listen_start(ListenMode::Manual).await.unwrap();
    dev.tx.stream_audio(&uplink, Duration::ZERO).await.unwrap();
    dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
    let mut frames = 0;
    while frames < 2 {
        if let Event::Audio { .. } = dev.rx.next_within(REPLY_LIMIT).await.unwrap() {
            frames += 1;
        }
    }
    dev.tx.abort(None).await.unwrap();
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(2), Duration::from_millis(700)).await;
    assert_eq!(reply.frames_after_stop, 0, "audio continued after tts stop");
    // At most the prebuffer and what was in flight arrive between abort and tts stop.
    assert!(reply.frames.len() <= 4, "{} frames after abort", reply.frames.len());
    assert!(frames + reply.frames.len() < uplink.len());

    // The session stays usable: the next turn is answered in full.
    dev.tx.listen(ListenState::Detect, None, Some("still there?")).await.unwrap();
    let next = collect_reply(&mut dev.rx, REPLY_LIMIT, LINGER).await;
    assert_eq!(next.sentences(), vec!["still there?"]);
}

#[tokio::test]
async fn abort_without_a_reply_is_still_answered_with_tts_stop() {
    let app = spawn_app().await;
    let mut dev = app.connect().await;
    dev.tx.abort(Some("wake_word_detected")).await.unwrap();
    match dev.rx.next_within(Duration::from_secs(2)).await.unwrap() {
        Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. }) => {}
        other => panic!("expected tts stop, got {other:?}"),
    }
}

/// Protocol versions 1, 2 and 3, negotiated by header or by hello alone; the test client
/// decodes the downlink strictly in the negotiated version.
#[tokio::test]
async fn every_protocol_version_frames_both_directions() {
    let app = spawn_app().await;
    for version in [ProtocolVersion::V1, ProtocolVersion::V2, ProtocolVersion::V3] {
        for header in [true, false] {
            let mut cfg = app.device();
            cfg.version = version;
            cfg.version_header = header;
            let mut dev = DeviceClient::connect(&cfg).await.unwrap();
            assert_eq!(dev.server_hello.version, Some(version.number()));
            let uplink = speech_packets();
            dev.tx.listen_start(ListenMode::Manual).await.unwrap();
            dev.tx.stream_audio(&uplink, Duration::ZERO).await.unwrap();
            dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
            let reply = collect_reply(&mut dev.rx, REPLY_LIMIT, Duration::ZERO).await;
            assert_eq!(reply.frames.len(), uplink.len(), "v{version} header={header}");
            assert_echo_of(&reply, &uplink);
        }
    }
}

/// The browser test page: credentials in the query string, a hello with no version,
/// transport or audio_params; py-xiaozhi's 20 ms frames.
#[tokio::test]
async fn browser_hello_and_twenty_ms_frames_work() {
    let app = spawn_app().await;
    let mut cfg = DeviceConfig::new(
        format!("{}?device-id=aa:bb:cc:dd:ee:01&client-id=web-1&authorization=Bearer+x", app.ws_url()),
        "ignored",
    );
    cfg.device_id = None;
    cfg.client_id = None;
    cfg.version_header = false;
    cfg.hello = Some(ClientHello { device_name: Some("web".into()), ..ClientHello::default() });
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    assert!(app.app.sessions.get("aa:bb:cc:dd:ee:01").is_some());
    let mut uplink = speech_packets_ms(20);
    let mut enc = xiaozhi_gateway::audio::opus::FrameEncoder::new(16_000, 20).unwrap();
    uplink.extend((0..45).map(|_| enc.encode(&[0; 320]).unwrap()));
    dev.tx.listen_start(ListenMode::Auto).await.unwrap();
    dev.tx.stream_audio(&uplink, Duration::from_millis(5)).await.unwrap();
    let reply = collect_reply(&mut dev.rx, REPLY_LIMIT, LINGER).await;
    assert_echo_of(&reply, &uplink);
    assert!(reply.frames.len() > speech_packets_ms(20).len() / 2);
}

/// Devices are configured with whatever WebSocket URL their owner typed: any path upgrades.
#[tokio::test]
async fn any_websocket_path_is_a_device_session() {
    let app = spawn_app().await;
    for path in ["/", "/ws", "/xiaozhi/v1", "/some/proxy/prefix/xiaozhi/v1/"] {
        let cfg = DeviceConfig::new(format!("ws://{}{path}", app.addr), fresh_device_id());
        let mut dev = DeviceClient::connect(&cfg).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        dev.tx.listen(ListenState::Detect, None, Some("hello there")).await.unwrap();
        let reply = collect_reply(&mut dev.rx, REPLY_LIMIT, Duration::ZERO).await;
        assert_eq!(reply.sentences(), vec!["hello there"], "{path}");
    }
    // A plain GET elsewhere is not found; on the device path it says what lives there.
    let client = reqwest::Client::new();
    let status = |p: &'static str| {
        let c = client.clone();
        let url = format!("http://{}{p}", app.addr);
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/favicon.ico").await, 404);
    assert_eq!(status("/xiaozhi/v1/").await, 426);
}
