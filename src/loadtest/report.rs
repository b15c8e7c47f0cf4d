//! The load test's report: a table for people, JSON for machines.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::LoadtestArgs;
use super::device::DeviceReport;

/// Percentiles of a set of samples (milliseconds).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Self { count: v.len(), p50: at(0.50), p90: at(0.90), p99: at(0.99), max: v[v.len() - 1] }
    }
}

/// What a load test measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub devices: usize,
    pub idle_devices: usize,
    pub connected: usize,
    pub duration_s: f64,
    pub turns_ok: usize,
    pub turns_failed: usize,
    pub failure_reasons: BTreeMap<String, usize>,
    pub connect_ms: Percentiles,
    pub hello_ms: Percentiles,
    /// End of the user's speech to the first reply frame (includes the VAD silence window).
    pub eos_to_first_audio_ms: Percentiles,
    /// The same, minus the VAD silence window: what the gateway adds.
    pub gateway_added_ms: Percentiles,
    pub vad_silence_ms: u64,
    pub reply_frames: u64,
    pub late_frames: u64,
    pub late_frame_ratio: f64,
    pub worst_gap_ms: f64,
    /// CPU seconds the gateway used during the run (from its /metrics).
    pub gateway_cpu_s: Option<f64>,
    /// The gateway's CPU seconds per talking-device minute.
    pub gateway_cpu_s_per_device_minute: Option<f64>,
    /// The gateway's resident memory while all devices were connected.
    pub gateway_rss_bytes: Option<f64>,
    /// Resident memory growth per connected device (before the run → all connected).
    pub gateway_rss_delta_per_device_bytes: Option<f64>,
}

impl Report {
    pub fn build(
        args: &LoadtestArgs,
        reports: &[DeviceReport],
        elapsed: Duration,
        before: Option<(f64, f64)>,
        after: Option<(f64, f64)>,
        peak: Option<(f64, f64)>,
    ) -> Report {
        let all = |f: fn(&DeviceReport) -> Option<f64>| reports.iter().filter_map(f).collect::<Vec<_>>();
        let eos: Vec<f64> = reports.iter().flat_map(|r| r.eos_to_first_audio_ms.iter().copied()).collect();
        let added = eos.iter().map(|v| (v - args.vad_silence_ms as f64).max(0.0)).collect();
        let frames: u64 = reports.iter().map(|r| r.frames).sum();
        let late: u64 = reports.iter().map(|r| r.late_frames).sum();
        let connected = reports.iter().filter(|r| r.connect_ms.is_some()).count();
        let cpu = match (before, after) {
            (Some(b), Some(a)) => Some(a.0 - b.0),
            _ => None,
        };
        let minutes = elapsed.as_secs_f64() / 60.0;
        Report {
            devices: args.devices,
            idle_devices: args.idle_devices,
            connected,
            duration_s: elapsed.as_secs_f64(),
            turns_ok: reports.iter().map(|r| r.turns_ok).sum(),
            turns_failed: reports
                .iter()
                .map(|r| r.failures.len() + usize::from(r.connect_error.is_some()))
                .sum(),
            failure_reasons: super::reasons(reports),
            connect_ms: Percentiles::of(all(|r| r.connect_ms)),
            hello_ms: Percentiles::of(all(|r| r.hello_ms)),
            eos_to_first_audio_ms: Percentiles::of(eos),
            gateway_added_ms: Percentiles::of(added),
            vad_silence_ms: args.vad_silence_ms,
            reply_frames: frames,
            late_frames: late,
            late_frame_ratio: if frames == 0 { 0.0 } else { late as f64 / frames as f64 },
            worst_gap_ms: reports.iter().map(|r| r.worst_gap_ms).fold(0.0, f64::max),
            gateway_cpu_s: cpu,
            gateway_cpu_s_per_device_minute: cpu
                .filter(|_| args.devices > 0 && minutes > 0.0)
                .map(|c| c / (args.devices as f64 * minutes)),
            gateway_rss_bytes: peak.or(after).map(|a| a.1),
            gateway_rss_delta_per_device_bytes: match (before, peak.or(after)) {
                (Some(b), Some(a)) if connected > 0 => Some((a.1 - b.1) / connected as f64),
                _ => None,
            },
        }
    }

    /// The human table.
    pub fn table(&self) -> String {
        let p = |name: &str, x: &Percentiles| {
            format!(
                "{name:<24} {:>8.1} {:>8.1} {:>8.1} {:>8.1}   (n={})\n",
                x.p50, x.p90, x.p99, x.max, x.count
            )
        };
        let mut s = String::new();
        s += &format!(
            "devices {} talking + {} idle, {} connected, {:.1} s\n",
            self.devices, self.idle_devices, self.connected, self.duration_s
        );
        s += &format!("turns ok {}, failed {}\n", self.turns_ok, self.turns_failed);
        for (reason, n) in &self.failure_reasons {
            s += &format!("  {n} × {reason}\n");
        }
        s += &format!("{:<24} {:>8} {:>8} {:>8} {:>8}\n", "latency (ms)", "p50", "p90", "p99", "max");
        s += &p("connect", &self.connect_ms);
        s += &p("hello", &self.hello_ms);
        s += &p("eos → first audio", &self.eos_to_first_audio_ms);
        s += &p(&format!("  beyond VAD {} ms", self.vad_silence_ms), &self.gateway_added_ms);
        s += &format!(
            "reply frames {}, late (> 65 ms gap) {} = {:.3}%, worst gap {:.1} ms\n",
            self.reply_frames,
            self.late_frames,
            self.late_frame_ratio * 100.0,
            self.worst_gap_ms
        );
        match (self.gateway_cpu_s, self.gateway_rss_bytes) {
            (Some(cpu), Some(rss)) => {
                s += &format!(
                    "gateway: {cpu:.2} CPU s ({:.4} per device-minute), RSS {:.1} MiB ({:+.1} KiB per connected device)\n",
                    self.gateway_cpu_s_per_device_minute.unwrap_or(0.0),
                    rss / 1048576.0,
                    self.gateway_rss_delta_per_device_bytes.unwrap_or(0.0) / 1024.0
                )
            }
            _ => s += "gateway: /metrics not reachable\n",
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max, p.count), (50.0, 90.0, 99.0, 100.0, 100));
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
    }
}
