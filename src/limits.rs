//! Rate limits and admission: what one source address, one device or a reconnect storm may ask
//! of the gateway. Every limiter is a GCRA rate limiter from `governor` (keyed ones for the
//! per-address and per-device limits); checking one is a few atomic operations and never
//! waits. What was refused is counted in `/metrics` (`xiaozhi_limited_total{limit=...}`).
//!
//! * [`Limits::upgrade`]: WebSocket upgrades per source address per second (429).
//! * [`Limits::ota`]: OTA calls per source address per second (429).
//! * [`Limits::admit`]: new sessions per second over the whole gateway (503), so that a
//!   reconnect storm is let in at a steady pace; live sessions are never touched.
//! * [`TurnQuota`]: turns per device per minute and per day, taken once per turn by the session.
//!
//! A refusal carries how long to wait ([`Refused::retry_after`]), sent as `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics::Counter;

use crate::config::LimitSettings;
use crate::telemetry::metrics::{Limit, Metrics};

/// How long to wait before asking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

impl Refused {
    /// The `Retry-After` value: whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)).max(1)
    }
}

/// Which of a device's turn quotas was used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaWindow {
    Minute,
    Day,
}

/// A device asked for more turns than its quota allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("turn quota per {} used up; next turn in {} s", match .window { QuotaWindow::Minute => "minute", QuotaWindow::Day => "day" }, .retry_after.as_secs().max(1))]
pub struct QuotaExceeded {
    pub window: QuotaWindow,
    /// When the next turn would be allowed.
    pub retry_after: Duration,
}

/// A limiter keyed by something, with the counter of its refusals; `None` when switched off.
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    refused: Counter,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn new(quota: Option<Quota>, refused: Counter) -> Self {
        Self { limiter: quota.map(RateLimiter::keyed), refused }
    }

    fn check(&self, key: &K) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(key).map_err(|not_until| {
            self.refused.increment(1);
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }

    /// Forgets keys whose limiter is back to full (bounded memory).
    fn prune(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// Every limit the gateway applies, built once from the settings.
pub struct Limits {
    upgrades: Keyed<IpAddr>,
    ota: Keyed<IpAddr>,
    admission: Option<DefaultDirectRateLimiter>,
    admission_refused: Counter,
    /// Turns per device: the session takes one per turn.
    pub turns: Arc<TurnQuota>,
}

/// `n` per second with a burst of `n`; `None` for 0 (no limit).
fn per_second(n: u32) -> Option<Quota> {
    NonZeroU32::new(n).map(Quota::per_second)
}

impl Limits {
    pub fn new(settings: &LimitSettings, metrics: &Metrics) -> Self {
        Self {
            upgrades: Keyed::new(per_second(settings.upgrades_per_sec), metrics.limited(Limit::Upgrade)),
            ota: Keyed::new(per_second(settings.ota_per_sec), metrics.limited(Limit::Ota)),
            admission: per_second(settings.new_sessions_per_sec).map(RateLimiter::direct),
            admission_refused: metrics.limited(Limit::Admission),
            turns: Arc::new(TurnQuota::new(settings, metrics)),
        }
    }

    /// A WebSocket upgrade from `addr`.
    pub fn upgrade(&self, addr: IpAddr) -> Result<(), Refused> {
        self.upgrades.check(&addr).map_err(|retry_after| Refused { retry_after })
    }

    /// An OTA call from `addr`.
    pub fn ota(&self, addr: IpAddr) -> Result<(), Refused> {
        self.ota.check(&addr).map_err(|retry_after| Refused { retry_after })
    }

    /// A new session, from anyone.
    pub fn admit(&self) -> Result<(), Refused> {
        let Some(limiter) = &self.admission else { return Ok(()) };
        limiter.check().map_err(|not_until| {
            self.admission_refused.increment(1);
            Refused { retry_after: not_until.wait_time_from(DefaultClock::default().now()) }
        })
    }

    /// Forgets addresses and devices that are back to a full allowance.
    pub fn prune(&self) {
        self.upgrades.prune();
        self.ota.prune();
        self.turns.prune();
    }

    /// How many addresses and devices are remembered (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.upgrades.len() + self.ota.len() + self.turns.per_minute.len() + self.turns.per_day.len()
    }
}

/// Runs [`Limits::prune`] every `every` until `stop` is cancelled.
pub async fn prune_schedule(limits: Arc<Limits>, every: Duration, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => limits.prune(),
            _ = stop.cancelled() => return,
        }
    }
}

