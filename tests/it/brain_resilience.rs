//! The brain when providers misbehave or the device's tools do: fallback lists, retries only
//! where nothing was said yet, the local synthesizer as the last voice, synthesis running
//! ahead of playback, emotion, and device tools that fail, hang, or do not exist.

use std::time::Duration;

use firmware_protocol::{ServerMessage, TtsState};
use xiaozhi_gateway::client::{DeviceClient, Event};
use xiaozhi_gateway::store::model::Role;

use crate::brain::{spawn_brain_with, speak, stored};
use crate::fake_openai::{AsrScript, ChatScript, FakeOpenAi, SpeechScript, SseStep};
use crate::helpers::*;

/// An address where nothing listens (connections are refused at once).
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_falls_back_to_the_next_provider() {
    let (bad, good) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    bad.set_chat(ChatScript::Status(503, "overloaded".into()));
    bad.set_speech(SpeechScript::Status(500, "tts down".into()));
    good.set_transcription(AsrScript::text("what is the weather"));
    good.set_chat(ChatScript::reply(&["It is sunny."]));
    good.set_speech(SpeechScript::sine_pcm(440.0, 400));
    let dead = dead_url();
    let (app, _data) = spawn_brain_with(&good, |s| {
        s.brain.asr_url = Some(format!("{dead},{}", good.base_url()));
        s.brain.llm_url = Some(format!("{},{}", bad.base_url(), good.base_url()));
        s.brain.llm_api_key = Some("bad-key,good-key".into());
        s.brain.tts_url = Some(format!("{},{}", bad.base_url(), good.base_url()));
    })
    .await;
    let mut dev = app.connect().await;
    speak(&mut dev).await;
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    assert_eq!(reply.stt(), Some("what is the weather"));
    assert_eq!(reply.sentences(), vec!["It is sunny."]);
    assert!(reply.frames.len() >= 5, "the good provider's speech is heard");

    // A 503 is worth a second try on the same provider, then the next one answers.
    let bad_chats = bad.requests_to("/chat/completions");
    assert_eq!(bad_chats.len(), 2, "one retry on a 5xx");
    assert_eq!(bad_chats[0].bearer(), Some("bad-key"));
    assert_eq!(good.requests_to("/chat/completions")[0].bearer(), Some("good-key"));
    assert_eq!(bad.requests_to("/audio/speech").len(), 2);
    assert_eq!(good.requests_to("/audio/speech").len(), 1);
    assert_eq!(good.requests_to("/audio/transcriptions").len(), 1);
    let rows = stored(&app, dev.session_id()).await;
    assert_eq!(rows[1], (Role::Assistant, "It is sunny.".into(), false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_not_retried_but_the_next_provider_is_asked() {
    let (bad, good) = (FakeOpenAi::start().await, FakeOpenAi::start().await);
    bad.set_chat(ChatScript::Status(401, "wrong key".into()));
    good.set_chat(ChatScript::reply(&["Hello."]));
    let (app, _data) = spawn_brain_with(&good, |s| {
        s.brain.llm_url = Some(format!("{},{}", bad.base_url(), good.base_url()));
    })
    .await;
    let mut dev = app.connect().await;
    dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some("hi there")).await.unwrap();
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    assert_eq!(reply.sentences(), vec!["Hello."]);
    assert_eq!(bad.requests_to("/chat/completions").len(), 1, "a 401 will not pass by trying again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_mid_answer_is_not_asked_again() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::text("tell me two things"));
    // (`set_chat` replaces the queue: set the fallback first, then queue the broken stream.)
    fake.set_chat(ChatScript::reply(&["A different answer."]));
    fake.push_chat(ChatScript::Stream(vec![
        SseStep::role(),
        SseStep::content("The first thing."),
        SseStep::content(" The sec"),
        SseStep::Abort,
    ]));
    fake.set_speech(SpeechScript::sine_pcm(440.0, 300));
    let (app, _data) = spawn_brain_with(&fake, |_| {}).await;
    let mut dev = app.connect().await;
    speak(&mut dev).await;
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    // What was said stands; nothing is repeated, no apology is added mid-answer.
    assert_eq!(reply.sentences(), vec!["The first thing."]);
    assert_eq!(fake.requests_to("/chat/completions").len(), 1);
    let rows = stored(&app, dev.session_id()).await;
    assert_eq!(rows[1].1, "The first thing.");

    // The session goes on.
    dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some("again")).await.unwrap();
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    assert_eq!(reply.sentences(), vec!["A different answer."]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentence_no_synthesizer_will_speak_is_spoken_locally() {
    let fake = FakeOpenAi::start().await;
    fake.set_chat(ChatScript::reply(&["Still here."]));
    fake.set_speech(SpeechScript::garbage("text/html", "<html>maintenance</html>"));
    let (app, _data) = spawn_brain_with(&fake, |_| {}).await;
    let mut dev = app.connect().await;
    dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some("are you there")).await.unwrap();
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    assert_eq!(reply.sentences(), vec!["Still here."], "the answer, not an apology");
    assert!(reply.frames.len() >= 5, "the local synthesizer (or its chime) is heard");
    assert_eq!(fake.requests_to("/audio/speech").len(), 1, "a wrong format is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_sentence_is_synthesized_while_the_first_plays() {
    let fake = FakeOpenAi::start().await;
    fake.set_chat(ChatScript::reply(&["One sentence here.", " Another one there.", " And a third."]));
    // Slow synthesis of long sentences: one at a time would leave a gap between them.
    fake.set_speech(SpeechScript::sine_pcm(440.0, 1500).after(Duration::from_millis(300)));
    let (app, _data) = spawn_brain_with(&fake, |_| {}).await;
    let mut dev = app.connect().await;
    dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some("talk to me")).await.unwrap();
    let mut asked_before_first_audio = None;
    let mut sentences = Vec::new();
    loop {
        match dev.rx.next_within(Duration::from_secs(20)).await.unwrap() {
            Event::Audio { .. } if asked_before_first_audio.is_none() => {
                asked_before_first_audio = Some(fake.requests_to("/audio/speech").len())
            }
            Event::Json(ServerMessage::Tts { state: TtsState::SentenceStart, text }) => {
                sentences.push(text.unwrap())
            }
            Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. }) => break,
            Event::Closed(c) => panic!("closed {c:?}"),
            _ => {}
        }
    }
    assert_eq!(sentences, ["One sentence here.", "Another one there.", "And a third."]);
    assert_eq!(
        asked_before_first_audio,
        Some(3),
        "every sentence's synthesis was under way before the first one played"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emoji_opening_the_answer_sets_the_face_and_is_not_spoken() {
    let fake = FakeOpenAi::start().await;
    fake.set_chat(ChatScript::reply(&["😊 ", "Nice to", " meet you."]));
    let (app, _data) = spawn_brain_with(&fake, |_| {}).await;
    let mut dev = app.connect().await;
    dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some("hello")).await.unwrap();
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    let emotion = reply.messages.iter().find_map(|m| match m {
        ServerMessage::Llm { emotion, .. } => Some(emotion.as_str()),
        _ => None,
    });
    assert_eq!(emotion, Some("happy"));
    assert_eq!(reply.sentences(), vec!["Nice to meet you."]);
    let llm_at = reply.messages.iter().position(|m| matches!(m, ServerMessage::Llm { .. })).unwrap();
    let first_sentence_at = reply
        .messages
        .iter()
        .position(|m| matches!(m, ServerMessage::Tts { state: TtsState::SentenceStart, .. }))
        .unwrap();
    assert!(llm_at < first_sentence_at, "the face changes before the sentence is shown");
}

/// A device with MCP whose tools are `tools`, and whose `tools/call` answers are `answer`
/// (`None`: it never answers). Returns what the device heard and the model's requests.
async fn device_tool_turn(
    tools: impl Fn(&serde_json::Value) -> serde_json::Value,
    answer: Option<serde_json::Value>,
    fake: &FakeOpenAi,
) -> (Vec<String>, Vec<serde_json::Value>) {
    let (app, _data) = spawn_brain_with(fake, |s| s.brain.device_tool_timeout_secs = 1).await;
    let mut dev = app.connect().await;
    let mut calls = Vec::new();
    let mut sentences = Vec::new();
    let mut asked = false;
    loop {
        // Once discovery has gone quiet, the user speaks.
        let event = if asked {
            dev.rx.next_within(Duration::from_secs(20)).await.unwrap()
        } else {
            match tokio::time::timeout(Duration::from_millis(400), dev.rx.next_event()).await {
                Ok(e) => e.unwrap(),
                Err(_) => {
                    asked = true;
                    dev.tx.listen(firmware_protocol::ListenState::Detect, None, Some("do it")).await.unwrap();
                    continue;
                }
            }
        };
        match event {
            Event::Json(ServerMessage::Mcp { payload }) => {
                assert!(payload["id"].is_i64(), "firmware drops MCP requests whose id is not an integer");
                let result = match payload["method"].as_str().unwrap() {
                    "initialize" => {
                        serde_json::json!({"protocolVersion": "2024-11-05", "capabilities": {"tools": {}}})
                    }
                    "tools/list" => tools(&payload["params"]),
                    "tools/call" => {
                        calls.push(payload["params"].clone());
                        match &answer {
                            Some(a) => a.clone(),
                            None => continue,
                        }
                    }
                    m => panic!("unexpected {m}"),
                };
                reply_mcp(&mut dev, &payload["id"], result).await;
            }
            Event::Json(ServerMessage::Tts { state: TtsState::SentenceStart, text }) => {
                sentences.push(text.unwrap())
            }
            Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. }) => break,
            Event::Closed(c) => panic!("closed {c:?}"),
            _ => {}
        }
    }
    drop(dev);
    (sentences, calls)
}

