//! Query parameters the operator views share: page size, cursor, time bounds, and the
//! `400` each gives when malformed.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ApiError, ApiResult};
use crate::store::queries::decode_cursor;

/// `limit`: 1..=max, `default` when absent or empty.
pub(super) fn limit(raw: Option<&str>, default: i64, max: i64) -> ApiResult<i64> {
    match raw {
        None | Some("") => Ok(default),
        Some(l) => l.parse::<i64>().ok().filter(|l| (1..=max).contains(l)).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("limit must be an integer from 1 to {max}"))
        }),
    }
}

/// `cursor`: a previous page's `next_cursor`.
pub(super) fn cursor(raw: Option<&str>) -> ApiResult<Option<(DateTime<Utc>, Uuid)>> {
    match raw.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => {
            decode_cursor(c).map(Some).ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid cursor"))
        }
    }
}

/// A time bound: RFC 3339 (`2026-12-02T08:00:00Z`) or a date (`2026-12-02`, midnight UTC).
pub(super) fn time(raw: Option<&str>, name: &str) -> ApiResult<Option<DateTime<Utc>>> {
    let Some(s) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Some(t) = crate::export::parse_time_bound(s) {
        return Ok(Some(t));
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("{name} must be an RFC 3339 time (2026-12-02T08:00:00Z) or a date (2026-12-02)"),
    ))
}

/// A device id as the store keeps it (lower case), or None when absent or empty.
pub(super) fn device(raw: Option<&str>) -> Option<String> {
    raw.map(str::trim).filter(|d| !d.is_empty()).map(str::to_ascii_lowercase)
}
