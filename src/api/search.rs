//! `GET /api/search`: messages by a piece of their text, newest first, each with its
//! conversation, a highlighted snippet and its clip's URL; `mode=semantic` ranks by meaning
//! (embeddings) instead.

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, audio_url, message_json, params};
use crate::embeddings::{EmbeddingsClient, SemanticError, semantic_search};
use crate::store::model::Page;
use crate::store::model::Role;
use crate::store::search::{MAX_QUERY_CHARS, SearchHit, SearchQuery};

#[derive(Deserialize)]
pub(super) struct SearchParams {
    q: Option<String>,
    device_id: Option<String>,
    role: Option<String>,
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
    mode: Option<String>,
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
    let page = match p.mode.as_deref().filter(|m| !m.is_empty()) {
        None | Some("text") => app.store.search_messages(&query).await?,
        Some("semantic") => semantic(&app, &query).await?,
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "mode must be text or semantic")),
    };
    let expiry = Duration::from_secs(app.settings.storage.presign_expiry_secs);
    let mut items = Vec::with_capacity(page.items.len());
    for hit in page.items {
        let url = match (hit.message.audio_file_id, &hit.clip) {
            (Some(id), Some((key, status))) => Some(audio_url(&app, id, key, status, expiry).await),
            _ => None,
        };
        let mut item = message_json(hit.message, url);
        item["snippet"] = json!(hit.snippet);
        if let Some(score) = hit.score {
            item["score"] = json!(score);
        }
        items.push(item);
    }
    Ok(Json(json!({ "items": items, "next_cursor": page.next_cursor })))
}

/// Search by meaning: the query embedded by the configured provider, candidates ranked by
/// cosine similarity (no cursor: one page of the best matches).
async fn semantic(app: &ApiState, query: &SearchQuery) -> ApiResult<Page<SearchHit>> {
    let Some(client) = EmbeddingsClient::from_settings(&app.settings.embeddings) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "search by meaning needs an embeddings provider (XIAOZHI_EMBEDDINGS_URL)",
        ));
    };
    if query.text.trim().is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "search by meaning needs q"));
    }
    if query.after.is_some() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "search by meaning has one page: no cursor"));
    }
    match semantic_search(&app.store, &client, query).await {
        Ok(page) => Ok(page),
        Err(SemanticError::Store(e)) => Err(e.into()),
        Err(SemanticError::Embed(e)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())),
    }
}
