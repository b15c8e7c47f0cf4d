//! Prometheus metrics through the `metrics` facade and `metrics-exporter-prometheus`, with a
//! recorder per gateway instance (not a global one), so that several instances in one process
//! (the tests) keep their own figures. Handles are registered once; the hot path only does
//! atomic increments. Gauges that describe the store, the uploads and the process are
//! refreshed when `/metrics` is scraped.

use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Latency buckets in seconds, from 5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    AuthRefused,
    HelloTimeout,
    LimitReached,
    BadRequest,
    Dropped,
    /// Refused because the gateway is draining.
    Draining,
}

impl Handshake {
    const ALL: [Handshake; 7] = [
        Handshake::Ok,
        Handshake::AuthRefused,
        Handshake::HelloTimeout,
        Handshake::LimitReached,
        Handshake::BadRequest,
        Handshake::Dropped,
        Handshake::Draining,
    ];
    fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::AuthRefused => "auth_refused",
            Handshake::HelloTimeout => "hello_timeout",
            Handshake::LimitReached => "limit_reached",
            Handshake::BadRequest => "bad_request",
            Handshake::Dropped => "dropped",
            Handshake::Draining => "draining",
        }
    }
}

/// A limit that refused a request or a turn (`xiaozhi_limited_total{limit=...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// WebSocket upgrades per source address.
    Upgrade,
    /// OTA calls per source address.
    Ota,
    /// New sessions per second over the gateway.
    Admission,
    TurnsPerMinute,
    TurnsPerDay,
}

impl Limit {
    const ALL: [Limit; 5] =
        [Limit::Upgrade, Limit::Ota, Limit::Admission, Limit::TurnsPerMinute, Limit::TurnsPerDay];
    fn label(self) -> &'static str {
        match self {
            Limit::Upgrade => "upgrades_per_address",
            Limit::Ota => "ota_per_address",
            Limit::Admission => "new_sessions",
            Limit::TurnsPerMinute => "turns_per_minute",
            Limit::TurnsPerDay => "turns_per_day",
        }
    }
}

/// A stage of a turn whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// End of the user's speech to the first reply frame sent.
    EosToFirstAudio,
    Asr,
    LlmFirstToken,
    TtsFirstAudio,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::EosToFirstAudio, Stage::Asr, Stage::LlmFirstToken, Stage::TtsFirstAudio];
    fn label(self) -> &'static str {
        match self {
            Stage::EosToFirstAudio => "eos_to_first_audio",
            Stage::Asr => "asr",
            Stage::LlmFirstToken => "llm_first_token",
            Stage::TtsFirstAudio => "tts_first_audio",
        }
    }
}

/// Every metric the gateway records.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    sessions_by_version: [Gauge; 3],
    pub connections: Gauge,
    handshakes: [Counter; 7],
    pub frames_in: Counter,
    pub bytes_in: Counter,
    pub frames_out: Counter,
    pub bytes_out: Counter,
    pub late_frames: Counter,
    pub turns_voice: Counter,
    pub turns_text: Counter,
    pub barge_ins: Counter,
    stages: [Histogram; 4],
    pub store_commit: Histogram,
    pub store_queue: Gauge,
    pub store_spilled: Gauge,
    pub store_committed: Counter,
    pub store_dead_lettered: Gauge,
    pub upload_pending: Gauge,
    pub upload_failed: Gauge,
    pub upload_oldest_age: Gauge,
    pub uploads: Counter,
    pub upload_failures: Counter,
    pub draining: Gauge,
    limited: [Counter; 5],
}

