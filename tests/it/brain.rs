//! The conversation brain against a fake OpenAI-compatible server: streaming sentence by
//! sentence, memory, abort cancelling the upstream request, and a spoken apology on failure.

use std::time::Duration;

use firmware_protocol::{ListenMode, ListenState, ServerMessage, TtsState};
use xiaozhi_gateway::client::{DeviceClient, Event};
use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::startup::Application;
use xiaozhi_gateway::store::model::Role;

use crate::fake_openai::{AsrScript, ChatScript, FakeOpenAi, SpeechScript, StreamEnd};
use crate::helpers::*;

/// A gateway whose brain talks to `fake`.
pub async fn spawn_brain(fake: &FakeOpenAi) -> (TestApp, tempfile::TempDir) {
    spawn_brain_with(fake, |_| {}).await
}

/// A gateway whose brain talks to `fake`, with settings changed by `adjust`.
pub async fn spawn_brain_with(
    fake: &FakeOpenAi,
    adjust: impl FnOnce(&mut Settings),
) -> (TestApp, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        ..Settings::default()
    };
    settings.session.vad_silence_ms = 400;
    settings.brain.asr_url = Some(fake.base_url());
    settings.brain.llm_url = Some(fake.base_url());
    settings.brain.tts_url = Some(fake.base_url());
    settings.brain.llm_api_key = Some("llm-key".into());
    settings.brain.provider_timeout_secs = 5;
    adjust(&mut settings);
    let server = Application::build(settings).await.expect("gateway with a brain starts");
    let (addr, app) = (server.local_addr(), server.state());
    tokio::spawn(server.run_until_stopped());
    (TestApp::from_parts(addr, app), data)
}

pub async fn speak(dev: &mut DeviceClient) {
    let mut uplink = speech_packets();
    uplink.extend(silence_packets(10));
    dev.tx.listen_start(ListenMode::Auto).await.unwrap();
    dev.tx.stream_audio(&uplink, Duration::from_millis(5)).await.unwrap();
}

