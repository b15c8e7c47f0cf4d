//! The OpenAI-compatible providers (ASR, LLM, TTS) against the in-process fake API.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use xiaozhi_gateway::audio::opus::UplinkDecoder;
use xiaozhi_gateway::conversation::Speech;
use xiaozhi_gateway::pipeline::providers::{
    Asr, ChatMessage, Llm, LlmEvent, LlmStream, ProviderConfig, ProviderError, ToolCall, ToolSpec, Tts,
    TtsFormat,
};

use crate::fake_openai::{AsrScript, ChatScript, FakeOpenAi, SpeechScript, SseStep, StreamEnd, sine};

const KEY: &str = "sk-test-key";

async fn fake() -> FakeOpenAi {
    xiaozhi_gateway::install_crypto_provider();
    FakeOpenAi::start().await
}

fn config(fake: &FakeOpenAi, model: &str, timeout: Duration) -> ProviderConfig {
    ProviderConfig::new(fake.base_url(), model).with_api_key(KEY).with_timeout(timeout)
}

/// Collects a stream to its end: the events, then the error that ended it (if any).
async fn drain(mut stream: LlmStream) -> (Vec<LlmEvent>, Option<ProviderError>) {
    let mut events = Vec::new();
    while let Some(item) =
        tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("stream hung")
    {
        match item {
            Ok(ev) => events.push(ev),
            Err(e) => {
                // The stream ends after its error.
                assert!(stream.next().await.is_none(), "items after an error");
                return (events, Some(e));
            }
        }
    }
    (events, None)
}

fn tokens(events: &[LlmEvent]) -> String {
    events.iter().filter_map(|e| if let LlmEvent::Token(t) = e { Some(t.as_str()) } else { None }).collect()
}

/// Decodes every packet at 16 kHz; returns the samples.
fn decode(speech: &Speech) -> Vec<i16> {
    let mut dec = UplinkDecoder::new().unwrap();
    let mut pcm = Vec::new();
    for p in &speech.packets {
        pcm.extend_from_slice(dec.decode(p).expect("packet decodes"));
    }
    pcm
}

