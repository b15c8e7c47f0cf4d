//! `xiaozhi-gateway loadtest`: N simulated devices against a gateway URL, each connecting,
//! saying hello and running real-time conversation turns with real speech (the shipped WAV,
//! encoded once), plus idle devices that only hold a connection. One task per device, no
//! threads of its own, no decoding of reply audio. The report reads the gateway's `/metrics`
//! before and after for its CPU seconds and resident memory.

pub(crate) mod device;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firmware_protocol::frame::ProtocolVersion;
use tokio::time::Instant;

use crate::audio::opus::FrameEncoder;
use crate::client::DeviceConfig;
pub use report::{Percentiles, Report};

/// The speech every device says (16 kHz mono), shipped with the project.
const SPEECH_WAV: &[u8] = include_bytes!("../../tests/data/speech-16k.wav");

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// WebSocket URL of the gateway.
    #[arg(long, default_value = "ws://127.0.0.1:8000/xiaozhi/v1/")]
    pub url: String,
    /// Devices that talk continuously.
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Devices that only hold a connection.
    #[arg(long, default_value_t = 0)]
    pub idle_devices: usize,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 200.0)]
    pub ramp_up: f64,
    /// How long to run, in seconds (after ramp-up starts).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Turns per talking device (0: as many as fit in the duration).
    #[arg(long, default_value_t = 0)]
    pub turns: usize,
    /// Binary protocol version (1, 2 or 3).
    #[arg(long, default_value_t = 1)]
    pub protocol_version: u8,
    /// Bearer token for the gateway.
    #[arg(long)]
    pub token: Option<String>,
    /// A 16-bit mono WAV to speak instead of the shipped sample (16 kHz).
    #[arg(long)]
    pub wav: Option<std::path::PathBuf>,
    /// The gateway's VAD silence window in ms, reported to separate it from the gateway's own latency.
    #[arg(long, default_value_t = 600)]
    pub vad_silence_ms: u64,
    /// The gateway's metrics URL (default: derived from --url).
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Exit with status 1 when any turn fails.
    #[arg(long)]
    pub fail_on_error: bool,
}

/// Why a load test could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("cannot read the WAV: {0}")]
    Wav(String),
    #[error("{0}")]
    Config(String),
}

/// Encodes the utterance once: speech packets and one silence packet.
fn script_audio(wav: Option<&std::path::Path>) -> Result<(Vec<Bytes>, Bytes), LoadtestError> {
    let reader = match wav {
        Some(p) => hound::WavReader::open(p)
            .map_err(|e| LoadtestError::Wav(e.to_string()))?
            .into_samples::<i16>()
            .collect(),
        None => hound::WavReader::new(std::io::Cursor::new(SPEECH_WAV))
            .map_err(|e| LoadtestError::Wav(e.to_string()))?
            .into_samples::<i16>()
            .collect::<Result<Vec<_>, _>>(),
    };
    let pcm = reader.map_err(|e| LoadtestError::Wav(e.to_string()))?;
    let mut enc = FrameEncoder::new(16_000, 60).map_err(|e| LoadtestError::Wav(e.to_string()))?;
    let speech = enc
        .encode_all(&pcm)
        .map_err(|e| LoadtestError::Wav(e.to_string()))?
        .into_iter()
        .map(Bytes::from)
        .collect();
    let silence = Bytes::from(enc.encode(&[0; 960]).map_err(|e| LoadtestError::Wav(e.to_string()))?);
    Ok((speech, silence))
}

/// Reads `process_cpu_seconds_total` and `process_resident_memory_bytes` from `/metrics`.
async fn gateway_process(url: &str) -> Option<(f64, f64)> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    Some((value("process_cpu_seconds_total")?, value("process_resident_memory_bytes")?))
}

fn metrics_url(args: &LoadtestArgs) -> String {
    if let Some(u) = &args.metrics_url {
        return u.clone();
    }
    let rest = args.url.split_once("://").map_or(args.url.as_str(), |(_, r)| r);
    let host = rest.split('/').next().unwrap_or("127.0.0.1:8000");
    let scheme = if args.url.starts_with("wss") { "https" } else { "http" };
    format!("{scheme}://{host}/metrics")
}

/// Runs the load test and returns its report.
pub async fn run(args: &LoadtestArgs) -> Result<Report, LoadtestError> {
    crate::install_crypto_provider();
    let version = ProtocolVersion::from_number(u64::from(args.protocol_version))
        .map_err(|e| LoadtestError::Config(e.to_string()))?;
    if args.ramp_up <= 0.0 {
        return Err(LoadtestError::Config("--ramp-up must be positive".into()));
    }
    let (speech, silence) = script_audio(args.wav.as_deref())?;
    let metrics = metrics_url(args);
    let before = gateway_process(&metrics).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let script = Arc::new(device::Script {
        speech,
        silence,
        max_silence_frames: ((args.vad_silence_ms + 3000) / 60) as usize,
        reply_timeout: Duration::from_secs(20),
        turns: if args.turns == 0 { usize::MAX } else { args.turns },
        deadline,
    });
    // Resident memory while every device is still connected (just before the deadline).
    let peak = {
        let url = metrics.clone();
        let at = deadline.checked_sub(Duration::from_secs(2)).unwrap_or(deadline);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            gateway_process(&url).await
        })
    };
    let total = args.devices + args.idle_devices;
    let gap = Duration::from_secs_f64(1.0 / args.ramp_up);
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until(started + gap * i as u32).await;
        let mut cfg = DeviceConfig::new(args.url.clone(), device_id(run_id, i));
        cfg.version = version;
        cfg.token = args.token.clone();
        tasks.push(if i < args.idle_devices {
            tokio::spawn(device::idle(cfg, deadline))
        } else {
            tokio::spawn(device::talk(cfg, script.clone()))
        });
    }
    let mut reports = Vec::with_capacity(total);
    for t in tasks {
        if let Ok(r) = t.await {
            reports.push(r);
        }
    }
    let elapsed = started.elapsed();
    let after = gateway_process(&metrics).await;
    let peak = peak.await.ok().flatten();
    Ok(Report::build(args, &reports, elapsed, before, after, peak))
}

/// A MAC-style device id unique to this run.
fn device_id(run: &str, i: usize) -> String {
    let b = run.as_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0],
        b[1],
        b[2],
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8
    )
}

/// Counts failure reasons.
fn reasons(reports: &[device::DeviceReport]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in reports {
        for f in &r.failures {
            *m.entry(f.clone()).or_insert(0) += 1;
        }
        if let Some(e) = &r.connect_error {
            *m.entry(format!("connect: {e}")).or_insert(0) += 1;
        }
    }
    m
}
