//! `GET /api/conversations` (filtered by device, time range and status; newest first, cursor)
//! and `GET /api/conversations/{session_id}/messages` (in speaking order, page by page, each
//! message with its clip's URL).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, audio_url, message_json, params, parse_uuid};
use crate::store::listing::SessionFilter;

#[derive(Deserialize)]
pub(super) struct ListParams {
    device_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

pub(super) async fn list(State(app): State<ApiState>, Query(p): Query<ListParams>) -> ApiResult<Json<Value>> {
    let status = match p.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s @ ("active" | "ended")) => Some(s.to_owned()),
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "status must be active or ended")),
    };
    let filter = SessionFilter {
        device_id: params::device(p.device_id.as_deref()),
        from: params::time(p.from.as_deref(), "from")?,
        to: params::time(p.to.as_deref(), "to")?,
        status,
    };
    let limit = params::limit(p.limit.as_deref(), 20, 100)?;
    let page = app.store.list_sessions(&filter, params::cursor(p.cursor.as_deref())?, limit).await?;
    Ok(Json(json!({ "items": page.items, "next_cursor": page.next_cursor })))
}

#[derive(Deserialize)]
pub(super) struct MessagesParams {
    cursor: Option<String>,
    limit: Option<String>,
}

/// A messages cursor: the sequence number the next page starts after.
fn encode_seq(seq: i32) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn decode_seq(cursor: &str) -> Option<i32> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    raw.strip_prefix("seq:")?.parse().ok()
}

pub(super) async fn messages(
    State(app): State<ApiState>,
    Path(id): Path<String>,
    Query(p): Query<MessagesParams>,
) -> ApiResult<Json<Value>> {
    let id = parse_uuid(&id, "session_id")?;
    let after = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            Some(decode_seq(c).ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid cursor"))?)
        }
    };
    let limit = params::limit(p.limit.as_deref(), 100, 500)?;
    if app.store.session(id).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such conversation"));
    }
    let (rows, next) = app.store.session_messages_page(id, after, limit).await?;
    let expiry = Duration::from_secs(app.settings.storage.presign_expiry_secs);
    let mut items = Vec::with_capacity(rows.len());
    for (m, clip) in rows {
        let url = match (m.audio_file_id, clip) {
            (Some(file), Some((key, status))) => Some(audio_url(&app, file, &key, &status, expiry).await),
            _ => None,
        };
        items.push(message_json(m, url));
    }
    Ok(Json(json!({ "items": items, "next_cursor": next.map(encode_seq) })))
}
