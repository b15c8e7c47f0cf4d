//! Devices as the operator sees them: what the store knows of each (first and last seen,
//! board, firmware, activation) with its totals (sessions, turns, seconds of audio in and
//! out), newest-seen first with cursor pagination.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::model::Page;
use super::queries::leak;
use super::{Store, StoreError, Ts, with_pool};

/// One device and its totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSummary {
    pub device_id: String,
    pub client_id: Option<String>,
    pub board: Option<String>,
    pub firmware_version: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub activated: bool,
    /// Conversations (WebSocket sessions) kept.
    pub sessions: i64,
    /// Turns: what the user said (one user message each).
    pub turns: i64,
    /// Seconds of the device's microphone audio kept (user clips).
    pub audio_in_secs: f64,
    /// Seconds of synthesized speech kept (reply clips).
    pub audio_out_secs: f64,
}

const DEVICE_COLUMNS: &str = "d.device_id, d.client_id, d.board, d.firmware_version, d.first_seen, d.last_seen, \
     d.activated, \
     (SELECT COUNT(*) FROM conversation_sessions s WHERE s.device_id = d.device_id) AS sessions, \
     (SELECT COUNT(*) FROM conversation_messages m WHERE m.device_id = d.device_id AND m.role = 'user') AS turns, \
     (SELECT COALESCE(SUM(a.duration_ms), 0) FROM audio_files a \
        WHERE a.device_id = d.device_id AND a.source_type = 'user') AS audio_in_ms, \
     (SELECT COALESCE(SUM(a.duration_ms), 0) FROM audio_files a \
        WHERE a.device_id = d.device_id AND a.source_type = 'tts') AS audio_out_ms";

macro_rules! device_from_row {
    ($r:expr) => {{
        let r = $r;
        DeviceSummary {
            device_id: r.try_get("device_id")?,
            client_id: r.try_get("client_id")?,
            board: r.try_get("board")?,
            firmware_version: r.try_get("firmware_version")?,
            first_seen: r.try_get::<Ts, _>("first_seen")?.0,
            last_seen: r.try_get::<Ts, _>("last_seen")?.0,
            activated: r.try_get("activated")?,
            sessions: r.try_get("sessions")?,
            turns: r.try_get("turns")?,
            audio_in_secs: r.try_get::<i64, _>("audio_in_ms")? as f64 / 1000.0,
            audio_out_secs: r.try_get::<i64, _>("audio_out_ms")? as f64 / 1000.0,
        }
    }};
}

/// Where a page of devices continues: after (last_seen, device_id).
fn encode_device_cursor(last_seen: DateTime<Utc>, device_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{device_id}", last_seen.timestamp_micros()))
}

/// Decodes a device cursor; a malformed one is the caller's error.
pub fn decode_device_cursor(cursor: &str) -> Option<(DateTime<Utc>, String)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (micros, id) = raw.split_once(':')?;
    Some((DateTime::from_timestamp_micros(micros.parse().ok()?)?, id.to_owned()))
}

impl Store {
    /// Devices, most recently seen first; `seen_since` keeps those seen at or after it.
    pub async fn devices(
        &self,
        seen_since: Option<DateTime<Utc>>,
        after: Option<(DateTime<Utc>, String)>,
        limit: i64,
    ) -> Result<Page<DeviceSummary>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d \
                 WHERE ($1 IS NULL OR d.last_seen >= $1) AND ($2 IS NULL OR (d.last_seen, d.device_id) < ($2, $3)) \
                 ORDER BY d.last_seen DESC, d.device_id DESC LIMIT $4"
            )
        });
        let (after_ts, after_id) = match after {
            Some((t, id)) => (Some(Ts(t)), Some(id)),
            None => (None, None),
        };
        let limit = limit.max(1);
        let mut items = with_pool!(self, p => {
            let rows = sqlx::query(self.sql(leak(&SQL)))
                .bind(seen_since.map(Ts))
                .bind(after_ts)
                .bind(after_id)
                .bind(limit + 1)
                .fetch_all(p)
                .await?;
            rows.iter().map(|r| Ok(device_from_row!(r))).collect::<Result<Vec<_>, StoreError>>()?
        });
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|d| encode_device_cursor(d.last_seen, &d.device_id))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// One device and its totals.
    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceSummary>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.device_id = $1")
        });
        Ok(with_pool!(self, p => {
            match sqlx::query(self.sql(leak(&SQL))).bind(device_id).fetch_optional(p).await? {
                Some(r) => Some(device_from_row!(&r)),
                None => None,
            }
        }))
    }
}