/// Turns per device per minute and per day (0: no limit). Every turn may cost a paid LLM call;
/// the operator sets the quota.
pub struct TurnQuota {
    per_minute: Keyed<String>,
    per_day: Keyed<String>,
}

impl TurnQuota {
    pub fn new(settings: &LimitSettings, metrics: &Metrics) -> Self {
        let per_minute = NonZeroU32::new(settings.turns_per_minute).map(Quota::per_minute);
        let per_day = NonZeroU32::new(settings.turns_per_day).and_then(|n| {
            Quota::with_period(Duration::from_secs(86_400) / n.get()).map(|q| q.allow_burst(n))
        });
        Self {
            per_minute: Keyed::new(per_minute, metrics.limited(Limit::TurnsPerMinute)),
            per_day: Keyed::new(per_day, metrics.limited(Limit::TurnsPerDay)),
        }
    }

    /// Takes one turn from `device_id`'s quota. Cheap and never waits: call it once per turn.
    /// The minute is checked first; a turn refused by the day's quota still used a place in
    /// the minute's.
    pub fn take(&self, device_id: &str) -> Result<(), QuotaExceeded> {
        if self.per_minute.limiter.is_none() && self.per_day.limiter.is_none() {
            return Ok(());
        }
        let key = device_id.to_owned();
        self.per_minute
            .check(&key)
            .map_err(|retry_after| QuotaExceeded { window: QuotaWindow::Minute, retry_after })?;
        self.per_day
            .check(&key)
            .map_err(|retry_after| QuotaExceeded { window: QuotaWindow::Day, retry_after })
    }

    fn prune(&self) {
        self.per_minute.prune();
        self.per_day.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut LimitSettings)) -> LimitSettings {
        let mut s = LimitSettings::default();
        f(&mut s);
        s
    }

    #[test]
    fn a_device_gets_its_turns_per_minute_then_a_wait() {
        let metrics = Metrics::new();
        let quota = TurnQuota::new(
            &settings(|s| {
                s.turns_per_minute = 3;
                s.turns_per_day = 0;
            }),
            &metrics,
        );
        for _ in 0..3 {
            quota.take("aa:bb").unwrap();
        }
        let e = quota.take("aa:bb").unwrap_err();
        assert_eq!(e.window, QuotaWindow::Minute);
        assert!(e.retry_after > Duration::ZERO && e.retry_after <= Duration::from_secs(20), "{e:?}");
        // Another device has its own quota.
        quota.take("cc:dd").unwrap();
        assert!(metrics.render().contains("xiaozhi_limited_total{limit=\"turns_per_minute\"} 1"));
    }

    #[test]
    fn the_day_quota_counts_across_minutes() {
        let metrics = Metrics::new();
        let quota = TurnQuota::new(
            &settings(|s| {
                s.turns_per_minute = 0;
                s.turns_per_day = 2;
            }),
            &metrics,
        );
        quota.take("aa").unwrap();
        quota.take("aa").unwrap();
        let e = quota.take("aa").unwrap_err();
        assert_eq!(e.window, QuotaWindow::Day);
        assert!(e.retry_after > Duration::from_secs(3600), "{e:?}");
    }

    #[test]
    fn zero_switches_a_limit_off() {
        let metrics = Metrics::new();
        let limits = Limits::new(
            &LimitSettings {
                upgrades_per_sec: 0,
                ota_per_sec: 0,
                new_sessions_per_sec: 0,
                turns_per_minute: 0,
                turns_per_day: 0,
                ..LimitSettings::default()
            },
            &metrics,
        );
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            limits.upgrade(addr).unwrap();
            limits.ota(addr).unwrap();
            limits.admit().unwrap();
            limits.turns.take("aa").unwrap();
        }
        assert_eq!(limits.tracked(), 0);
    }

    #[test]
    fn addresses_are_limited_apart_and_forgotten_once_full_again() {
        let metrics = Metrics::new();
        let limits = Limits::new(&settings(|s| s.upgrades_per_sec = 2), &metrics);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        limits.upgrade(a).unwrap();
        limits.upgrade(a).unwrap();
        let refused = limits.upgrade(a).unwrap_err();
        assert!(refused.retry_after_secs() >= 1);
        limits.upgrade(b).unwrap();
        assert_eq!(limits.upgrades.len(), 2);
    }
}
