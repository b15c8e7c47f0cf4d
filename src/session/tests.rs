//! Turn-taking without a socket: a session driven over channels, with a scripted brain and a
//! recorder that keeps what the session hands the store. Time is paused (tokio's test clock),
//! so pacing and timeouts run instantly and deterministically.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use bytes::Bytes;
use firmware_protocol::{ServerMessage, TtsState};
use futures_util::{Sink, Stream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;

use super::registry::SessionRegistry;
use super::{Connection, Recorder, SessionContext, run_on};
use crate::auth::Authenticator;
use crate::config::{AuthSettings, LimitSettings, SessionSettings};
use crate::conversation::{BoxFuture, Pipeline, PipelineError, Reply, Turn, TurnInput};
use crate::devices::DeviceRegistry;
use crate::limits::TurnQuota;
use crate::store::model::{Role, StoreOp, TurnRecord};
use crate::telemetry::metrics::Metrics;

/// A 60 ms Opus packet (SILK narrowband, one frame): the writer paces it, nobody decodes it.
fn frame() -> Bytes {
    Bytes::from_static(&[0x18, 0xAA, 0xBB])
}

/// Answers every voice or text turn with a transcript, one sentence and `frames` packets;
/// speaks server-initiated text as it is.
struct Scripted {
    frames: usize,
}

impl Pipeline for Scripted {
    fn respond<'a>(&'a self, turn: Turn, reply: &'a mut Reply) -> BoxFuture<'a, Result<(), PipelineError>> {
        Box::pin(async move {
            let heard = match &turn.input {
                TurnInput::Voice(u) => format!("{} packets", u.packets.len()),
                TurnInput::Text(t) => t.clone(),
                // Server-initiated speech: say the text itself, as the real brains do.
                TurnInput::Say(t) => {
                    reply.sentence(t).await?;
                    return reply.audio_all(vec![frame(); self.frames]).await;
                }
            };
            reply.transcript(&heard).await?;
            reply.sentence("Yes.").await?;
            reply.audio_all(vec![frame(); self.frames]).await
        })
    }
}

/// Keeps what the session submits.
#[derive(Default)]
struct Kept(Mutex<Vec<StoreOp>>);

impl Recorder for Kept {
    fn submit(&self, op: StoreOp) {
        self.0.lock().unwrap().push(op);
    }
}

impl Kept {
    fn turns(&self) -> Vec<TurnRecord> {
        let ops = self.0.lock().unwrap();
        ops.iter()
            .filter_map(|op| match op {
                StoreOp::Turn(t) => Some((**t).clone()),
                _ => None,
            })
            .collect()
    }
}

type Inbound = Result<Message, axum::Error>;

/// A device on the other end of the channels.
struct Device {
    tx: mpsc::UnboundedSender<Inbound>,
    /// Sent to the session the instant a `tts stop` leaves it, before its writer can tell it
    /// that the reply played: a device that reacts at once.
    on_tts_stop: Arc<Mutex<Vec<Message>>>,
    rx: mpsc::UnboundedReceiver<Message>,
    kept: Arc<Kept>,
    task: tokio::task::JoinHandle<()>,
}

/// What the device received.
#[derive(Debug, PartialEq)]
enum Got {
    Json(ServerMessage),
    Audio,
    Closed(u16, String),
}

impl Device {
    /// Starts a session (with `adjust` applied to its settings) and says hello.
    async fn connect(frames: usize, adjust: impl FnOnce(&mut SessionSettings)) -> Device {
        Self::connect_limited(
            frames,
            adjust,
            LimitSettings { turns_per_minute: 0, turns_per_day: 0, ..Default::default() },
        )
        .await
    }

    async fn connect_limited(
        frames: usize,
        adjust: impl FnOnce(&mut SessionSettings),
        limits: LimitSettings,
    ) -> Device {
        let mut settings = SessionSettings { vad_silence_ms: 400, ..SessionSettings::default() };
        adjust(&mut settings);
        let kept = Arc::new(Kept::default());
        let metrics = Metrics::new();
        let ctx = Arc::new(SessionContext {
            settings,
            bucket: "test".into(),
            clip_format: crate::config::ClipFileFormat::Ogg,
            turns: Arc::new(TurnQuota::new(&limits, &metrics)),
            metrics,
            pipeline: Arc::new(Scripted { frames }),
            recorder: kept.clone(),
            sessions: Arc::new(SessionRegistry::default()),
            devices: Arc::new(DeviceRegistry::default()),
            auth: Arc::new(Authenticator::new(&AuthSettings::default())),
            draining: Default::default(),
            shutdown: Default::default(),
        });
        let conn = Connection {
            ctx,
            device_id: "aa:bb:cc:dd:ee:ff".into(),
            client_id: None,
            session_id: uuid::Uuid::new_v4().to_string(),
            header_version: None,
            permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            vision_url: None,
        };
        let (in_tx, in_rx) = mpsc::unbounded_channel::<Inbound>();
        let (out_tx, out_rx) = mpsc::unbounded_channel::<Message>();
        let stream: Pin<Box<dyn Stream<Item = Inbound> + Send>> =
            Box::pin(futures_util::stream::unfold(in_rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            }));
        let on_tts_stop = Arc::new(Mutex::new(Vec::new()));
        let react = (in_tx.clone(), on_tts_stop.clone());
        let sink: Pin<Box<dyn Sink<Message, Error = ()> + Send>> = Box::pin(futures_util::sink::unfold(
            (out_tx, react),
            |(tx, react), msg: Message| async move {
                let stop = matches!(&msg, Message::Text(t) if ServerMessage::parse(t).ok() == Some(ServerMessage::tts(TtsState::Stop)));
                tx.send(msg).map_err(|_| ())?;
                if stop {
                    for m in std::mem::take(&mut *react.1.lock().unwrap()) {
                        let _ = react.0.send(Ok(m));
                    }
                }
                Ok::<_, ()>((tx, react))
            },
        ));
        let task = tokio::spawn(run_on(stream, sink, conn));
        let mut dev = Device { tx: in_tx, on_tts_stop, rx: out_rx, kept, task };
        dev.text(r#"{"type":"hello","version":1,"transport":"websocket","audio_params":{"format":"opus","sample_rate":16000,"channels":1,"frame_duration":60}}"#);
        match dev.next().await {
            Some(Got::Json(ServerMessage::Hello(_))) => {}
            other => panic!("expected the server hello, got {other:?}"),
        }
        dev
    }

    fn text(&self, json: &str) {
        self.tx.send(Ok(Message::Text(json.into()))).unwrap();
    }

    fn listen(&self, state: &str, mode: &str) {
        self.text(&format!(r#"{{"type":"listen","state":"{state}","mode":"{mode}"}}"#));
    }

    fn audio(&self, packets: impl IntoIterator<Item = Bytes>) {
        for p in packets {
            self.tx.send(Ok(Message::Binary(p))).unwrap();
        }
    }

    /// A push-to-talk turn of `n` packets.
    fn push_to_talk(&self, n: usize) {
        for m in push_to_talk_messages(n) {
            self.tx.send(Ok(m)).unwrap();
        }
    }

    /// Sends `messages` the instant the next `tts stop` leaves the session.
    fn at_next_tts_stop(&self, messages: Vec<Message>) {
        *self.on_tts_stop.lock().unwrap() = messages;
    }

    /// The next thing the device receives (`None` when the session dropped the connection).
    async fn next(&mut self) -> Option<Got> {
        let msg = timeout(Duration::from_secs(300), self.rx.recv()).await.expect("the session answers")?;
        Some(match msg {
            Message::Text(t) => Got::Json(ServerMessage::parse(&t).expect("valid server JSON")),
            Message::Binary(_) => Got::Audio,
            Message::Close(Some(CloseFrame { code, reason })) => Got::Closed(code, reason.to_string()),
            other => panic!("unexpected {other:?}"),
        })
    }

    /// What arrives within `wait` (of the paused clock).
    async fn within(&mut self, wait: Duration) -> Vec<Got> {
        let mut got = Vec::new();
        while let Ok(Some(m)) = timeout(wait, self.rx.recv()).await {
            got.push(match m {
                Message::Text(t) => Got::Json(ServerMessage::parse(&t).unwrap()),
                Message::Binary(_) => Got::Audio,
                Message::Close(Some(CloseFrame { code, reason })) => Got::Closed(code, reason.to_string()),
                other => panic!("unexpected {other:?}"),
            });
        }
        got
    }

    /// Reads one reply up to and including its `tts stop`; returns it.
    async fn reply(&mut self) -> Vec<Got> {
        let mut got = Vec::new();
        loop {
            let m = self.next().await.expect("the reply ends with tts stop");
            let stop = m == Got::Json(ServerMessage::tts(TtsState::Stop));
            got.push(m);
            if stop {
                return got;
            }
        }
    }

    /// Turn records, once the session has handed over `n` of them.
    async fn turns(&self, n: usize) -> Vec<TurnRecord> {
        for _ in 0..1000 {
            let turns = self.kept.turns();
            if turns.len() >= n {
                return turns;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} turn records expected, got {}", self.kept.turns().len())
    }
}

fn listen_json(state: &str, mode: &str) -> Message {
    Message::Text(format!(r#"{{"type":"listen","state":"{state}","mode":"{mode}"}}"#).into())
}

fn push_to_talk_messages(n: usize) -> Vec<Message> {
    let mut m = vec![listen_json("start", "manual")];
    m.extend(std::iter::repeat_n(Message::Binary(frame()), n));
    m.push(listen_json("stop", "manual"));
    m
}

fn stops(got: &[Got]) -> usize {
    got.iter().filter(|g| **g == Got::Json(ServerMessage::tts(TtsState::Stop))).count()
}

fn audio(got: &[Got]) -> usize {
    got.iter().filter(|g| **g == Got::Audio).count()
}

fn assistant_interrupted(turn: &TurnRecord) -> bool {
    turn.messages.iter().find(|m| m.role == Role::Assistant).expect("an assistant message").interrupted
}

#[tokio::test(start_paused = true)]
async fn a_push_to_talk_turn_is_answered_and_recorded() {
    let mut dev = Device::connect(5, |_| {}).await;
    dev.push_to_talk(4);
    let reply = dev.reply().await;
    assert_eq!(reply.first(), Some(&Got::Json(ServerMessage::Stt { text: "4 packets".into() })));
    assert!(reply.contains(&Got::Json(ServerMessage::tts(TtsState::Start))));
    assert!(reply.contains(&Got::Json(ServerMessage::sentence("Yes."))));
    assert_eq!(audio(&reply), 5, "every reply frame, then tts stop: {reply:?}");
    let turns = dev.turns(1).await;
    let roles: Vec<Role> = turns[0].messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, vec![Role::User, Role::Assistant]);
    assert!(!assistant_interrupted(&turns[0]));
}

#[tokio::test(start_paused = true)]
async fn abort_cuts_the_reply_at_once_and_the_record_says_so() {
    let mut dev = Device::connect(100, |_| {}).await;
    dev.push_to_talk(3);
    // Wait for the first audio frame, then abort.
    while dev.next().await != Some(Got::Audio) {}
    dev.text(r#"{"type":"abort","reason":"wake_word_detected"}"#);
    let rest = dev.reply().await;
    assert!(audio(&rest) < 10, "the reply stops within a few frames of the abort: {} more", audio(&rest));
    assert!(dev.within(Duration::from_secs(10)).await.is_empty(), "nothing of the cut reply after tts stop");
    let turns = dev.turns(1).await;
    assert!(assistant_interrupted(&turns[0]), "the stored reply is marked interrupted");
}

#[tokio::test(start_paused = true)]
async fn abort_with_nothing_playing_is_still_answered_with_tts_stop() {
    let mut dev = Device::connect(5, |_| {}).await;
    dev.text(r#"{"type":"abort"}"#);
    assert_eq!(dev.next().await, Some(Got::Json(ServerMessage::tts(TtsState::Stop))));
}

#[tokio::test(start_paused = true)]
async fn speech_during_a_realtime_reply_barges_in_and_becomes_the_next_turn() {
    let mut dev = Device::connect(200, |_| {}).await;
    dev.text(r#"{"type":"listen","state":"detect","text":"what time is it"}"#);
    while dev.next().await != Some(Got::Audio) {}
    // The user speaks over the reply in realtime (full duplex) mode.
    dev.listen("start", "realtime");
    dev.audio(speech_packets());
    let cut = dev.reply().await;
    assert!(audio(&cut) < 60, "the reply was cut, not played out: {} frames", audio(&cut));
    // What the user said is the next turn, answered in full.
    let next = dev.reply().await;
    assert!(
        matches!(next.first(), Some(Got::Json(ServerMessage::Stt { text })) if text.ends_with("packets")),
        "the barge-in speech is answered: {next:?}"
    );
    let turns = dev.turns(2).await;
    assert!(assistant_interrupted(&turns[0]));
}

#[tokio::test(start_paused = true)]
async fn a_silent_device_is_closed_after_the_idle_timeout_and_speech_holds_it_off() {
    let mut dev = Device::connect(2, |s| s.idle_timeout_secs = 30).await;
    assert!(dev.within(Duration::from_secs(20)).await.is_empty());
    // A turn 20 s in restarts the clock: no close at 30 s.
    dev.push_to_talk(2);
    assert_eq!(stops(&dev.reply().await), 1);
    let got = dev.within(Duration::from_secs(25)).await;
    assert!(got.is_empty(), "still open 25 s after the turn: {got:?}");
    let closed = timeout(Duration::from_secs(6), dev.next()).await;
    assert_eq!(
        closed.ok().flatten(),
        Some(Got::Closed(super::close::NORMAL, "idle timeout".into())),
        "closed at 30 s"
    );
    assert_eq!(dev.next().await, None, "and the connection ends");
    dev.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn listening_again_right_after_a_reply_ended_sends_no_second_tts_stop() {
    let mut dev = Device::connect(3, |_| {}).await;
    for turn in 0..20 {
        // The device presses the button the moment it hears tts stop, before the session has
        // heard from its writer that the reply played.
        dev.at_next_tts_stop(vec![listen_json("start", "manual")]);
        dev.push_to_talk(2);
        let reply = dev.reply().await;
        assert_eq!(stops(&reply), 1, "turn {turn}");
        let got = dev.within(Duration::from_secs(5)).await;
        assert_eq!(stops(&got), 0, "turn {turn}: no stray tts stop: {got:?}");
        dev.listen("stop", "manual");
    }
    let turns = dev.turns(20).await;
    assert!(
        turns.iter().all(|t| !assistant_interrupted(t)),
        "a reply that played out is not stored as interrupted"
    );
}

#[tokio::test(start_paused = true)]
async fn back_to_back_push_to_talk_turns_get_one_full_reply_each() {
    let mut dev = Device::connect(3, |_| {}).await;
    dev.push_to_talk(2);
    for turn in 0..20 {
        // The next turn starts the instant this reply's tts stop leaves.
        dev.at_next_tts_stop(if turn < 19 { push_to_talk_messages(2) } else { Vec::new() });
        let reply = dev.reply().await;
        assert_eq!(stops(&reply), 1, "turn {turn}: {reply:?}");
        assert_eq!(audio(&reply), 3, "turn {turn}: the whole reply before its tts stop");
        assert!(reply.contains(&Got::Json(ServerMessage::sentence("Yes."))), "turn {turn}");
    }
    let turns = dev.turns(20).await;
    assert!(turns.iter().all(|t| !assistant_interrupted(t)), "no turn stored as interrupted");
}

#[tokio::test(start_paused = true)]
async fn a_device_over_its_turn_quota_hears_a_notice_instead_of_an_answer() {
    let limits = LimitSettings { turns_per_minute: 2, turns_per_day: 0, ..Default::default() };
    let mut dev = Device::connect_limited(3, |_| {}, limits).await;
    for _ in 0..2 {
        dev.push_to_talk(2);
        let reply = dev.reply().await;
        assert!(matches!(reply.first(), Some(Got::Json(ServerMessage::Stt { .. }))), "answered: {reply:?}");
    }
    dev.push_to_talk(2);
    let notice = dev.reply().await;
    assert!(
        notice.contains(&Got::Json(ServerMessage::sentence(super::machine::QUOTA_NOTICE))),
        "the third turn in a minute is answered with the notice: {notice:?}"
    );
    assert!(!notice.iter().any(|g| matches!(g, Got::Json(ServerMessage::Stt { .. }))), "and not answered");
    let turns = dev.turns(3).await;
    let said: Vec<&str> = turns[2].messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(said, [super::machine::QUOTA_NOTICE], "the refused turn is stored as the notice alone");
}

/// The shipped speech sample as 60 ms Opus packets, then silence (the VAD ends the turn).
fn speech_packets() -> Vec<Bytes> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech-16k.wav");
    let mut reader = hound::WavReader::open(path).expect("speech sample");
    let mut pcm: Vec<i16> = reader.samples::<i16>().map(|s| s.expect("sample")).collect();
    pcm.extend(std::iter::repeat_n(0, 16_000));
    let mut enc = crate::audio::opus::FrameEncoder::new(16_000, 60).expect("encoder");
    enc.encode_all(&pcm).expect("encodes").into_iter().map(Bytes::from).collect()
}
