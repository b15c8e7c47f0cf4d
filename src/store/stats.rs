//! Statistics per day (UTC): sessions, turns, active devices, seconds of speech in and out,
//! clips and bytes stored, failed uploads; over a time range, optionally for one device.
//!
//! Each table is grouped by day in the database (three grouped statements, one per table),
//! so the cost follows the number of rows in the range, not the whole history. The day is
//! the number of days since the Unix epoch, computed by each backend from its own timestamp
//! representation.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate};
use serde::Serialize;
use sqlx::Row;

use super::{Pool, Store, StoreError, Ts, with_pool};

/// One day's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DayStats {
    /// The day (UTC), `YYYY-MM-DD`.
    pub day: NaiveDate,
    /// Conversations started that day.
    pub sessions: i64,
    /// User messages that day.
    pub turns: i64,
    /// Devices with at least one message that day.
    pub active_devices: i64,
    /// Seconds of the devices' speech kept (user clips).
    pub speech_in_secs: f64,
    /// Seconds of synthesized speech kept (reply clips).
    pub speech_out_secs: f64,
    /// Clips (audio and images) recorded that day, and their bytes.
    pub clips: i64,
    pub bytes: i64,
    /// Clips of that day whose upload gave up.
    pub failed_uploads: i64,
}

/// Most days one request may cover.
pub const MAX_DAYS: i64 = 366;

/// The day number (days since 1970-01-01 UTC) of a timestamp column, per backend.
fn day_of(postgres: bool, column: &str) -> String {
    if postgres {
        format!("CAST(FLOOR(EXTRACT(EPOCH FROM {column}) / 86400) AS BIGINT)")
    } else {
        format!("({column} / 86400000000)")
    }
}

/// A sum as BIGINT on both backends (PostgreSQL sums BIGINT as NUMERIC), 0 over no rows.
fn sum(expr: &str) -> String {
    format!("CAST(COALESCE(SUM({expr}), 0) AS BIGINT)")
}

/// The three grouped statements (sessions, messages, clips) for one backend.
fn build(postgres: bool) -> [String; 3] {
    let range = |c: &str| format!("$1 <= {c} AND {c} < $2 AND ($3 IS NULL OR device_id = $3)");
    let sessions = format!(
        "SELECT {d} AS day, COUNT(*) AS sessions FROM conversation_sessions WHERE {w} GROUP BY 1",
        d = day_of(postgres, "started_at"),
        w = range("started_at"),
    );
    let messages = format!(
        "SELECT {d} AS day, {turns} AS turns, COUNT(DISTINCT device_id) AS active_devices \
         FROM conversation_messages WHERE {w} GROUP BY 1",
        d = day_of(postgres, "created_at"),
        turns = sum("CASE WHEN role = 'user' THEN 1 ELSE 0 END"),
        w = range("created_at"),
    );
    let clips = format!(
        "SELECT {d} AS day, {in_ms} AS in_ms, {out_ms} AS out_ms, COUNT(*) AS clips, {bytes} AS bytes, \
         {failed} AS failed FROM audio_files WHERE {w} GROUP BY 1",
        d = day_of(postgres, "created_at"),
        in_ms = sum("CASE WHEN source_type = 'user' THEN duration_ms ELSE 0 END"),
        out_ms = sum("CASE WHEN source_type = 'tts' THEN duration_ms ELSE 0 END"),
        bytes = sum("file_size"),
        failed = sum("CASE WHEN upload_status = 'failed' THEN 1 ELSE 0 END"),
        w = range("created_at"),
    );
    let sql = [sessions, messages, clips];
    if postgres { sql } else { sql.map(|s| s.replace('$', "?")) }
}

fn statements(pool: &Pool) -> [&'static str; 3] {
    use std::sync::LazyLock;
    static PG: LazyLock<[String; 3]> = LazyLock::new(|| build(true));
    static SQLITE: LazyLock<[String; 3]> = LazyLock::new(|| build(false));
    let s = match pool {
        Pool::Postgres(_) => &*PG,
        Pool::Sqlite(_) => &*SQLITE,
    };
    [s[0].as_str(), s[1].as_str(), s[2].as_str()]
}

fn date_of(day: i64) -> Option<NaiveDate> {
    DateTime::from_timestamp(day.checked_mul(86_400)?, 0).map(|t| t.date_naive())
}

impl Store {
    /// Per-day figures for the days from `from` (inclusive) to `to` (exclusive), every day
    /// of the range present (zeros where nothing happened), oldest first.
    pub async fn daily_stats(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        device_id: Option<&str>,
    ) -> Result<Vec<DayStats>, StoreError> {
        let start = Ts(from.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
        let end = Ts(to.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
        let mut days: BTreeMap<NaiveDate, DayStats> = BTreeMap::new();
        let mut day = from;
        while day < to {
            days.insert(day, DayStats { day, ..DayStats::default() });
            day = match day.succ_opt() {
                Some(d) => d,
                None => break,
            };
        }
        let [sessions, messages, clips] = statements(&self.pool);
        with_pool!(self, p => {
            for r in sqlx::query(sessions).bind(start).bind(end).bind(device_id).fetch_all(p).await? {
                if let Some(s) = date_of(r.try_get("day")?).and_then(|d| days.get_mut(&d)) {
                    s.sessions = r.try_get("sessions")?;
                }
            }
            for r in sqlx::query(messages).bind(start).bind(end).bind(device_id).fetch_all(p).await? {
                if let Some(s) = date_of(r.try_get("day")?).and_then(|d| days.get_mut(&d)) {
                    s.turns = r.try_get("turns")?;
                    s.active_devices = r.try_get("active_devices")?;
                }
            }
            for r in sqlx::query(clips).bind(start).bind(end).bind(device_id).fetch_all(p).await? {
                if let Some(s) = date_of(r.try_get("day")?).and_then(|d| days.get_mut(&d)) {
                    s.speech_in_secs = r.try_get::<i64, _>("in_ms")? as f64 / 1000.0;
                    s.speech_out_secs = r.try_get::<i64, _>("out_ms")? as f64 / 1000.0;
                    s.clips = r.try_get("clips")?;
                    s.bytes = r.try_get("bytes")?;
                    s.failed_uploads = r.try_get("failed")?;
                }
            }
        });
        Ok(days.into_values().collect())
    }
}