fn rms(pcm: &[i16]) -> f64 {
    (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
}

/// Asserts `speech` plays for `ms` (±60 ms, one frame) and, decoded, holds a tone or silence.
fn assert_speech(speech: &Speech, ms: u64, tone: bool) {
    let pcm = decode(speech);
    let played_ms = pcm.len() as u64 * 1000 / 16_000;
    assert!(played_ms.abs_diff(ms) <= 60, "played {played_ms} ms, expected {ms} ms");
    assert_eq!(speech.packets.len() as u64 * 60, played_ms, "60 ms packets");
    let level = rms(&pcm);
    if tone {
        assert!(level > 2000.0, "tone too quiet: rms {level}");
    } else {
        assert!(level < 200.0, "silence too loud: rms {level}");
    }
}

fn is_malformed(r: &Result<impl std::fmt::Debug, ProviderError>) -> bool {
    matches!(r, Err(ProviderError::Malformed(_)))
}

// ---- ASR ----

#[tokio::test]
async fn asr_posts_a_16k_wav_form_and_returns_the_text() {
    let fake = fake().await;
    fake.push_transcription(AsrScript::text(" 今天天气怎么样？ "));
    let asr = Asr::new(config(&fake, "whisper-test", Duration::from_secs(5))).unwrap();
    let pcm = sine(16_000, 300.0, 1000);
    assert_eq!(asr.transcribe(&pcm).await.unwrap(), "今天天气怎么样？");

    let req = fake.last_request("/audio/transcriptions").unwrap();
    assert_eq!(req.path, "/v1/audio/transcriptions");
    assert_eq!(req.method, "POST");
    assert_eq!(req.bearer(), Some(KEY));
    assert!(req.header("content-type").unwrap().starts_with("multipart/form-data; boundary="));
    let mut names = req.field_names();
    names.sort_unstable();
    assert_eq!(names, ["file", "model", "response_format"]);
    assert_eq!(req.field("model").unwrap().text(), "whisper-test");
    assert_eq!(req.field("response_format").unwrap().text(), "json");
    let file = req.field("file").unwrap();
    assert_eq!(file.filename.as_deref(), Some("audio.wav"));
    assert_eq!(file.content_type.as_deref(), Some("audio/wav"));
    let mut wav = hound::WavReader::new(std::io::Cursor::new(file.data.to_vec())).expect("a WAV file");
    let spec = wav.spec();
    assert_eq!((spec.sample_rate, spec.channels, spec.bits_per_sample), (16_000, 1, 16));
    assert_eq!(spec.sample_format, hound::SampleFormat::Int);
    let samples: Vec<i16> = wav.samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(samples, pcm);

    // The language hint is an extra field; no key, no Authorization header.
    let asr = Asr::new(ProviderConfig::new(fake.base_url(), "w")).unwrap().with_language("zh");
    asr.transcribe(&pcm[..1600]).await.unwrap();
    let req = fake.last_request("/audio/transcriptions").unwrap();
    assert_eq!(req.field("language").unwrap().text(), "zh");
    assert_eq!(req.header("authorization"), None);
}

#[tokio::test]
async fn asr_failures_are_classified() {
    let fake = fake().await;
    let asr = Asr::new(config(&fake, "w", Duration::from_millis(400))).unwrap();
    let pcm = sine(16_000, 300.0, 200);

    fake.push_transcription(AsrScript::Status(401, r#"{"error":{"message":"bad key"}}"#.into()));
    let err = asr.transcribe(&pcm).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Status { status: 401, body } if body.contains("bad key")),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    fake.push_transcription(AsrScript::Status(503, "overloaded".into()));
    let err = asr.transcribe(&pcm).await.unwrap_err();
    assert!(matches!(err, ProviderError::Status { status: 503, .. }) && err.is_retryable(), "{err:?}");

    fake.push_transcription(AsrScript::Raw("<html>oops</html>".into()));
    assert!(is_malformed(&asr.transcribe(&pcm).await));

    fake.push_transcription(AsrScript::Hang);
    let started = Instant::now();
    assert_eq!(asr.transcribe(&pcm).await, Err(ProviderError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // A slow answer within the timeout is fine.
    fake.push_transcription(AsrScript::text("late").after(Duration::from_millis(100)));
    assert_eq!(asr.transcribe(&pcm).await.unwrap(), "late");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_retryable_connect_error() {
    xiaozhi_gateway::install_crypto_provider();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg =
        ProviderConfig::new(format!("http://127.0.0.1:{port}/v1"), "m").with_timeout(Duration::from_secs(2));
    let err = Asr::new(cfg.clone()).unwrap().transcribe(&[0; 160]).await.unwrap_err();
    assert!(matches!(err, ProviderError::Connect(_)) && err.is_retryable(), "{err:?}");
    let err =
        Llm::new(cfg.clone()).unwrap().stream(vec![ChatMessage::user("hi")], vec![]).await.err().unwrap();
    assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
    let err = Tts::new(cfg).unwrap().synthesize("hi", "alloy", 24_000).await.unwrap_err();
    assert!(matches!(err, ProviderError::Connect(_)), "{err:?}");
}

// ---- LLM ----

#[tokio::test]
async fn llm_streams_tokens_in_order() {
    let fake = fake().await;
    fake.push_chat(ChatScript::reply_paced(
        &["你好", "！", "Nice to", " meet you."],
        Duration::from_millis(20),
    ));
    let llm = Llm::new(config(&fake, "gpt-test", Duration::from_secs(5)))
        .unwrap()
        .with_param("temperature", json!(0.3))
        .with_param("stream", json!(false));
    let messages = vec![ChatMessage::system("Be brief."), ChatMessage::user("Hi")];
    let (events, err) = drain(llm.stream(messages, vec![]).await.unwrap()).await;
    assert_eq!(err, None);
    assert_eq!(
        events,
        vec![
            LlmEvent::Token("你好".into()),
            LlmEvent::Token("！".into()),
            LlmEvent::Token("Nice to".into()),
            LlmEvent::Token(" meet you.".into()),
            LlmEvent::Done { finish_reason: Some("stop".into()) },
        ]
    );

    let req = fake.last_request("/chat/completions").unwrap();
    assert_eq!(req.path, "/v1/chat/completions");
    assert_eq!(req.bearer(), Some(KEY));
    assert_eq!(req.header("accept"), Some("text/event-stream"));
    assert_eq!(req.json_field("model"), "gpt-test");
    assert_eq!(req.json_field("stream"), true, "stream cannot be overridden");
    assert_eq!(req.json_field("temperature"), 0.3);
    assert_eq!(
        req.json_field("messages"),
        &json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    );
    assert_eq!(req.json_field("tools"), &Value::Null, "no tools, no tools field");
    assert_eq!(fake.stream_end(0, Duration::from_secs(2)).await, Some(StreamEnd::Completed));
}

#[tokio::test]
async fn llm_assembles_tool_calls_from_fragments() {
    let fake = fake().await;
    fake.push_chat(ChatScript::tool_calls(&[
        ("call_weather", "get_weather", &["{\"ci", "ty\": \"Bei", "jing\", \"unit\"", ": \"c\"}"]),
        ("call_time", "get_time", &[]),
    ]));
    let llm = Llm::new(config(&fake, "m", Duration::from_secs(5))).unwrap();
    let tools = vec![ToolSpec {
        name: "get_weather".into(),
        description: "Weather in a city".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    }];
    let earlier_call = ToolCall {
        id: "call_0".into(),
        name: "get_weather".into(),
        arguments_json: r#"{"city":"Paris"}"#.into(),
    };
    let messages = vec![
        ChatMessage::user("Weather in Paris?"),
        ChatMessage::assistant_tool_calls(None, vec![earlier_call]),
        ChatMessage::tool("call_0", "sunny, 21 °C"),
        ChatMessage::assistant("Sunny, 21 degrees."),
        ChatMessage::user("And Beijing, and the time?"),
    ];
    let (events, err) = drain(llm.stream(messages, tools).await.unwrap()).await;
    assert_eq!(err, None);
    assert_eq!(events.len(), 3, "{events:?}");
    let LlmEvent::ToolCall { id, name, arguments_json } = &events[0] else { panic!("{events:?}") };
    assert_eq!((id.as_str(), name.as_str()), ("call_weather", "get_weather"));
    let args: Value = serde_json::from_str(arguments_json).expect("complete JSON arguments");
    assert_eq!(args, json!({"city": "Beijing", "unit": "c"}));
    assert_eq!(
        events[1],
        LlmEvent::ToolCall { id: "call_time".into(), name: "get_time".into(), arguments_json: "{}".into() }
    );
    assert_eq!(events[2], LlmEvent::Done { finish_reason: Some("tool_calls".into()) });

    let req = fake.last_request("/chat/completions").unwrap();
    assert_eq!(
        req.json_field("tools"),
        &json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    );
    let sent = &req.json_field("messages");
    assert_eq!(sent[1]["role"], "assistant");
    assert_eq!(sent[1]["content"], Value::Null);
    assert_eq!(sent[1]["tool_calls"][0]["type"], "function");
    assert_eq!(sent[1]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(sent[1]["tool_calls"][0]["function"]["arguments"], r#"{"city":"Paris"}"#);
    assert_eq!(sent[2], json!({"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21 °C"}));
}

#[tokio::test]
async fn llm_error_statuses() {
    let fake = fake().await;
    let llm = Llm::new(config(&fake, "m", Duration::from_secs(5))).unwrap();
    let ask = || llm.stream(vec![ChatMessage::user("hi")], vec![]);

    fake.push_chat(ChatScript::Status(400, r#"{"error":{"message":"bad request"}}"#.into()));
    let err = ask().await.err().unwrap();
    assert!(matches!(&err, ProviderError::Status { status: 400, body } if body.contains("bad request")));
    assert!(!err.is_retryable());

    fake.push_chat(ChatScript::Status(429, "slow down".into()));
    let err = ask().await.err().unwrap();
    assert!(matches!(err, ProviderError::Status { status: 429, .. }) && err.is_retryable(), "{err:?}");

    fake.push_chat(ChatScript::Status(502, "x".repeat(5000)));
    let err = ask().await.err().unwrap();
    let ProviderError::Status { status: 502, body } = &err else { panic!("{err:?}") };
    assert_eq!(body.len(), 500, "the first 500 bytes of the body");
    assert!(err.is_retryable());

    // A non-streaming JSON answer is not an event stream.
    fake.push_chat(ChatScript::Json(json!({"choices": [{"message": {"content": "hi"}}]})));
    assert!(matches!(ask().await.err().unwrap(), ProviderError::Malformed(_)));
}

#[tokio::test]
async fn llm_malformed_and_cut_streams_fail_cleanly() {
    let fake = fake().await;
    let llm = Llm::new(config(&fake, "m", Duration::from_secs(5))).unwrap();
    let ask = || async { drain(llm.stream(vec![ChatMessage::user("hi")], vec![]).await.unwrap()).await };

    // A data line that is not JSON, after a good token.
    fake.push_chat(ChatScript::Stream(vec![
        SseStep::role(),
        SseStep::content("Hello"),
        SseStep::Data("this is not json".into()),
        SseStep::content(" never seen"),
        SseStep::finish("stop"),
        SseStep::Done,
    ]));
    let (events, err) = ask().await;
    assert_eq!(events, vec![LlmEvent::Token("Hello".into())]);
    assert!(matches!(err, Some(ProviderError::Malformed(_))), "{err:?}");

    // The body ends cleanly, but without [DONE] or a finish reason.
    fake.push_chat(ChatScript::Stream(vec![
        SseStep::role(),
        SseStep::content("Hel"),
        SseStep::content("lo"),
    ]));
    let (events, err) = ask().await;
    assert_eq!(tokens(&events), "Hello");
    assert!(matches!(err, Some(ProviderError::Malformed(_))), "{err:?}");

    // The connection breaks mid-stream.
    fake.push_chat(ChatScript::Stream(vec![SseStep::role(), SseStep::content("Hel"), SseStep::Abort]));
    let (events, err) = ask().await;
    assert_eq!(tokens(&events), "Hel");
    assert!(matches!(err, Some(ProviderError::Malformed(_))), "{err:?}");

    // An error object in the stream.
    fake.push_chat(ChatScript::Stream(vec![SseStep::Json(
        json!({"error": {"message": "model overloaded"}}),
    )]));
    let (_, err) = ask().await;
    assert!(matches!(&err, Some(ProviderError::Malformed(m)) if m.contains("model overloaded")), "{err:?}");

    // Not malformed: comments and a finish reason without [DONE]; [DONE] without a finish reason.
    fake.push_chat(ChatScript::Stream(vec![
        SseStep::Bytes(": keep-alive\n\n".into()),
        SseStep::content("a"),
        SseStep::finish("length"),
    ]));
    let (events, err) = ask().await;
    assert_eq!(err, None);
    assert_eq!(
        events,
        vec![LlmEvent::Token("a".into()), LlmEvent::Done { finish_reason: Some("length".into()) }]
    );
    fake.push_chat(ChatScript::Stream(vec![SseStep::content("b"), SseStep::Done]));
    let (events, err) = ask().await;
    assert_eq!(err, None);
    assert_eq!(events, vec![LlmEvent::Token("b".into()), LlmEvent::Done { finish_reason: None }]);
}

#[tokio::test]
async fn llm_timeouts_bound_the_first_byte_and_the_gaps() {
    let fake = fake().await;
    let llm = Llm::new(config(&fake, "m", Duration::from_millis(400))).unwrap();
    let ask = || llm.stream(vec![ChatMessage::user("hi")], vec![]);

    // No response head at all.
    fake.push_chat(ChatScript::Hang);
    let started = Instant::now();
    assert_eq!(ask().await.err(), Some(ProviderError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(3));

    // A head, a token, then silence.
    fake.push_chat(ChatScript::Stream(vec![
        SseStep::role(),
        SseStep::content("Hi"),
        SseStep::Delay(Duration::from_secs(60)),
        SseStep::Done,
    ]));
    let started = Instant::now();
    let (events, err) = drain(ask().await.unwrap()).await;
    assert_eq!(events, vec![LlmEvent::Token("Hi".into())]);
    assert_eq!(err, Some(ProviderError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(3));

    // A stream slower overall than the timeout, but with short gaps, completes.
    fake.push_chat(ChatScript::reply_paced(
        &["a", "b", "c", "d", "e", "f", "g", "h"],
        Duration::from_millis(100),
    ));
    let (events, err) = drain(ask().await.unwrap()).await;
    assert_eq!(err, None);
    assert_eq!(tokens(&events), "abcdefgh");
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let fake = fake().await;
    let words: Vec<String> = (0..100).map(|i| format!("w{i} ")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    fake.push_chat(ChatScript::reply_paced(&words, Duration::from_millis(30)));
    let llm = Llm::new(config(&fake, "m", Duration::from_secs(5))).unwrap();
    let mut stream = llm.stream(vec![ChatMessage::user("talk")], vec![]).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(Ok(LlmEvent::Token(_)))));
    }
    drop(stream);
    assert_eq!(fake.stream_end(0, Duration::from_secs(5)).await, Some(StreamEnd::Cancelled));
    let sent = fake.streams()[0].chunks_sent;
    assert!(sent < 50, "the server kept writing after the drop: {sent} chunks");

    // The same provider goes on working on a new connection.
    fake.push_chat(ChatScript::reply(&["ok"]));
    let (events, err) = drain(llm.stream(vec![ChatMessage::user("again")], vec![]).await.unwrap()).await;
    assert_eq!((tokens(&events), err), ("ok".to_owned(), None));
    assert_eq!(fake.stream_end(1, Duration::from_secs(2)).await, Some(StreamEnd::Completed));

    // Also while the server is not writing (the model "thinking").
    fake.push_chat(ChatScript::Stream(vec![
        SseStep::role(),
        SseStep::content("Let me think"),
        SseStep::Delay(Duration::from_secs(30)),
        SseStep::content(" ..."),
    ]));
    let mut stream = llm.stream(vec![ChatMessage::user("hard question")], vec![]).await.unwrap();
    assert_eq!(stream.next().await, Some(Ok(LlmEvent::Token("Let me think".into()))));
    drop(stream);
    assert_eq!(fake.stream_end(2, Duration::from_secs(5)).await, Some(StreamEnd::Cancelled));
}

// ---- TTS ----

#[tokio::test]
async fn tts_pcm_becomes_60ms_opus_at_the_downlink_rate() {
    let fake = fake().await;
    let tts = Tts::new(config(&fake, "tts-test", Duration::from_secs(5))).unwrap();

    fake.push_speech(SpeechScript::sine_pcm(440.0, 1000));
    let speech = tts.synthesize("Hello there.", "alloy", 24_000).await.unwrap();
    assert_eq!(speech.format.input_rate, 24_000);
    assert!(speech.format.pre_skip > 0);
    assert_speech(&speech, 1000, true);

    let req = fake.last_request("/audio/speech").unwrap();
    assert_eq!(req.path, "/v1/audio/speech");
    assert_eq!(req.bearer(), Some(KEY));
    assert_eq!(
        req.json,
        Some(
            json!({"model": "tts-test", "input": "Hello there.", "voice": "alloy", "response_format": "pcm"})
        )
    );

    // Resampled for a 16 kHz downlink.
    fake.push_speech(SpeechScript::sine_pcm(440.0, 700));
    let speech = tts.synthesize("你好", "nova", 16_000).await.unwrap();
    assert_eq!(speech.format.input_rate, 16_000);
    assert_speech(&speech, 700, true);

    fake.push_speech(SpeechScript::silence_pcm(480));
    let speech = tts.synthesize("...", "nova", 24_000).await.unwrap();
    assert_speech(&speech, 480, false);

    // Blank text needs no request.
    let before = fake.requests().len();
    assert!(tts.synthesize("  ", "nova", 24_000).await.unwrap().packets.is_empty());
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn tts_reads_wav_at_any_rate() {
    let fake = fake().await;
    let tts = Tts::new(config(&fake, "tts", Duration::from_secs(5))).unwrap().with_format(TtsFormat::Wav);
    fake.push_speech(SpeechScript::sine_wav(22_050, 330.0, 800));
    let speech = tts.synthesize("Hello", "alloy", 24_000).await.unwrap();
    assert_speech(&speech, 800, true);
    assert_eq!(fake.last_request("/audio/speech").unwrap().json_field("response_format"), "wav");

    // A WAV body is recognised even when PCM was asked for.
    let tts = Tts::new(config(&fake, "tts", Duration::from_secs(5))).unwrap();
    fake.push_speech(SpeechScript::sine_wav(16_000, 330.0, 600));
    assert_speech(&tts.synthesize("Hello", "alloy", 16_000).await.unwrap(), 600, true);
}

#[tokio::test]
async fn tts_refuses_what_is_not_audio() {
    let fake = fake().await;
    let tts = Tts::new(config(&fake, "tts", Duration::from_millis(500))).unwrap();
    let say = || tts.synthesize("Hello", "alloy", 24_000);

    fake.push_speech(SpeechScript::garbage("text/html", "<html><body>502 Bad Gateway</body></html>"));
    assert!(is_malformed(&say().await));
    fake.push_speech(SpeechScript::garbage("audio/mpeg", vec![0xff, 0xfb, 0x90, 0x64, 0, 0, 0, 0]));
    assert!(is_malformed(&say().await));
    fake.push_speech(SpeechScript::garbage(
        "application/octet-stream",
        b"ID3\x04\x00\x00\x00\x00\x00\x21".to_vec(),
    ));
    assert!(is_malformed(&say().await));
    fake.push_speech(SpeechScript::garbage("audio/pcm", vec![1u8, 2, 3, 4, 5]));
    assert!(is_malformed(&say().await), "odd byte count");
    fake.push_speech(SpeechScript::garbage("audio/pcm", Vec::new()));
    assert!(is_malformed(&say().await), "empty body");
    fake.push_speech(SpeechScript::garbage("audio/wav", b"RIFF\x10\x00\x00\x00WAVEjunkjunk".to_vec()));
    assert!(is_malformed(&say().await), "broken WAV");

    fake.push_speech(SpeechScript::Status(500, "boom".into()));
    let err = say().await.unwrap_err();
    assert!(matches!(err, ProviderError::Status { status: 500, .. }) && err.is_retryable(), "{err:?}");

    fake.push_speech(SpeechScript::sine_pcm(440.0, 100).after(Duration::from_secs(30)));
    assert_eq!(say().await.unwrap_err(), ProviderError::Timeout);

    // A body trickling in slower overall than the timeout but without long gaps is fine.
    fake.push_speech(SpeechScript::sine_pcm(440.0, 1200).chunked(9_600, Duration::from_millis(150)));
    let started = Instant::now();
    assert_speech(&say().await.unwrap(), 1200, true);
    assert!(started.elapsed() > Duration::from_millis(500));

    // A body that stalls fails.
    fake.push_speech(SpeechScript::sine_pcm(440.0, 1200).chunked(9_600, Duration::from_secs(30)));
    assert_eq!(say().await.unwrap_err(), ProviderError::Timeout);

    assert!(matches!(tts.synthesize("x", "alloy", 22_050).await, Err(ProviderError::Invalid(_))));
}
