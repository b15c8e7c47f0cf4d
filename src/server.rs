//! The one HTTP listener: the WebSocket upgrade on any path a device is configured with, the
//! OTA endpoints, the camera upload, the admin API, and health. Authentication, the connection
//! limit and the protocol version header are checked before the 101, so a refused device sees
//! an HTTP status at once. What the routes share is assembled by [`crate::startup`].
//! Per-address and admission limits ([`crate::limits`]) answer 429 or 503 with `Retry-After`;
//! `http` is the connection loop with the header and body deadlines.

mod http;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRef, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use firmware_protocol::ProtocolVersion;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{Any, CorsLayer};
use tracing::{info, warn};

use crate::api::ApiState;
use crate::auth::{Authenticator, Credentials};
use crate::config::Settings;
use crate::devices::DeviceRegistry;
use crate::limits::{Limits, Refused};
use crate::ota::{self, OtaState};
use crate::pipeline::providers::vision::VisionModel;
use crate::session::registry::SessionRegistry;
use crate::session::{self, SessionContext};
use crate::store::Store;
use crate::store::writer::StoreWriter;
use crate::telemetry::metrics::{Handshake, Metrics};
use crate::uploads::pool::UploadPool;
use crate::uploads::storage::ClipStorage;
use crate::vision::{self, VisionState};

/// What the routes share: the parts [`crate::startup`] assembled. Each handler takes only its
/// own slice of it (`OtaState`, `ApiState`, `VisionState`, [`SessionContext`]).
pub struct AppState {
    pub settings: Arc<Settings>,
    pub auth: Arc<Authenticator>,
    pub devices: Arc<DeviceRegistry>,
    pub sessions: Arc<SessionRegistry>,
    /// What every session gets.
    pub session: Arc<SessionContext>,
    /// One permit per live device session: the connection limit.
    pub connections: Arc<Semaphore>,
    /// Cancelled when the gateway starts draining: not ready, no new sessions; sessions
    /// finish the turn in progress and close with 1001.
    pub draining: CancellationToken,
    /// Cancelled when the process shuts down for good; sessions close with 1001 at once.
    pub shutdown: CancellationToken,
    /// The conversation store (queries).
    pub store: Store,
    /// Where sessions hand their turns (writes, off the hot path).
    pub writer: StoreWriter,
    /// Object storage for clips.
    pub storage: ClipStorage,
    /// The background upload pool.
    pub uploads: UploadPool,
    pub metrics: Arc<Metrics>,
    /// The vision model answering camera uploads (with the conversation brain only).
    pub vision: Option<VisionModel>,
    /// Rate limits per address and device, and the admission pace of new sessions.
    pub limits: Arc<Limits>,
}

impl FromRef<Arc<AppState>> for OtaState {
    fn from_ref(app: &Arc<AppState>) -> Self {
        OtaState {
            settings: app.settings.clone(),
            auth: app.auth.clone(),
            devices: app.devices.clone(),
            writer: app.writer.clone(),
            store: app.store.clone(),
        }
    }
}

impl FromRef<Arc<AppState>> for VisionState {
    fn from_ref(app: &Arc<AppState>) -> Self {
        VisionState {
            auth: app.auth.clone(),
            sessions: app.sessions.clone(),
            model: app.vision.clone(),
            max_bytes: app.settings.brain.vision_max_bytes,
        }
    }
}

impl AppState {
    /// The admin API's slice.
    fn api(&self) -> ApiState {
        ApiState {
            settings: self.settings.clone(),
            store: self.store.clone(),
            writer: self.writer.clone(),
            storage: self.storage.clone(),
            uploads: self.uploads.clone(),
            devices: self.devices.clone(),
            sessions: self.sessions.clone(),
        }
    }
}

/// The application's routes.
fn router(app: Arc<AppState>) -> Router {
    // Browser test pages call OTA cross-origin with custom headers.
    let cors =
        CorsLayer::new().allow_origin(Any).allow_methods([Method::POST, Method::OPTIONS]).allow_headers(Any);
    let ota_routes = Router::new()
        .route("/xiaozhi/ota/", post(ota::check_version))
        .route("/xiaozhi/ota", post(ota::check_version))
        .route("/xiaozhi/ota/activate", post(ota::activate))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), ota_limit))
        .layer(cors);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readiness))
        .merge(ota_routes)
        .route(
            vision::PATH,
            post(vision::explain)
                .layer(DefaultBodyLimit::max(app.settings.brain.vision_max_bytes.saturating_add(64 << 10))),
        )
        .merge(crate::api::router(app.api()))
        .merge(crate::console::router())
        .fallback(upgrade)
        .with_state(app)
}

