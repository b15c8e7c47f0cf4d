//! Starting a gateway for a test and the audio and observation helpers tests share.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use firmware_protocol::{ServerMessage, TtsState};
use tokio::time::Instant;
use xiaozhi_gateway::audio::opus::FrameEncoder;
use xiaozhi_gateway::client::{DeviceClient, DeviceConfig, DeviceReceiver, Event};
use xiaozhi_gateway::config::Settings;
use xiaozhi_gateway::pipeline::echo::EchoPipeline;
use xiaozhi_gateway::startup::{AppState, Application};

/// A gateway running in the test's runtime.
pub struct TestApp {
    pub addr: SocketAddr,
    pub app: Arc<AppState>,
    /// Keeps the data directory alive for the test's duration.
    _data: tempfile::TempDir,
}

impl TestApp {
    /// Wraps a gateway the test started itself.
    pub fn from_parts(addr: SocketAddr, app: Arc<AppState>) -> TestApp {
        TestApp { addr, app, _data: tempfile::tempdir().expect("temp dir") }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/xiaozhi/v1/", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A firmware-like device config with a fresh MAC-style id.
    pub fn device(&self) -> DeviceConfig {
        DeviceConfig::new(self.ws_url(), fresh_device_id())
    }

    pub async fn connect(&self) -> DeviceClient {
        DeviceClient::connect(&self.device()).await.expect("device connects")
    }
}

/// A gateway with test-friendly defaults (short VAD window).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A gateway whose settings the test adjusts first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let data = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        ..Settings::default()
    };
    settings.session.vad_silence_ms = 400;
    // Every test device connects from 127.0.0.1: per-address limits are for the tests of limits.
    settings.limits.upgrades_per_sec = 0;
    settings.limits.ota_per_sec = 0;
    adjust(&mut settings);
    settings.validate().expect("test settings are valid");
    let server = Application::build_with(settings.clone(), Arc::new(EchoPipeline::new()))
        .await
        .expect("gateway starts");
    let (addr, app) = (server.local_addr(), server.state());
    tokio::spawn(server.run_until_stopped());
    TestApp { addr, app, _data: data }
}

pub fn fresh_device_id() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
}

/// 16 kHz mono PCM of the shipped speech sample.
pub fn speech_pcm() -> &'static [i16] {
    static PCM: OnceLock<Vec<i16>> = OnceLock::new();
    PCM.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-16k.wav");
        let mut reader = hound::WavReader::open(path).expect("speech sample");
        assert_eq!(reader.spec().sample_rate, 16_000);
        reader.samples::<i16>().map(|s| s.expect("sample")).collect()
    })
}

/// The speech sample as Opus packets of `frame_ms`.
pub fn speech_packets_ms(frame_ms: u32) -> Vec<Vec<u8>> {
    FrameEncoder::new(16_000, frame_ms).unwrap().encode_all(speech_pcm()).unwrap()
}

/// The speech sample as 60 ms Opus packets (what firmware sends).
pub fn speech_packets() -> Vec<Vec<u8>> {
    static P: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    P.get_or_init(|| speech_packets_ms(60)).clone()
}

/// `n` packets of 60 ms digital silence.
pub fn silence_packets(n: usize) -> Vec<Vec<u8>> {
    let mut enc = FrameEncoder::new(16_000, 60).unwrap();
    (0..n).map(|_| enc.encode(&[0; 960]).unwrap()).collect()
}

/// The speech sample followed by enough silence for the VAD to end the turn.
pub fn spoken_turn() -> Vec<Vec<u8>> {
    let mut uplink = speech_packets();
    uplink.extend(silence_packets(12));
    uplink
}

/// One voice turn in auto mode (VAD ends it), uplink at 10 ms per packet; returns the reply.
pub async fn auto_turn(dev: &mut xiaozhi_gateway::client::DeviceClient) -> ObservedReply {
    dev.tx.listen_start(firmware_protocol::ListenMode::Auto).await.unwrap();
    dev.tx.stream_audio(&spoken_turn(), Duration::from_millis(10)).await.unwrap();
    collect_reply(&mut dev.rx, Duration::from_secs(20), Duration::ZERO).await
}

/// Everything a device received for one reply.
#[derive(Debug, Default)]
pub struct ObservedReply {
    /// JSON messages in arrival order.
    pub messages: Vec<ServerMessage>,
    /// Audio packets with arrival times.
    pub frames: Vec<(Instant, Bytes)>,
    /// When `tts stop` arrived (if it did).
    pub stop_at: Option<Instant>,
    /// Audio that arrived after `tts stop`.
    pub frames_after_stop: usize,
}

impl ObservedReply {
    pub fn stt(&self) -> Option<&str> {
        self.messages.iter().find_map(|m| match m {
            ServerMessage::Stt { text } => Some(text.as_str()),
            _ => None,
        })
    }

    pub fn sentences(&self) -> Vec<&str> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Tts { state: TtsState::SentenceStart, text } => text.as_deref(),
                _ => None,
            })
            .collect()
    }

    /// The `tts` states in order.
    pub fn tts_states(&self) -> Vec<TtsState> {
        self.messages
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Tts { state, .. } => Some(*state),
                _ => None,
            })
            .collect()
    }
}

/// Reads one reply: everything up to and including `tts stop`, then `linger` more to catch
/// stray audio. Panics on a close or when nothing completes within `limit`.
pub async fn collect_reply(rx: &mut DeviceReceiver, limit: Duration, linger: Duration) -> ObservedReply {
    let deadline = Instant::now() + limit;
    let mut out = ObservedReply::default();
    loop {
        let wait = match out.stop_at {
            Some(at) => (at + linger).saturating_duration_since(Instant::now()),
            None => deadline.saturating_duration_since(Instant::now()),
        };
        let event = match tokio::time::timeout(wait, rx.next_event()).await {
            Err(_) if out.stop_at.is_some() => return out,
            Err(_) => panic!(
                "no complete reply within {limit:?}; got {:?} and {} frames",
                out.messages,
                out.frames.len()
            ),
            Ok(e) => e.expect("receive"),
        };
        match event {
            Event::Json(m) => {
                if matches!(m, ServerMessage::Tts { state: TtsState::Stop, .. }) && out.stop_at.is_none() {
                    out.stop_at = Some(Instant::now());
                }
                out.messages.push(m);
            }
            Event::Audio { payload, at } => {
                if out.stop_at.is_some() {
                    out.frames_after_stop += 1;
                }
                out.frames.push((at, payload));
            }
            Event::Closed(c) => panic!("connection closed during reply: {c:?}"),
        }
    }
}

/// Expects no event at all for `quiet`.
pub async fn expect_quiet(rx: &mut DeviceReceiver, quiet: Duration) {
    if let Ok(e) = tokio::time::timeout(quiet, rx.next_event()).await {
        panic!("expected silence from the gateway, got {e:?}");
    }
}

/// Waits for the close frame (skipping anything else) and returns its code.
pub async fn expect_close(rx: &mut DeviceReceiver, limit: Duration) -> Option<u16> {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), rx.next_event()).await
        {
            Err(_) => panic!("connection not closed within {limit:?}"),
            Ok(Ok(Event::Closed(c))) => return c.map(|c| c.0),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("receive failed: {e}"),
        }
    }
}

/// Answers the gateway's MCP request `id` as device firmware does: a JSON-RPC result.
pub async fn reply_mcp(dev: &mut DeviceClient, id: &serde_json::Value, result: serde_json::Value) {
    let payload = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result});
    dev.tx.send(&firmware_protocol::ClientMessage::Mcp { session_id: None, payload }).await.unwrap();
}
