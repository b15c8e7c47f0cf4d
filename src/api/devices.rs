//! `GET /api/devices`, `GET /api/devices/{device_id}` and `GET /api/stats`: what the store
//! knows of each device (with its totals and whether it is connected now) and activity per
//! day.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{Duration, NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, params};
use crate::store::devices::{DeviceSummary, decode_device_cursor};
use crate::store::stats::MAX_DAYS;

/// A device as the API shows it: the stored summary and the live session, if any.
fn device_json(app: &ApiState, d: DeviceSummary) -> Value {
    let live = app.sessions.get(&d.device_id).map(|e| e.session_id);
    let mut v = serde_json::to_value(d).unwrap_or_default();
    v["online"] = json!(live.is_some());
    v["live_session_id"] = json!(live);
    v
}

#[derive(Deserialize)]
pub(super) struct DevicesParams {
    seen_since: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

pub(super) async fn list_devices(
    State(app): State<ApiState>,
    Query(p): Query<DevicesParams>,
) -> ApiResult<Json<Value>> {
    let limit = params::limit(p.limit.as_deref(), 20, 100)?;
    let seen_since = params::time(p.seen_since.as_deref(), "seen_since")?;
    let after = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            decode_device_cursor(c)
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid cursor"))?,
        ),
    };
    let page = app.store.devices(seen_since, after, limit).await?;
    let items: Vec<Value> = page.items.into_iter().map(|d| device_json(&app, d)).collect();
    Ok(Json(json!({ "items": items, "next_cursor": page.next_cursor })))
}

pub(super) async fn get_device(
    State(app): State<ApiState>,
    Path(device): Path<String>,
) -> ApiResult<Json<Value>> {
    let device = device.to_ascii_lowercase();
    match app.store.device(&device).await? {
        Some(d) => Ok(Json(device_json(&app, d))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such device")),
    }
}

#[derive(Deserialize)]
pub(super) struct StatsParams {
    from: Option<String>,
    to: Option<String>,
    device_id: Option<String>,
    bucket: Option<String>,
}

/// Days from `from` (inclusive, default 29 days before `to`'s day) to `to` (exclusive,
/// default the end of today, UTC).
pub(super) async fn stats(
    State(app): State<ApiState>,
    Query(p): Query<StatsParams>,
) -> ApiResult<Json<Value>> {
    if !matches!(p.bucket.as_deref(), None | Some("") | Some("day")) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bucket must be day"));
    }
    let to: NaiveDate = match params::time(p.to.as_deref(), "to")? {
        Some(t) => t.date_naive(),
        None => Utc::now().date_naive() + Duration::days(1),
    };
    let from: NaiveDate = match params::time(p.from.as_deref(), "from")? {
        Some(t) => t.date_naive(),
        None => to - Duration::days(30),
    };
    if from > to || (to - from).num_days() > MAX_DAYS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("from must not be after to, and the range at most {MAX_DAYS} days"),
        ));
    }
    let device = params::device(p.device_id.as_deref());
    let days = app.store.daily_stats(from, to, device.as_deref()).await?;
    Ok(Json(json!({ "bucket": "day", "from": from, "to": to, "device_id": device, "days": days })))
}