/// A bound listener, ready to serve.
pub(crate) struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    app: Arc<AppState>,
}

impl Server {
    /// Binds the configured address (port 0 picks a free one).
    pub(crate) async fn bind(app: Arc<AppState>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(app.settings.listen).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr, app })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the shutdown token is cancelled.
    pub(crate) async fn serve(self) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let shutdown = self.app.shutdown.clone();
        info!(addr = %self.addr, "listening");
        // Small messages (subtitles, 60 ms frames) must not wait for Nagle's algorithm; a peer
        // that vanished without a FIN is found by TCP keepalive, not by pings (firmware that
        // gets WebSocket pings it does not expect may drop the connection).
        let keepalive = self.app.settings.session.tcp_keepalive().map(|(idle, interval, probes)| {
            socket2::TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(probes)
        });
        let listener = self.listener.tap_io(move |tcp| {
            let _ = tcp.set_nodelay(true);
            if let Some(k) = &keepalive
                && let Err(e) = socket2::SockRef::from(&*tcp).set_tcp_keepalive(k)
            {
                tracing::debug!(error = %e, "TCP keepalive not set");
            }
        });
        let limits = &self.app.settings.limits;
        let deadlines = http::Deadlines {
            header: std::time::Duration::from_secs(limits.header_timeout_secs),
            body: std::time::Duration::from_secs(limits.body_timeout_secs),
        };
        http::serve(listener, router(self.app), deadlines, shutdown).await;
        Ok(())
    }
}

/// Any path: a WebSocket upgrade becomes a device session; anything else is a 404 (426 on the
/// conventional WebSocket path, to tell a curious browser what lives there).
async fn upgrade(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) if uri.path().starts_with(ota::WS_PATH.trim_end_matches('/')) => {
            return (
                StatusCode::UPGRADE_REQUIRED,
                "xiaozhi WebSocket endpoint: connect with a WebSocket client\n",
            )
                .into_response();
        }
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    if let Err(refused) = app.limits.upgrade(peer.ip()) {
        warn!(peer = %peer.ip(), "too many WebSocket upgrades from one address; refusing");
        return retry_later(StatusCode::TOO_MANY_REQUESTS, refused, "too many connections from this address");
    }
    let creds = Credentials::from_request(&headers, &query);
    let Some(device_id) = creds.device_id.clone() else {
        warn!(path = uri.path(), "upgrade without a device id refused");
        app.metrics.handshake(Handshake::BadRequest);
        return (StatusCode::BAD_REQUEST, "Device-Id header (or device-id query parameter) is required\n")
            .into_response();
    };
    if let Err(e) = app.auth.check(&creds) {
        warn!(device_id = %device_id, reason = %e, "connection refused");
        app.metrics.handshake(Handshake::AuthRefused);
        return (e.status(), format!("{e}\n")).into_response();
    }
    let header_version = match headers.get("protocol-version").map(|v| v.to_str().map(str::trim)) {
        None => None,
        Some(Ok(v)) => match v
            .parse::<u64>()
            .map_err(|_| ())
            .and_then(|n| ProtocolVersion::from_number(n).map_err(|_| ()))
        {
            Ok(v) => Some(v),
            Err(()) => {
                app.metrics.handshake(Handshake::BadRequest);
                return (StatusCode::BAD_REQUEST, format!("Protocol-Version {v:?} is not 1, 2 or 3\n"))
                    .into_response();
            }
        },
        Some(Err(_)) => {
            app.metrics.handshake(Handshake::BadRequest);
            return (StatusCode::BAD_REQUEST, "Protocol-Version is not text\n").into_response();
        }
    };
    if app.draining.is_cancelled() {
        app.metrics.handshake(Handshake::Draining);
        return (StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down\n").into_response();
    }
    if let Err(refused) = app.limits.admit() {
        return retry_later(StatusCode::SERVICE_UNAVAILABLE, refused, "too many new sessions at once");
    }
    let Ok(permit) = app.connections.clone().try_acquire_owned() else {
        warn!(device_id = %device_id, "connection limit reached; refusing");
        app.metrics.handshake(Handshake::LimitReached);
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached\n").into_response();
    };
    let max = app.settings.session.max_message_bytes;
    let conn = session::Connection {
        ctx: app.session.clone(),
        device_id,
        client_id: creds.client_id,
        session_id: uuid::Uuid::new_v4().to_string(),
        header_version,
        permit,
        vision_url: app
            .vision
            .is_some()
            .then(|| vision::endpoint_url(&ota::ws_url(app.settings.public_url.as_deref(), &headers))),
    };
    // Small I/O buffers: an idle session should cost a few KiB, not tungstenite's 128 KiB
    // default read buffer. Messages larger than the buffer still assemble (up to `max`).
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_failed_upgrade(|e| warn!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| session::run(socket, conn))
}