fn meta() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        let counter = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            r.describe_counter(KeyName::from_const_str(name), None, SharedString::const_str(help));
            r.register_counter(&Key::from_parts(name, labels), &meta())
        };
        let gauge = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            r.describe_gauge(KeyName::from_const_str(name), None, SharedString::const_str(help));
            r.register_gauge(&Key::from_parts(name, labels), &meta())
        };
        let histogram = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            r.describe_histogram(
                KeyName::from_const_str(name),
                Some(Unit::Seconds),
                SharedString::const_str(help),
            );
            r.register_histogram(&Key::from_parts(name, labels), &meta())
        };
        let sessions = |v: &'static str| {
            gauge(
                "xiaozhi_sessions_active",
                "Live device sessions, by binary protocol version.",
                vec![Label::new("protocol_version", v)],
            )
        };
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        let m = Metrics {
            sessions_by_version: [sessions("1"), sessions("2"), sessions("3")],
            connections: gauge(
                "xiaozhi_connections_active",
                "Upgraded WebSocket connections (sessions and handshakes).",
                vec![],
            ),
            handshakes: Handshake::ALL.map(|h| {
                counter(
                    "xiaozhi_handshakes_total",
                    "WebSocket handshakes by outcome.",
                    vec![Label::new("outcome", h.label())],
                )
            }),
            frames_in: counter("xiaozhi_frames_in_total", "Binary audio messages received.", vec![]),
            bytes_in: counter("xiaozhi_bytes_in_total", "Bytes of binary audio messages received.", vec![]),
            frames_out: counter("xiaozhi_frames_out_total", "Binary audio messages sent.", vec![]),
            bytes_out: counter("xiaozhi_bytes_out_total", "Bytes of binary audio messages sent.", vec![]),
            late_frames: counter(
                "xiaozhi_downlink_late_frames_total",
                "Reply frames sent more than 20 ms after their due time.",
                vec![],
            ),
            turns_voice: counter(
                "xiaozhi_turns_total",
                "Turns answered, by kind.",
                vec![Label::new("kind", "voice")],
            ),
            turns_text: counter(
                "xiaozhi_turns_total",
                "Turns answered, by kind.",
                vec![Label::new("kind", "text")],
            ),
            barge_ins: counter(
                "xiaozhi_barge_ins_total",
                "Replies interrupted by abort or user speech.",
                vec![],
            ),
            stages: Stage::ALL.map(|s| {
                histogram(
                    "xiaozhi_turn_latency_seconds",
                    "Turn latency by stage.",
                    vec![Label::new("stage", s.label())],
                )
            }),
            store_commit: histogram(
                "xiaozhi_store_commit_seconds",
                "Store writer transaction latency.",
                vec![],
            ),
            store_queue: gauge("xiaozhi_store_queue_depth", "Store writes waiting in memory.", vec![]),
            store_spilled: gauge(
                "xiaozhi_store_spilled",
                "Store writes waiting on disk (queue was full).",
                vec![],
            ),
            store_committed: counter("xiaozhi_store_committed_total", "Store writes committed.", vec![]),
            store_dead_lettered: gauge(
                "xiaozhi_store_dead_lettered",
                "Store writes the database rejected for good (kept on disk).",
                vec![],
            ),
            upload_pending: gauge("xiaozhi_upload_backlog", "Clips waiting for upload.", vec![]),
            upload_failed: gauge(
                "xiaozhi_upload_failed",
                "Clips whose upload was given up (still staged).",
                vec![],
            ),
            upload_oldest_age: gauge(
                "xiaozhi_upload_oldest_pending_seconds",
                "Age of the oldest clip waiting for upload.",
                vec![],
            ),
            uploads: counter("xiaozhi_uploads_total", "Clips uploaded.", vec![]),
            upload_failures: counter("xiaozhi_upload_failures_total", "Failed upload attempts.", vec![]),
            draining: gauge("xiaozhi_draining", "1 while the gateway drains before exiting.", vec![]),
            limited: Limit::ALL.map(|l| {
                counter(
                    "xiaozhi_limited_total",
                    "Requests and turns refused by a rate limit, by limit.",
                    vec![Label::new("limit", l.label())],
                )
            }),
            recorder,
            handle,
            process,
        };
        Arc::new(m)
    }

    pub fn handshake(&self, outcome: Handshake) {
        self.handshakes[Handshake::ALL.iter().position(|h| *h == outcome).unwrap_or(0)].increment(1);
    }

    /// The counter of what `limit` refused.
    pub fn limited(&self, limit: Limit) -> Counter {
        self.limited[Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0)].clone()
    }

    /// The gauge of live sessions speaking `version` (1, 2 or 3).
    pub fn sessions(&self, version: u8) -> &Gauge {
        &self.sessions_by_version[usize::from(version.clamp(1, 3) - 1)]
    }

    pub fn stage(&self, stage: Stage) -> &Histogram {
        &self.stages[Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0)]
    }

    pub fn observe(&self, stage: Stage, latency: Duration) {
        self.stage(stage).record(latency.as_secs_f64());
    }

    /// The Prometheus text exposition, process metrics refreshed.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.run_upkeep();
        self.handle.render()
    }
}
