//! `GET /api/search`: messages by a piece of their text, newest first, each with its
//! conversation, a highlighted snippet and its clip's URL.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, audio_url, message_json, params};
use crate::store::model::Role;
use crate::store::search::{MAX_QUERY_CHARS, SearchQuery};

#[derive(Deserialize)]
pub(super) struct SearchParams {
    q: Option<String>,
    device_id: Option<String>,
    role: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

pub(super) async fn search(
    State(app): State<ApiState>,
    Query(p): Query<SearchParams>,
) -> ApiResult<Json<Value>> {
    let text = p.q.unwrap_or_default();
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("q must be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let role = match p.role.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => Some(Role::parse(r).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "role must be user, assistant, system or tool")
        })?),
    };
    let query = SearchQuery {
        text,
        device_id: params::device(p.device_id.as_deref()),
        role,
        from: params::time(p.from.as_deref(), "from")?,
        to: params::time(p.to.as_deref(), "to")?,
        after: params::cursor(p.cursor.as_deref())?,
        limit: params::limit(p.limit.as_deref(), 20, 100)?,
    };
    let page = app.store.search_messages(&query).await?;
    let expiry = Duration::from_secs(app.settings.storage.presign_expiry_secs);
    let mut items = Vec::with_capacity(page.items.len());
    for hit in page.items {
        let url = match (hit.message.audio_file_id, &hit.clip) {
            (Some(id), Some((key, status))) => Some(audio_url(&app, id, key, status, expiry).await),
            _ => None,
        };
        let mut item = message_json(hit.message, url);
        item["snippet"] = json!(hit.snippet);
        items.push(item);
    }
    Ok(Json(json!({ "items": items, "next_cursor": page.next_cursor })))
}
