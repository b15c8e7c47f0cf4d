//! The admin HTTP API under `/api`: conversations (list, read, delete), clips (presigned
//! redirect or bytes), a device's system prompt, forgetting a device, and server-initiated
//! speech to an online device. Behind `Authorization: Bearer $XIAOZHI_ADMIN_TOKEN`; when no
//! token is configured the whole API answers 404. The OpenAPI document is served at
//! `/api/openapi.json` and the tests check the live API against it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::config::Settings;
use crate::devices::DeviceRegistry;
use crate::session::registry::{CommandError, SessionCommand, SessionRegistry};
use crate::store::Store;
use crate::store::StoreError;
use crate::store::model::StoredMessage;
use crate::store::writer::StoreWriter;
use crate::uploads::pool::UploadPool;
use crate::uploads::storage::ClipStorage;

mod conversations;
mod devices;
mod export;
mod params;
mod search;

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// An error as the API reports it: a status and `{"error": "..."}`.
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "admin API: database error");
        let status = if e.is_transient() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, format!("database: {e}"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// What the admin API uses of the gateway.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub settings: Arc<Settings>,
    pub store: Store,
    /// Waited on (flushed) before reads that must see a session's last turn.
    pub writer: StoreWriter,
    pub storage: ClipStorage,
    pub uploads: UploadPool,
    pub devices: Arc<DeviceRegistry>,
    pub sessions: Arc<SessionRegistry>,
}

/// The `/api` routes.
pub(crate) fn router<S>(api: ApiState) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/api/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/api/conversations", get(conversations::list))
        .route("/api/conversations/{session_id}", get(get_conversation).delete(delete_conversation))
        .route("/api/conversations/{session_id}/messages", get(conversations::messages))
        .route("/api/audio/{file_id}", get(audio))
        .route("/api/search", get(search::search))
        .route("/api/devices", get(devices::list_devices))
        .route("/api/devices/{device_id}", get(devices::get_device))
        .route("/api/stats", get(devices::stats))
        .route("/api/export", get(export::export_messages))
        .route("/api/conversations/{session_id}/export", get(export::export_conversation))
        .route("/api/devices/{device_id}/system-prompt", get(get_prompt).put(put_prompt))
        .route("/api/devices/{device_id}/data", delete(forget_device))
        .route("/api/devices/{device_id}/say", post(say))
        .route("/api/devices/{device_id}/activate", post(activate))
        .layer(middleware::from_fn_with_state(api.clone(), require_admin))
        .with_state(api)
}

/// 404 when the API is disabled, 401 without the right bearer token (compared in constant
/// time over digests, so its length does not leak either).
async fn require_admin(
    State(app): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let Some(expected) = app.settings.admin.token.as_deref() else {
        return ApiError::new(StatusCode::NOT_FOUND, "the admin API is disabled (set XIAOZHI_ADMIN_TOKEN)")
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        let (a, b): ([u8; 32], [u8; 32]) = (Sha256::digest(g).into(), Sha256::digest(expected).into());
        bool::from(a.ct_eq(&b))
    });
    if !ok {
        let mut resp =
            ApiError::new(StatusCode::UNAUTHORIZED, "a valid admin bearer token is required").into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
        return resp;
    }
    next.run(req).await
}

fn parse_uuid(s: &str, what: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("{what} {s:?} is not a UUID")))
}

async fn get_conversation(State(app): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_uuid(&id, "session_id")?;
    match app.store.session(id).await? {
        Some(s) => Ok(Json(serde_json::to_value(s).unwrap_or_default())),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such conversation")),
    }
}

/// Closes the device's live session (if any, or only the one with `session_id`) and waits until
/// everything it handed to the store is written, so a deletion that follows is not undone by a
/// turn still in the queue.
async fn settle(app: &ApiState, device: Option<&str>, session_id: Option<Uuid>) {
    let session_id = session_id.map(|id| id.to_string());
    let live = app.sessions.matching(device, session_id.as_deref());
    for entry in &live {
        let _ = entry.try_send(SessionCommand::Close);
    }
    let ended = futures_util::future::join_all(live.iter().map(|e| e.ended()));
    let _ = tokio::time::timeout(Duration::from_secs(2), ended).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), app.writer.flush()).await;
}

async fn delete_conversation(State(app): State<ApiState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id = parse_uuid(&id, "session_id")?;
    settle(&app, None, Some(id)).await;
    if app.store.delete_session(id).await? {
        app.uploads.wake();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "no such conversation"))
    }
}

fn message_json(m: StoredMessage, audio_url: Option<String>) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["audio_url"] = json!(audio_url);
    v
}

/// A presigned URL for an uploaded clip in S3; otherwise the gateway's own `/api/audio/{id}`.
async fn audio_url(app: &ApiState, file_id: Uuid, key: &str, status: &str, expiry: Duration) -> String {
    if status == "uploaded"
        && let Ok(Some(url)) = app.storage.presigned_get(key, expiry).await
    {
        return url;
    }
    format!("/api/audio/{file_id}")
}

