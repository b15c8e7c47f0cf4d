//! The camera tool's upload endpoint, `POST /mcp/vision/explain`. A device whose session
//! announced MCP is told in `initialize` where to upload (this endpoint) and with what bearer
//! token (signed, bound to that device and session). When the model calls the device's
//! `self.camera.take_photo`, the device photographs, uploads the JPEG with the model's
//! question as multipart form data, and returns our answer as the tool's result.
//!
//! Here, at the edge, the image is checked (token, size, that it is an image), a vision-capable
//! chat model answers the question, and the image is handed to the device's live session
//! through its command inbox; the session keeps it with the tool call's result: the turn's
//! transaction stages it in the same outbox as the audio clips (`source_type` image), and the
//! upload pool puts it in object storage.
//!
//! The upload must reach the gateway process that holds the device's WebSocket (one process,
//! or a load balancer that routes by device); elsewhere it is refused with 409.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::Instrument;

use crate::auth::Authenticator;
use crate::conversation::VisionImage;
use crate::pipeline::providers::vision::VisionModel;
use crate::session::registry::{SessionCommand, SessionRegistry};

/// Where devices upload.
pub(crate) const PATH: &str = "/mcp/vision/explain";
/// The longest question kept.
const MAX_QUESTION_CHARS: usize = 2000;
/// How long the session may take to take the image (it reads its inbox between messages).
const HAND_OVER: Duration = Duration::from_secs(5);

/// What the vision endpoint uses of the gateway.
#[derive(Clone)]
pub(crate) struct VisionState {
    pub auth: Arc<Authenticator>,
    pub sessions: Arc<SessionRegistry>,
    /// The model answering questions about uploads (with the conversation brain only).
    pub model: Option<VisionModel>,
    /// The largest image accepted.
    pub max_bytes: usize,
}

/// The upload URL handed to a device: on the host (and with the security) of the WebSocket URL
/// the device was given.
pub(crate) fn endpoint_url(ws: &str) -> String {
    let (scheme, rest) = ws.split_once("://").unwrap_or(("ws", ws));
    let authority = rest.split('/').next().unwrap_or(rest);
    let scheme = if scheme.eq_ignore_ascii_case("wss") || scheme.eq_ignore_ascii_case("https") {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{authority}{PATH}")
}

/// The image's type from its first bytes (never from what the client claims).
fn sniff(data: &[u8]) -> Option<(&'static str, &'static str)> {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("jpg", "image/jpeg"))
    } else if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("png", "image/png"))
    } else if data.len() > 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some(("webp", "image/webp"))
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some(("gif", "image/gif"))
    } else {
        None
    }
}

/// The answer the firmware shows to the model: JSON with `success` and the text or the reason.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::warn!(status = status.as_u16(), %message, "vision upload refused");
    (status, Json(json!({ "success": false, "message": message }))).into_response()
}

/// `POST /mcp/vision/explain`.
pub(crate) async fn explain(
    State(app): State<VisionState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::auth::bearer);
    let Some(token) = token else {
        return refuse(StatusCode::UNAUTHORIZED, "a bearer token from MCP initialize is required");
    };
    let (device_id, session_id) = match app.auth.check_vision(&token) {
        Ok(bound) => bound,
        Err(e) => return refuse(e.status(), e.to_string()),
    };
    let claimed = headers.get("device-id").and_then(|v| v.to_str().ok());
    if claimed.is_some_and(|d| !d.trim().eq_ignore_ascii_case(&device_id)) {
        return refuse(StatusCode::FORBIDDEN, "the token belongs to another device");
    }
    let span = tracing::info_span!("vision", device_id = %device_id, session_id = %session_id);
    answer(app, device_id, session_id, multipart).instrument(span).await
}

/// The checked upload: the photo, the model's answer, the image handed to the session.
async fn answer(
    app: VisionState,
    device_id: String,
    session_id: String,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let Some(model) = app.model.as_ref() else {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "no vision model is configured");
    };
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => return refuse(e.status(), format!("expected multipart/form-data: {}", e.body_text())),
    };
    let mut question = None;
    let mut image = None;
    loop {
        match multipart.next_field().await {
            Ok(None) => break,
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let bytes = match field.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        return refuse(
                            e.status(),
                            format!("cannot read the {name:?} part: {}", e.body_text()),
                        );
                    }
                };
                match name.as_str() {
                    "question" => {
                        question =
                            Some(String::from_utf8_lossy(&bytes).chars().take(MAX_QUESTION_CHARS).collect())
                    }
                    "file" => image = Some(bytes),
                    _ => {}
                }
            }
            Err(e) => return refuse(e.status(), format!("malformed upload: {}", e.body_text())),
        }
    }
    let Some(data) = image.filter(|d| !d.is_empty()) else {
        return refuse(StatusCode::BAD_REQUEST, "no image in the \"file\" part");
    };
    if data.len() > app.max_bytes {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the image is larger than {} bytes", app.max_bytes),
        );
    }
    let Some((file_type, mime)) = sniff(&data) else {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the file is not a JPEG, PNG, WebP or GIF image");
    };
    let question: String = question
        .filter(|q: &String| !q.trim().is_empty())
        .unwrap_or_else(|| "What is in this picture?".into());
    let Some(session) = app.sessions.get_session(&device_id, &session_id) else {
        return refuse(
            StatusCode::CONFLICT,
            "the session this token was issued to is not live on this gateway",
        );
    };
    let answer = model.explain(&question, mime, &data).await;
    let (status, body, kept) = match answer {
        Ok(text) => (StatusCode::OK, json!({ "success": true, "result": text }), text),
        Err(e) => {
            tracing::warn!(error = %e, "vision model failed");
            let message = format!("the vision model failed: {e}");
            (
                StatusCode::BAD_GATEWAY,
                json!({ "success": false, "message": message }),
                format!("error: {message}"),
            )
        }
    };
    tracing::info!(bytes = data.len(), file_type, "vision upload answered");
    let (done, taken) = tokio::sync::oneshot::channel();
    let image = VisionImage { data, file_type, question, answer: kept };
    let handed = tokio::time::timeout(HAND_OVER, async {
        session.send(SessionCommand::AttachImage { image, done }).await.ok()?;
        taken.await.ok()?.ok()
    });
    if handed.await.ok().flatten().is_none() {
        // The answer still helps the model; only the kept copy is lost with the session.
        tracing::warn!("the session ended before it took the image; the image is not kept");
    }
    (status, Json(body)).into_response()
}