/// A refusal with `Retry-After` (whole seconds) and a line saying why.
fn retry_later(status: StatusCode, refused: Refused, why: &str) -> Response {
    let secs = refused.retry_after_secs();
    (status, [(axum::http::header::RETRY_AFTER, secs.to_string())], format!("{why}; retry in {secs} s\n"))
        .into_response()
}

/// The OTA routes' per-address limit.
async fn ota_limit(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    match app.limits.ota(peer.ip()) {
        Ok(()) => next.run(req).await,
        Err(refused) => {
            warn!(peer = %peer.ip(), "too many OTA calls from one address; refusing");
            retry_later(StatusCode::TOO_MANY_REQUESTS, refused, "too many OTA calls from this address")
        }
    }
}

/// `GET /metrics`: Prometheus text format. Store, upload and process figures are refreshed here.
async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &app.metrics;
    let w = app.writer.stats();
    m.store_queue.set(w.queued.load(Relaxed) as f64);
    m.store_spilled.set(w.spilled.load(Relaxed) as f64);
    m.store_committed.absolute(w.committed_ops.load(Relaxed));
    m.store_dead_lettered.set(w.dead_lettered.load(Relaxed) as f64);
    let u = app.uploads.stats();
    m.uploads.absolute(u.uploaded.load(Relaxed));
    m.upload_failures.absolute(u.attempts_failed.load(Relaxed));
    if let Ok(Ok(b)) =
        tokio::time::timeout(std::time::Duration::from_secs(1), app.store.upload_backlog()).await
    {
        m.upload_pending.set(b.pending as f64);
        m.upload_failed.set(b.failed as f64);
        let age = b
            .oldest_pending
            .map_or(0.0, |t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0);
        m.upload_oldest_age.set(age);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
}

/// `GET /readyz`: each component's state, and 503 when the gateway should not get new
/// devices (database down or not migrated, a backlog over its threshold, draining).
async fn readiness(State(app): State<Arc<AppState>>) -> Response {
    use serde_json::json;
    use std::sync::atomic::Ordering::Relaxed;
    let patience = std::time::Duration::from_secs(2);
    let expected = crate::store::schema_version();
    let database = match tokio::time::timeout(patience, app.store.applied_version()).await {
        Ok(Ok(v)) if v == expected => json!({ "ok": true, "schema_version": v }),
        Ok(Ok(v)) => {
            json!({ "ok": false, "schema_version": v, "error": format!("schema at {v}, expected {expected}") })
        }
        Ok(Err(e)) => json!({ "ok": false, "error": e.to_string() }),
        Err(_) => json!({ "ok": false, "error": "no answer within 2 s" }),
    };
    let storage = match tokio::time::timeout(patience, app.storage.ping()).await {
        Ok(Ok(())) => json!({ "ok": true, "bucket": app.storage.bucket() }),
        Ok(Err(e)) => json!({ "ok": false, "bucket": app.storage.bucket(), "error": e.to_string() }),
        Err(_) => json!({ "ok": false, "bucket": app.storage.bucket(), "error": "no answer within 2 s" }),
    };
    let w = app.writer.stats();
    let store_backlog = w.backlog();
    let ops = &app.settings.ops;
    let backlog = match tokio::time::timeout(patience, app.store.upload_backlog()).await {
        Ok(Ok(b)) => Some(b),
        _ => None,
    };
    let upload_pending = backlog.map_or(0, |b| b.pending);
    let draining = app.draining.is_cancelled();
    let ready = !draining
        && database["ok"] == true
        && store_backlog <= ops.ready_max_store_backlog
        && upload_pending <= ops.ready_max_upload_backlog;
    let body = json!({
        "ready": ready,
        "draining": draining,
        "database": database,
        "object_storage": storage,
        "store_writer": {
            "queued": w.queued.load(Relaxed),
            "spilled": w.spilled.load(Relaxed),
            "failing": w.failing.load(Relaxed),
            "threshold": ops.ready_max_store_backlog,
        },
        "uploads": {
            "pending": upload_pending,
            "failed": backlog.map_or(0, |b| b.failed),
            "oldest_pending_age_secs": backlog
                .and_then(|b| b.oldest_pending)
                .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0),
            "threshold": ops.ready_max_upload_backlog,
        },
        "sessions": app.sessions.len(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}
