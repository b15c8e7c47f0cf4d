//! The gateway's own added latency with the brain on and zero-latency fake providers: from the
//! end of the user's speech (`listen stop` in push-to-talk, so no VAD window is involved) to
//! the first reply frame at the device, over many turns; prints p50/p99.
//!
//! Run: `cargo bench --bench brain_latency` (figures in BENCHMARKS.md).

use std::time::{Duration, Instant};

use firmware_protocol::{ListenMode, ListenState};
use testkit::fake_openai::{AsrScript, ChatScript, FakeOpenAi, SpeechScript};
use xiaozhi_gateway::audio::opus::FrameEncoder;
use xiaozhi_gateway::client::{DeviceClient, DeviceConfig, Event};
use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::startup::Application;

const TURNS: usize = 300;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let fake = FakeOpenAi::start().await;
        fake.set_transcription(AsrScript::text("what is the weather like"));
        fake.set_chat(ChatScript::reply(&["It is sunny.", " Enjoy your day."]));
        fake.set_speech(SpeechScript::sine_pcm(440.0, 240));
        let data = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_owned(),
            ..Settings::default()
        };
        settings.brain.asr_url = Some(fake.base_url());
        settings.brain.llm_url = Some(fake.base_url());
        settings.brain.tts_url = Some(fake.base_url());
        let server = Application::build(settings).await.unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.run_until_stopped());

        let pcm: Vec<i16> = (0..16_000).map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16).collect();
        let packets = FrameEncoder::new(16_000, 60).unwrap().encode_all(&pcm).unwrap();
        let mut cfg = DeviceConfig::new(format!("ws://{addr}/xiaozhi/v1/"), "aa:bb:cc:dd:ee:01");
        cfg.hello = Some(firmware_protocol::ClientHello { features: None, ..firmware_protocol::ClientHello::firmware(1) });
        let mut dev = DeviceClient::connect(&cfg).await.unwrap();
        let mut samples = Vec::with_capacity(TURNS);
        for _ in 0..TURNS {
            dev.tx.listen_start(ListenMode::Manual).await.unwrap();
            dev.tx.stream_audio(&packets, Duration::ZERO).await.unwrap();
            let t0 = Instant::now();
            dev.tx.listen(ListenState::Stop, None, None).await.unwrap();
            let mut first = None;
            loop {
                match dev.rx.next_within(Duration::from_secs(10)).await.unwrap() {
                    Event::Audio { .. } if first.is_none() => first = Some(t0.elapsed()),
                    Event::Json(firmware_protocol::ServerMessage::Tts { state: firmware_protocol::TtsState::Stop, .. }) => break,
                    Event::Closed(c) => panic!("closed: {c:?}"),
                    _ => {}
                }
            }
            samples.push(first.expect("reply audio").as_secs_f64() * 1000.0);
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "brain added latency, end of speech -> first reply frame ({} turns, zero-latency fake providers): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            samples.len(),
            percentile(&samples, 0.5),
            percentile(&samples, 0.9),
            percentile(&samples, 0.99),
            samples[samples.len() - 1]
        );
    });
}