fn tool(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "description": "a tool", "inputSchema": {"type": "object", "properties": {}}})
}

fn tool_message(fake: &FakeOpenAi, round: usize) -> String {
    let chat = &fake.requests_to("/chat/completions")[round];
    let messages = chat.json_field("messages").as_array().unwrap().clone();
    messages.iter().find(|m| m["role"] == "tool").expect("a tool result").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_answers_a_tool_call_times_out_and_the_model_answers() {
    let fake = FakeOpenAi::start().await;
    fake.push_chat(ChatScript::tool_calls(&[("call_1", "self_light_on", &["{}"])]));
    fake.push_chat(ChatScript::reply(&["The light did not respond."]));
    let (sentences, calls) =
        device_tool_turn(|_| serde_json::json!({"tools": [tool("self.light.on")]}), None, &fake).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(sentences, vec!["The light did not respond."]);
    assert!(tool_message(&fake, 1).contains("did not answer"), "{}", tool_message(&fake, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_does_not_exist_is_reported_to_the_model() {
    let fake = FakeOpenAi::start().await;
    fake.push_chat(ChatScript::tool_calls(&[("call_1", "self_teleport", &["{\"to\":\"mars\"}"])]));
    fake.push_chat(ChatScript::reply(&["I cannot do that."]));
    let answer = serde_json::json!({"content": [{"type": "text", "text": "true"}], "isError": false});
    let (sentences, calls) =
        device_tool_turn(|_| serde_json::json!({"tools": [tool("self.light.on")]}), Some(answer), &fake)
            .await;
    assert!(calls.is_empty(), "nothing unknown reaches the device");
    assert_eq!(sentences, vec!["I cannot do that."]);
    assert!(tool_message(&fake, 1).contains("no tool named self_teleport"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_device_tools_are_cut_to_a_bounded_list() {
    let fake = FakeOpenAi::start().await;
    fake.push_chat(ChatScript::reply(&["Done."]));
    // Pages of 40 (firmware fills ~8 KB pages) that never end: a cursor to a further page.
    let pages = std::sync::atomic::AtomicUsize::new(0);
    let (sentences, _) = device_tool_turn(
        |params| {
            let page: usize =
                params["cursor"].as_str().map_or(0, |c| c.trim_start_matches("page-").parse().unwrap());
            pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tools: Vec<_> = (0..40).map(|i| tool(&format!("self.tool_{page}_{i}"))).collect();
            serde_json::json!({"tools": tools, "nextCursor": format!("page-{}", page + 1)})
        },
        None,
        &fake,
    )
    .await;
    assert!(pages.load(std::sync::atomic::Ordering::Relaxed) <= 16, "the listing is not followed for ever");
    assert_eq!(sentences, vec!["Done."]);
    let offered = fake.requests_to("/chat/completions")[0].json_field("tools").as_array().unwrap().len();
    assert_eq!(
        offered,
        xiaozhi_gateway::session::MAX_DEVICE_TOOLS + 2,
        "device tools capped, server tools kept"
    );
}

/// When every recognizer fails, the device hears the apology and the model is not asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recognizer_failing_gets_the_apology() {
    let fake = FakeOpenAi::start().await;
    fake.set_transcription(AsrScript::Status(500, "asr broken".into()));
    let dead = dead_url();
    let (app, _data) =
        spawn_brain_with(&fake, |s| s.brain.asr_url = Some(format!("{dead},{}", fake.base_url()))).await;
    let mut dev: DeviceClient = app.connect().await;
    speak(&mut dev).await;
    let reply = collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await;
    assert!(reply.sentences()[0].starts_with("Sorry"));
    assert_eq!(fake.requests_to("/audio/transcriptions").len(), 2, "the second provider also had its retry");
    assert!(fake.requests_to("/chat/completions").is_empty());
}
