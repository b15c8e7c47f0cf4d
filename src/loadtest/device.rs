//! One simulated talking (or idle) device: connects, says hello, and runs turns like firmware
//! in auto mode: speech frames paced at 60 ms in real time, then silence until the reply
//! starts; the reply's frames are timed on arrival, never decoded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firmware_protocol::{ListenMode, ServerMessage, TtsState};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};

use crate::client::{DeviceClient, DeviceConfig, Event};

/// What every device shares: the encoded utterance and the pacing rules.
pub(crate) struct Script {
    pub speech: Vec<Bytes>,
    pub silence: Bytes,
    /// Silence frames sent at most after the speech before the turn counts as failed.
    pub max_silence_frames: usize,
    /// How long a reply may take to end once it started.
    pub reply_timeout: Duration,
    pub turns: usize,
    pub deadline: Instant,
}

/// What one device measured.
#[derive(Debug, Default)]
pub struct DeviceReport {
    pub connect_ms: Option<f64>,
    pub hello_ms: Option<f64>,
    pub connect_error: Option<String>,
    pub turns_ok: usize,
    pub failures: Vec<String>,
    pub eos_to_first_audio_ms: Vec<f64>,
    pub frames: u64,
    pub late_frames: u64,
    pub worst_gap_ms: f64,
}

/// A frame arriving more than this after the previous one of the same reply is late.
const LATE_GAP: Duration = Duration::from_millis(65);

/// Connects (timing TCP + upgrade, then the hello exchange).
async fn connect(cfg: &DeviceConfig, report: &mut DeviceReport) -> Option<DeviceClient> {
    let t0 = Instant::now();
    match DeviceClient::connect_timed(cfg).await {
        Ok((dev, upgraded)) => {
            report.connect_ms = Some((upgraded - t0).as_secs_f64() * 1000.0);
            report.hello_ms = Some(upgraded.elapsed().as_secs_f64() * 1000.0);
            Some(dev)
        }
        Err(e) => {
            report.connect_error = Some(e.to_string());
            None
        }
    }
}

/// Holds a connection without talking until the deadline.
pub(crate) async fn idle(cfg: DeviceConfig, deadline: Instant) -> DeviceReport {
    let mut report = DeviceReport::default();
    let Some(mut dev) = connect(&cfg, &mut report).await else { return report };
    let _ = tokio::time::timeout_at(deadline, async {
        while let Ok(e) = dev.rx.next_event().await {
            if let Event::Closed(_) = e {
                break;
            }
        }
    })
    .await;
    report
}

/// Talks until `script.turns` turns are done or the deadline passes.
pub(crate) async fn talk(cfg: DeviceConfig, script: Arc<Script>) -> DeviceReport {
    let mut report = DeviceReport::default();
    let Some(mut dev) = connect(&cfg, &mut report).await else { return report };
    while report.turns_ok + report.failures.len() < script.turns && Instant::now() < script.deadline {
        match turn(&mut dev, &script, &mut report).await {
            Ok(()) => report.turns_ok += 1,
            Err(reason) => {
                let closed = reason.starts_with("closed");
                report.failures.push(reason);
                if closed {
                    break;
                }
            }
        }
    }
    let _ = dev.tx.close().await;
    report
}

/// One turn: speech, silence until `tts start`, then the reply until `tts stop`.
async fn turn(dev: &mut DeviceClient, script: &Script, report: &mut DeviceReport) -> Result<(), String> {
    dev.tx.listen_start(ListenMode::Auto).await.map_err(|e| format!("closed: {e}"))?;
    let mut tick = interval(Duration::from_millis(60));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sent = 0usize;
    let mut eos: Option<Instant> = None;
    // Upload phase: one frame per tick; anything the gateway says is read meanwhile.
    let started = loop {
        tokio::select! {
            _ = tick.tick() => {
                let packet = if sent < script.speech.len() { &script.speech[sent] } else { &script.silence };
                dev.tx.audio(packet).await.map_err(|e| format!("closed: {e}"))?;
                sent += 1;
                if sent == script.speech.len() {
                    eos = Some(Instant::now());
                }
                if sent > script.speech.len() + script.max_silence_frames {
                    return Err("no reply after the end of speech".into());
                }
            }
            event = dev.rx.next_event() => match event.map_err(|e| format!("protocol: {e}"))? {
                Event::Json(ServerMessage::Tts { state: TtsState::Start, .. }) => break Instant::now(),
                Event::Json(_) => {}
                Event::Audio { .. } => return Err("audio before tts start".into()),
                Event::Closed(c) => return Err(format!("closed by the gateway: {c:?}")),
            },
        }
    };
    let _ = started;
    let eos = eos.unwrap_or_else(Instant::now);
    // Reply phase: the device's microphone is off; time every frame until `tts stop`.
    let deadline = Instant::now() + script.reply_timeout;
    let mut last: Option<Instant> = None;
    let mut frames = 0u64;
    loop {
        let event = tokio::select! {
            e = dev.rx.next_event() => e.map_err(|e| format!("protocol: {e}"))?,
            _ = sleep_until(deadline) => return Err("reply did not end in time".into()),
        };
        match event {
            Event::Audio { at, .. } => {
                if let Some(prev) = last {
                    let gap = at - prev;
                    report.worst_gap_ms = report.worst_gap_ms.max(gap.as_secs_f64() * 1000.0);
                    if gap > LATE_GAP {
                        report.late_frames += 1;
                    }
                } else {
                    report.eos_to_first_audio_ms.push((at - eos).as_secs_f64() * 1000.0);
                }
                last = Some(at);
                frames += 1;
            }
            Event::Json(ServerMessage::Tts { state: TtsState::Stop, .. }) => break,
            Event::Json(_) => {}
            Event::Closed(c) => return Err(format!("closed by the gateway: {c:?}")),
        }
    }
    report.frames += frames;
    if frames == 0 {
        return Err("reply without audio".into());
    }
    Ok(())
}