async fn audio(State(app): State<ApiState>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_uuid(&id, "file_id")?;
    let clip =
        app.store.clip(id).await?.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such clip"))?;
    let content_type = crate::uploads::storage::content_type(&clip.file_type);
    if clip.upload_status == "uploaded" {
        let expiry = Duration::from_secs(app.settings.storage.presign_expiry_secs);
        if let Ok(Some(url)) = app.storage.presigned_get(&clip.object_key, expiry).await {
            return Ok(Redirect::temporary(&url).into_response());
        }
        let bytes = app.storage.get(&clip.object_key).await.map_err(|e| {
            tracing::warn!(error = %e, key = %clip.object_key, "clip missing from object storage");
            ApiError::new(StatusCode::BAD_GATEWAY, format!("object storage: {e}"))
        })?;
        return Ok(([(header::CONTENT_TYPE, content_type)], Body::from(bytes)).into_response());
    }
    // Not uploaded yet (or given up): the bytes are still staged in the database.
    match app.store.staged_bytes(id).await? {
        Some(bytes) => Ok(([(header::CONTENT_TYPE, content_type)], Body::from(bytes)).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "the clip's bytes are gone")),
    }
}

async fn get_prompt(State(app): State<ApiState>, Path(device): Path<String>) -> ApiResult<Json<Value>> {
    let device = device.to_ascii_lowercase();
    match app.store.system_prompt(&device).await? {
        Some(prompt) => Ok(Json(json!({ "device_id": device, "prompt": prompt }))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no system prompt for this device")),
    }
}

/// A JSON request body, or 400 with what was wrong with it.
fn json_body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> ApiResult<T> {
    body.map(|Json(b)| b).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// Longest system prompt (characters, as the OpenAPI document's `maxLength` counts).
const MAX_PROMPT_CHARS: usize = 32 * 1024;
/// Longest text for server-initiated speech.
const MAX_SAY_CHARS: usize = 2000;

#[derive(Deserialize)]
struct PromptBody {
    prompt: String,
}

async fn put_prompt(
    State(app): State<ApiState>,
    Path(device): Path<String>,
    body: Result<Json<PromptBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let body = json_body(body)?;
    if body.prompt.trim().is_empty() || body.prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("prompt must be 1 to {MAX_PROMPT_CHARS} characters, not only spaces"),
        ));
    }
    let device = device.to_ascii_lowercase();
    app.store.set_system_prompt(&device, &body.prompt).await?;
    Ok(Json(json!({ "device_id": device, "prompt": body.prompt })))
}

async fn forget_device(State(app): State<ApiState>, Path(device): Path<String>) -> ApiResult<Json<Value>> {
    let device = device.to_ascii_lowercase();
    settle(&app, Some(&device), None).await;
    let sessions = app.store.delete_device_data(&device).await?;
    app.uploads.wake();
    Ok(Json(json!({ "device_id": device, "sessions_deleted": sessions })))
}

#[derive(Deserialize)]
struct ActivateBody {
    /// The code the device shows (from its OTA answer); proves the operator has the device.
    code: String,
}

/// Approves a device's activation with the code it displays; persisted, so a restart does
/// not ask again.
async fn activate(
    State(app): State<ApiState>,
    Path(device): Path<String>,
    body: Result<Json<ActivateBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let body = json_body(body)?;
    let device = device.to_ascii_lowercase();
    let ok = json!({ "device_id": device, "activated": true });
    if !app.settings.ota.activation {
        // Every device counts as activated (as /xiaozhi/ota/activate also answers).
        return Ok(Json(ok));
    }
    // The OTA call that showed the code recorded the device; make sure that write landed.
    app.writer.flush().await;
    if app.devices.get(&device).is_some_and(|d| d.activated) || app.store.device_activated(&device).await? {
        return Ok(Json(ok));
    }
    let Some(pending) = app.devices.get(&device).and_then(|d| d.activation_code) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no activation is pending for this device"));
    };
    let matches: bool = subtle::ConstantTimeEq::ct_eq(pending.as_bytes(), body.code.trim().as_bytes()).into();
    if !matches {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "that is not the code the device shows"));
    }
    if !app.store.set_device_activated(&device).await? {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the device is not stored yet; try again",
        ));
    }
    app.devices.activate(&device);
    tracing::info!(device_id = %device, "device activated by an operator");
    Ok(Json(ok))
}

#[derive(Deserialize)]
struct SayBody {
    text: String,
}

async fn say(
    State(app): State<ApiState>,
    Path(device): Path<String>,
    body: Result<Json<SayBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = json_body(body)?;
    let text = body.text.trim().to_owned();
    if text.is_empty() || text.chars().count() > MAX_SAY_CHARS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("text must be 1 to {MAX_SAY_CHARS} characters, not only spaces"),
        ));
    }
    let device = device.to_ascii_lowercase();
    let entry = app
        .sessions
        .get(&device)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the device is not connected"))?;
    let (done, result) = tokio::sync::oneshot::channel();
    let gone = || ApiError::new(StatusCode::NOT_FOUND, "the device disconnected");
    let busy = || ApiError::new(StatusCode::CONFLICT, "the device's session is not answering");
    tokio::time::timeout(Duration::from_secs(5), entry.send(SessionCommand::Say { text, done }))
        .await
        .map_err(|_| busy())?
        .map_err(|_| gone())?;
    match tokio::time::timeout(Duration::from_secs(5), result)
        .await
        .map_err(|_| busy())?
        .map_err(|_| gone())?
    {
        Ok(()) => {
            Ok((StatusCode::ACCEPTED, Json(json!({ "device_id": device, "session_id": entry.session_id }))))
        }
        Err(CommandError::Busy) => {
            Err(ApiError::new(StatusCode::CONFLICT, "the device is in the middle of a turn"))
        }
        Err(CommandError::Gone) => Err(gone()),
    }
}
