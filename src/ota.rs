//! The OTA endpoint (`POST /xiaozhi/ota/`): devices call it at boot to learn the WebSocket
//! URL, token and binary protocol version, and to set their clock. The answer never holds an
//! `mqtt` object (a device that sees one switches transport); `firmware` appears only when an
//! update is configured and `activation` only when activation is switched on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use firmware_protocol::ota::{Activation, Firmware, OtaRequest, OtaResponse, ServerTime, WebsocketInfo};
use serde_json::json;

use crate::auth::{Authenticator, Credentials};
use crate::config::Settings;
use crate::devices::{DeviceRegistry, Sighting};
use crate::store::Store;
use crate::store::writer::StoreWriter;

/// What the OTA endpoints use of the gateway.
#[derive(Clone)]
pub(crate) struct OtaState {
    pub settings: Arc<Settings>,
    pub auth: Arc<Authenticator>,
    pub devices: Arc<DeviceRegistry>,
    /// Where devices seen are recorded.
    pub writer: StoreWriter,
    /// Asked whether a device's activation was approved (it outlives restarts).
    pub store: Store,
}

/// The WebSocket path the OTA endpoint points devices at.
pub(crate) const WS_PATH: &str = "/xiaozhi/v1/";

/// `POST /xiaozhi/ota/`: accepts any body (firmware, SDK, py-xiaozhi, browser pages).
pub(crate) async fn check_version(
    State(app): State<OtaState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = OtaRequest::from_body(&body);
    let creds = Credentials::from_request(&headers, &query);
    let device_id =
        creds.device_id.clone().or_else(|| req.mac_address.as_deref().map(str::to_ascii_lowercase));
    let client_id = creds.client_id.clone().or_else(|| req.uuid.as_deref().and_then(crate::auth::client_id));
    let Some(device_id) = device_id else {
        return error(StatusCode::BAD_REQUEST, "Device-Id header (or mac_address in the body) is required");
    };
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let board = req.board_type().or_else(|| user_agent.and_then(|ua| ua.split('/').next()));
    let record = app.devices.seen(
        &device_id,
        Sighting { client_id: client_id.as_deref(), board, firmware_version: req.firmware_version() },
    );
    app.writer.submit(crate::store::model::StoreOp::DeviceSeen(crate::store::model::DeviceSighting {
        device_id: device_id.clone(),
        client_id: client_id.clone(),
        board: board.map(str::to_owned),
        firmware_version: req.firmware_version().map(str::to_owned),
        seen_at: chrono::Utc::now(),
    }));
    tracing::info!(device_id = %device_id, board = board.unwrap_or("-"), firmware = req.firmware_version().unwrap_or("-"), "OTA check");

    let settings = &app.settings;
    let token = app.auth.issue(&device_id, client_id.as_deref().unwrap_or("")).unwrap_or_default();
    if token.is_empty()
        && let Some(why) = settings.auth.lockout()
    {
        tracing::warn!(device_id = %device_id, "OTA gives this device no token, so it will be refused: {why}");
    }
    let url = ws_url(settings.public_url.as_deref(), &headers);
    let firmware = match (&settings.ota.firmware_version, &settings.ota.firmware_url) {
        (Some(version), Some(url)) => Some(Firmware { version: version.clone(), url: url.clone() }),
        _ => None,
    };
    // Approval outlives restarts: the store remembers it when this process does not.
    let activated = record.activated
        || (settings.ota.activation
            && matches!(
                tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    app.store.device_activated(&device_id)
                )
                .await,
                Ok(Ok(true))
            )
            && app.devices.activate(&device_id));
    let activation = if settings.ota.activation && !activated {
        app.devices.activation_code(&device_id).map(|code| Activation {
            message: format!("Activation code {code}: approve it in the admin console"),
            code,
            challenge: Some(device_id.clone()),
            timeout_ms: Some(30_000),
        })
    } else {
        None
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Json(OtaResponse {
        websocket: WebsocketInfo { url, token, version: settings.ota.protocol_version },
        server_time: ServerTime { timestamp: now_ms, timezone_offset: settings.ota.timezone_offset_min },
        firmware,
        activation,
    })
    .into_response()
}

/// `POST /xiaozhi/ota/activate`: 200 once the device is activated, 202 while it waits.
pub(crate) async fn activate(
    State(app): State<OtaState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let creds = Credentials::from_request(&headers, &query);
    let Some(device_id) = creds.device_id else {
        return error(StatusCode::BAD_REQUEST, "Device-Id header is required");
    };
    let device_id = device_id.to_ascii_lowercase();
    let activated = !app.settings.ota.activation
        || app.devices.get(&device_id).is_some_and(|d| d.activated)
        || matches!(app.store.device_activated(&device_id).await, Ok(true));
    if activated {
        (StatusCode::OK, "success").into_response()
    } else {
        (StatusCode::ACCEPTED, "waiting for activation").into_response()
    }
}

/// The WebSocket URL devices are given: the public URL when one is configured, else derived
/// from the request.
pub(crate) fn ws_url(public_url: Option<&str>, headers: &HeaderMap) -> String {
    public_url.map_or_else(|| derived_ws_url(headers), str::to_owned)
}

/// `ws://host/xiaozhi/v1/` from the request's Host (and `X-Forwarded-Proto` behind a proxy).
fn derived_ws_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ']))
        .unwrap_or("localhost:8000");
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}{WS_PATH}", if secure { "wss" } else { "ws" })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