pub async fn stored(app: &TestApp, session: &str) -> Vec<(Role, String, bool)> {
    let id = uuid::Uuid::parse_str(session).unwrap();
    for _ in 0..100 {
        app.app.writer.flush().await;
        let m = app.app.store.session_messages(id).await.unwrap();
        if m.len() >= 2 {
            return m.into_iter().map(|m| (m.role, m.content, m.interrupted)).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("turn not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_turn_streams_sentences_and_is_remembered() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("what time is it"));
    fake.push_chat(ChatScript::reply_paced(
        &["It is", " noon.", " Have a", " nice day."],
        Duration::from_millis(250),
    ));
    fake.set_speech(SpeechScript::sine_pcm(440.0, 300));
    let (app, _data) = spawn_brain(&fake).await;
    let cfg = app.device();
    let device = cfg.device_id.clone().unwrap();
    app.app.store.set_system_prompt(&device, "You are a pirate.").await.unwrap();
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    assert_eq!(dev.server_hello.audio_params.sample_rate, 24_000, "the configured synthesis rate");
    speak(&mut dev).await;

    // Read in arrival order: the first audio must come before the second sentence exists.
    let mut order = Vec::new();
    loop {
        match dev.rx.next_within(Duration::from_secs(20)).await.unwrap() {
            Event::Audio { .. } => {
                if order.last() != Some(&"audio".to_owned()) {
                    order.push("audio".to_owned());
                }
            }
            Event::Json(ServerMessage::Stt { text }) => order.push(format!("stt:{text}")),
            Event::Json(ServerMessage::Tts { state: TtsState::SentenceStart, text }) => {
                order.push(format!("sentence:{}", text.unwrap_or_default()))
            }
            Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. }) => break,
            Event::Json(_) => {}
            Event::Closed(c) => panic!("closed: {c:?}"),
        }
    }
    assert_eq!(
        order,
        ["stt:what time is it", "sentence:It is noon.", "audio", "sentence:Have a nice day.", "audio"],
        "sentences are spoken as the model produces them"
    );
    let chat = fake.last_request("/chat/completions").unwrap();
    assert_eq!(chat.bearer(), Some("llm-key"));
    let messages = chat.json_field("messages").as_array().unwrap().clone();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages[0]["content"], "You are a pirate.");
    assert_eq!(messages.last().unwrap()["content"], "what time is it");
    let asr = fake.last_request("/audio/transcriptions").unwrap();
    assert!(asr.field("file").is_some());

    let rows = stored(&app, dev.session_id()).await;
    assert_eq!(rows[0], (Role::User, "what time is it".into(), false));
    assert_eq!(rows[1], (Role::Assistant, "It is noon. Have a nice day.".into(), false));

    // A new session of the same device: the model hears the earlier exchange.
    drop(dev);
    fake.push_chat(ChatScript::reply(&["Yes."]));
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    dev.tx.listen(ListenState::Detect, None, Some("do you remember me")).await.unwrap();
    collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    let messages =
        fake.last_request("/chat/completions").unwrap().json_field("messages").as_array().unwrap().clone();
    let contents: Vec<&str> = messages.iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(
        contents.contains(&"what time is it") && contents.contains(&"It is noon. Have a nice day."),
        "{contents:?}"
    );
    assert_eq!(contents.last(), Some(&"do you remember me"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_cancels_the_model_and_keeps_what_was_said() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("tell me a long story"));
    let tokens =
        ["Once upon a time.", " There was a king.", " He had a cat.", " The cat was grey.", " The end."];
    fake.push_chat(ChatScript::reply_paced(&tokens, Duration::from_millis(700)));
    fake.set_speech(SpeechScript::sine_pcm(440.0, 300));
    let (app, _data) = spawn_brain(&fake).await;
    let mut dev = app.connect().await;
    speak(&mut dev).await;
    loop {
        if let Event::Audio { .. } = dev.rx.next_within(Duration::from_secs(20)).await.unwrap() {
            break;
        }
    }
    dev.tx.abort(None).await.unwrap();
    let rest = collect_reply(&mut dev.rx, Duration::from_secs(5), Duration::from_millis(300)).await;
    assert_eq!(rest.frames_after_stop, 0);
    let end = fake.stream_end(0, Duration::from_secs(5)).await;
    assert_eq!(end, Some(StreamEnd::Cancelled), "the model's stream was closed by the gateway");
    let rows = stored(&app, dev.session_id()).await;
    assert_eq!(rows[1].0, Role::Assistant);
    assert!(rows[1].2, "marked interrupted");
    assert!(rows[1].1.starts_with("Once upon a time."), "{}", rows[1].1);
    assert!(!rows[1].1.contains("The end."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_gets_a_spoken_apology_and_the_session_goes_on() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("hello"));
    fake.set_chat(ChatScript::Status(500, "upstream exploded".into()));
    let (app, _data) = spawn_brain(&fake).await;
    let mut dev = app.connect().await;
    speak(&mut dev).await;
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    assert_eq!(reply.sentences().len(), 1);
    assert!(reply.sentences()[0].starts_with("Sorry"));
    assert!(!reply.frames.is_empty(), "the apology is spoken");

    fake.push_chat(ChatScript::reply(&["Hi there."]));
    dev.tx.listen(ListenState::Detect, None, Some("hello again")).await.unwrap();
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    assert_eq!(reply.sentences(), vec!["Hi there."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_transcript_ends_the_turn_without_the_model() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("  "));
    let (app, _data) = spawn_brain(&fake).await;
    let mut cfg = app.device();
    cfg.hello = Some(firmware_protocol::ClientHello {
        features: None,
        ..firmware_protocol::ClientHello::firmware(1)
    });
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    speak(&mut dev).await;
    expect_quiet(&mut dev.rx, Duration::from_millis(1500)).await;
    assert!(fake.requests_to("/audio/transcriptions").len() == 1);
    assert!(fake.requests_to("/chat/completions").is_empty());
}

/// The independent client hears a brain turn: transcript, a sentence, audio it can decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xiaozhi_sdk_completes_a_turn_with_the_brain_on() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("turn on the kitchen lights"));
    fake.set_chat(ChatScript::reply(&["The kitchen lights are on."]));
    fake.set_speech(SpeechScript::sine_pcm(440.0, 700));
    let (app, _data) = spawn_brain(&fake).await;
    let report = crate::interop::drive(vec![
        "--ws-url".into(),
        app.ws_url(),
        "--wav".into(),
        crate::interop::speech_wav(),
    ])
    .await;
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["stt"], "turn on the kitchen lights");
    assert_eq!(report["sentences"][0], "The kitchen lights are on.");
    assert!(report["audio_packets"].as_u64().unwrap() >= 10, "{report:#}");
    assert_eq!(report["sdk"]["audio_decode_errors"], 0);
}

/// Answers the gateway's MCP requests like firmware; returns the `tools/call` params it saw.
pub async fn answer_mcp(
    dev: &mut DeviceClient,
    payload: &serde_json::Value,
    tool_result: Result<&str, &str>,
) -> Option<serde_json::Value> {
    use firmware_protocol::ClientMessage;
    let id = payload["id"].as_i64().expect("integer ids");
    let result = match payload["method"].as_str().unwrap() {
        "initialize" => {
            serde_json::json!({"protocolVersion":"2024-11-05","capabilities":{"tools":{}},"serverInfo":{"name":"test-board","version":"2.4.2"}})
        }
        "tools/list" => {
            serde_json::json!({"tools":[{"name":"self.audio_speaker.set_volume","description":"Set the speaker volume",
            "inputSchema":{"type":"object","properties":{"volume":{"type":"integer","minimum":0,"maximum":100}},"required":["volume"]}}]})
        }
        "tools/call" => {
            match tool_result {
                Ok(text) => {
                    let result = serde_json::json!({"content":[{"type":"text","text":text}],"isError":false});
                    reply_mcp(dev, &payload["id"], result).await;
                }
                Err(message) => {
                    // Firmware's error shape: `message` only, no `code`.
                    let reply = serde_json::json!({"jsonrpc":"2.0","id":id,"error":{"message":message}});
                    dev.tx.send(&ClientMessage::Mcp { session_id: None, payload: reply }).await.unwrap();
                }
            }
            return Some(payload["params"].clone());
        }
        other => panic!("unexpected MCP method {other}"),
    };
    reply_mcp(dev, &payload["id"], result).await;
    None
}

/// What a tool turn left behind (the gateway and its data directory stay alive with it).
struct ToolTurn {
    fake: FakeOpenAi,
    sentences: Vec<String>,
    call: Option<serde_json::Value>,
    app: TestApp,
    session: String,
    _data: tempfile::TempDir,
}

async fn tool_turn(tool_result: Result<&str, &str>) -> ToolTurn {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("set the volume to fifty"));
    fake.push_chat(ChatScript::tool_calls(&[(
        "call_1",
        "self_audio_speaker_set_volume",
        &["{\"volume\":", "50}"],
    )]));
    fake.push_chat(ChatScript::reply(&["Volume is now fifty."]));
    fake.set_speech(SpeechScript::sine_pcm(440.0, 200));
    let (app, data) = spawn_brain(&fake).await;
    let mut dev = app.connect().await;
    // Discovery first: initialize, then tools/list.
    for _ in 0..2 {
        match dev.rx.next_within(Duration::from_secs(5)).await.unwrap() {
            Event::Json(ServerMessage::Mcp { payload }) => {
                answer_mcp(&mut dev, &payload, tool_result).await;
            }
            other => panic!("expected MCP discovery, got {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    speak(&mut dev).await;
    let mut sentences = Vec::new();
    let mut call = None;
    loop {
        match dev.rx.next_within(Duration::from_secs(20)).await.unwrap() {
            Event::Json(ServerMessage::Mcp { payload }) => {
                call = answer_mcp(&mut dev, &payload, tool_result).await
            }
            Event::Json(ServerMessage::Tts { state: TtsState::SentenceStart, text }) => {
                sentences.push(text.unwrap_or_default())
            }
            Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. }) => break,
            Event::Closed(c) => panic!("closed {c:?}"),
            _ => {}
        }
    }
    let session = dev.session_id().to_owned();
    ToolTurn { fake, sentences, call, app, session, _data: data }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_tool_call_round_trips_and_shapes_the_answer() {
    let ToolTurn { fake, sentences, call, app, session, _data } = tool_turn(Ok("true")).await;
    assert_eq!(sentences, vec!["Volume is now fifty."]);
    let call = call.expect("the device was asked to run its tool");
    assert_eq!(call["name"], "self.audio_speaker.set_volume");
    assert_eq!(call["arguments"], serde_json::json!({"volume": 50}));
    let chats = fake.requests_to("/chat/completions");
    assert_eq!(chats.len(), 2);
    let offered: Vec<&str> = chats[0]
        .json_field("tools")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(
        offered.contains(&"self_audio_speaker_set_volume") && offered.contains(&"get_current_time"),
        "{offered:?}"
    );
    let second = chats[1].json_field("messages").as_array().unwrap().clone();
    let tool_msg = second.iter().find(|m| m["role"] == "tool").expect("the result goes back to the model");
    assert_eq!(
        (tool_msg["tool_call_id"].as_str(), tool_msg["content"].as_str()),
        (Some("call_1"), Some("true"))
    );

    let id = uuid::Uuid::parse_str(&session).unwrap();
    let mut stored = Vec::new();
    for _ in 0..100 {
        app.app.writer.flush().await;
        stored = app.app.store.session_messages(id).await.unwrap();
        if stored.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let roles: Vec<Role> = stored.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::User, Role::Assistant, Role::Tool, Role::Assistant]);
    assert_eq!(
        stored[1].tool_calls.as_ref().unwrap()[0]["function"]["name"],
        "self.audio_speaker.set_volume"
    );
    assert_eq!(stored[2].tool_call_id.as_deref(), Some("call_1"));
    assert_eq!(stored[3].content, "Volume is now fifty.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_device_tool_is_reported_to_the_model() {
    let ToolTurn { fake, sentences, call, .. } = tool_turn(Err("Missing valid argument: volume")).await;
    assert!(call.is_some());
    assert_eq!(sentences, vec!["Volume is now fifty."]);
    let second = fake.requests_to("/chat/completions")[1].json_field("messages").as_array().unwrap().clone();
    let tool_msg = second.iter().find(|m| m["role"] == "tool").unwrap();
    assert!(tool_msg["content"].as_str().unwrap().contains("Missing valid argument"), "{tool_msg}");
}

/// A device that presses the button again the moment `tts stop` arrives: every turn gets its
/// own reply (transcript, sentence, audio) before its `tts stop`. A stray second `tts stop`
/// (the session hearing of the end of playback after the device reacted) would end a turn
/// before its reply. The race needs release-build timing to show reliably: this test did not
/// catch it before the fix in debug builds; `cargo bench --bench brain_latency` (300 such
/// turns) failed within 20 turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_push_to_talk_turns_get_one_tts_stop_each() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("again"));
    fake.set_chat(ChatScript::reply(&["Yes."]));
    fake.set_speech(SpeechScript::sine_pcm(440.0, 120));
    let (app, _data) = spawn_brain(&fake).await;
    let mut cfg = app.device();
    cfg.hello = Some(firmware_protocol::ClientHello {
        features: None,
        ..firmware_protocol::ClientHello::firmware(1)
    });
    let mut dev = DeviceClient::connect(&cfg).await.unwrap();
    let uplink: Vec<Vec<u8>> = speech_packets().into_iter().take(5).collect();
    for turn in 0..30 {
        dev.tx.listen_start(ListenMode::Manual).await.unwrap();
        dev.tx.stream_audio(&uplink, Duration::ZERO).await.unwrap();
        dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
        let reply = collect_reply(&mut dev.rx, Duration::from_secs(10), Duration::ZERO).await;
        assert_eq!(reply.sentences(), vec!["Yes."], "turn {turn}: {:?}", reply.messages);
        assert!(!reply.frames.is_empty(), "turn {turn}: audio before the tts stop");
    }
}

/// The brain's clips are playable too: the user's utterance and the synthesized reply (24 kHz
/// Opus encoded here), each as long as what was sent and heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brains_reply_clip_is_playable_and_as_long_as_what_was_heard() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("sing"));
    fake.set_chat(ChatScript::reply(&["La la la.", " La la."]));
    fake.set_speech(SpeechScript::sine_pcm(440.0, 700));
    let (app, _data) = spawn_brain(&fake).await;
    let mut dev = app.connect().await;
    speak(&mut dev).await;
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    let heard_ms = reply.frames.len() as i64 * 60;
    app.app.writer.flush().await;
    let clips = crate::uploads::wait_uploaded(&app.app.store, 2, Duration::from_secs(20)).await;
    let root = app.app.settings.data_dir.join("objects").join(&app.app.settings.storage.bucket);
    let tts = clips.iter().find(|c| c.source_type == "tts").expect("a reply clip");
    assert_eq!((tts.sample_rate, tts.channels), (24_000, 1));
    let (ms, warnings) = crate::persistence::opusinfo(&std::fs::read(root.join(&tts.object_key)).unwrap());
    assert!(warnings.is_empty(), "{warnings}");
    assert!((ms as i64 - heard_ms).abs() <= 60, "clip {ms} ms, device heard {heard_ms} ms");
    let user = clips.iter().find(|c| c.source_type == "user").expect("the user's clip");
    let (ms, warnings) = crate::persistence::opusinfo(&std::fs::read(root.join(&user.object_key)).unwrap());
    assert!(warnings.is_empty() && ms >= 1000, "{ms} ms: {warnings}");
}
