//! `GET /api/export` (messages as JSON lines or CSV, streamed: constant memory, any size)
//! and `GET /api/conversations/{session_id}/export` (one conversation as a `.zip`).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, ApiResult, ApiState, params, parse_uuid};
use crate::export::{ExportError, ExportFormat, MessageExport, conversation_zip};
use crate::store::export::ExportFilter;

#[derive(Deserialize)]
pub(super) struct ExportParams {
    device_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

pub(super) async fn export_messages(
    State(app): State<ApiState>,
    Query(p): Query<ExportParams>,
) -> ApiResult<Response> {
    let format = match p.format.as_deref().filter(|f| !f.is_empty()) {
        None => ExportFormat::Jsonl,
        Some(f) => ExportFormat::parse(f)
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "format must be jsonl or csv"))?,
    };
    let filter = ExportFilter {
        device_id: params::device(p.device_id.as_deref()),
        from: params::time(p.from.as_deref(), "from")?,
        to: params::time(p.to.as_deref(), "to")?,
    };
    // Fail before the 200 when the database is away; later failures abort the stream.
    app.store.ping().await?;
    let export = MessageExport::new(app.store.clone(), filter, format);
    let chunks = futures_util::stream::unfold(Some(export), |state| async move {
        let mut export = state?;
        match export.next_chunk().await {
            Ok(Some((bytes, _))) => Some((Ok::<_, ExportError>(bytes), Some(export))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "export aborted");
                Some((Err(e), None))
            }
        }
    });
    let disposition = format!("attachment; filename=\"xiaozhi-messages.{}\"", format.extension());
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

pub(super) async fn export_conversation(
    State(app): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = parse_uuid(&id, "session_id")?;
    let zip = match conversation_zip(&app.store, &app.storage, id).await {
        Ok(Some(zip)) => zip,
        Ok(None) => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such conversation")),
        Err(ExportError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let disposition = format!("attachment; filename=\"conversation-{id}.zip\"");
    Ok((
        [(header::CONTENT_TYPE, "application/zip".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        zip,
    )
        .into_response())
}
