//! Assembly apart from serving: [`Application::build`] turns [`Settings`] into a running
//! gateway's parts (the store and its writer, object storage, the upload pool, retention, the
//! brain, the session registry) and binds the listener (port 0 picks a free one, so tests start
//! real instances); [`Application::run_until_stopped`] serves until the shutdown token is
//! cancelled, waits for the sessions to end and hands what they left to the database.
//! [`drain`] is the graceful half of a stop (SIGTERM). `announce` logs what it runs.

mod announce;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::conversation::Pipeline;
use crate::devices::DeviceRegistry;
use crate::limits::Limits;
pub use crate::server::AppState;
use crate::server::Server;
use crate::session::SessionContext;
use crate::session::registry::SessionRegistry;
use crate::store::StoreError;
use crate::store::writer::{StoreWriter, WriterConfig};
use crate::telemetry::metrics::Metrics;
use crate::uploads::pool::{PoolConfig, UploadPool};
use crate::uploads::storage::{ClipStorage, StorageError};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("conversation store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("conversation brain: {0}")]
    Brain(#[from] crate::pipeline::providers::ProviderError),
    #[error("cannot create {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// The largest batch the store writer commits at once on SQLite.
const SQLITE_MAX_BATCH: usize = 64;
/// How long a stop waits for sessions to close once they were told to.
const SESSIONS_CLOSE_PATIENCE: Duration = Duration::from_secs(2);
/// How long a stop waits for the store writer to commit what sessions handed it.
const FLUSH_PATIENCE: Duration = Duration::from_secs(15);

/// A gateway, assembled and bound, not yet serving.
pub struct Application {
    server: Server,
    state: Arc<AppState>,
}

impl Application {
    /// Assembles the gateway with the brain the settings describe: the providers' pipeline
    /// when `XIAOZHI_ASR_URL` and `XIAOZHI_LLM_URL` are set, the echo brain otherwise.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        Self::assemble(settings, None).await
    }

    /// Assembles the gateway with the given brain.
    pub async fn build_with(settings: Settings, pipeline: Arc<dyn Pipeline>) -> Result<Self, StartError> {
        Self::assemble(settings, Some(pipeline)).await
    }

    async fn assemble(settings: Settings, pipeline: Option<Arc<dyn Pipeline>>) -> Result<Self, StartError> {
        let state = assemble_state(settings, pipeline).await?;
        let addr = state.settings.listen;
        let server =
            Server::bind(state.clone()).await.map_err(|source| StartError::Listen { addr, source })?;
        Ok(Self { server, state })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The assembled parts (tests look inside).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until the shutdown token is cancelled, then waits (bounded) for the sessions to
    /// end and for the store writer to commit what they handed it. With the database away at
    /// exit, what is still in memory is spilled to disk for the next start.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self { server, state } = self;
        server.serve().await?;
        // The listener is closed; sessions were told to close.
        let _ = tokio::time::timeout(SESSIONS_CLOSE_PATIENCE, state.sessions.all_ended()).await;
        if tokio::time::timeout(FLUSH_PATIENCE, state.writer.flush()).await.is_err() {
            state.writer.abandon();
            let _ = tokio::time::timeout(Duration::from_secs(20), state.writer.flush()).await;
            tracing::error!(
                spilled = state.writer.stats().spilled.load(std::sync::atomic::Ordering::Relaxed),
                "database unreachable at exit; unwritten turns are kept in the spill directory for the next start"
            );
        }
        info!("stopped");
        Ok(())
    }
}

/// The graceful stop: not ready and no new sessions at once; sessions finish the turn in
/// progress (up to `deadline`) and close; then the process shuts down.
pub async fn drain(state: &AppState, deadline: Duration) {
    info!(sessions = state.sessions.len(), deadline_secs = deadline.as_secs(), "draining");
    state.draining.cancel();
    state.metrics.draining.set(1.0);
    if tokio::time::timeout(deadline, state.sessions.all_ended()).await.is_err() {
        warn!(sessions = state.sessions.len(), "drain deadline passed; closing the remaining sessions");
    }
    state.shutdown.cancel();
}

/// Starts every background part and assembles what the routes share.
async fn assemble_state(
    settings: Settings,
    pipeline: Option<Arc<dyn Pipeline>>,
) -> Result<Arc<AppState>, StartError> {
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|source| StartError::DataDir { path: settings.data_dir.clone(), source })?;
    crate::install_crypto_provider();
    announce::announce(&settings, pipeline.is_some());
    let store = crate::store::open(&settings).await?;
    let storage = ClipStorage::open(&settings).await?;
    let wake_uploads = Arc::new(tokio::sync::Notify::new());
    let metrics = Metrics::new();
    let mut writer_config = WriterConfig::new(&settings.data_dir);
    writer_config.queue_capacity = settings.database.queue_capacity;
    writer_config.max_queue_bytes = settings.database.queue_mb << 20;
    writer_config.on_commit = Some(wake_uploads.clone());
    writer_config.commit_latency = Some(metrics.store_commit.clone());
    writer_config.keep_audio = settings.storage.keep_audio;
    if settings.database.kind == crate::config::DatabaseKind::Sqlite {
        // SQLite's set-based path got slower per turn as batches grew past a few dozen turns
        // (BENCHMARKS.md, store writes): keep the embedded default's batches at the size it
        // had before until that is profiled.
        writer_config.max_batch = SQLITE_MAX_BATCH;
    }
    let (writer, _task) = StoreWriter::start(store.clone(), writer_config);
    let pipeline = match pipeline {
        Some(p) => p,
        None => crate::pipeline::from_settings(&settings, &store, &metrics)?,
    };
    let vision = crate::pipeline::vision_from_settings(&settings)?;
    let shutdown = CancellationToken::new();
    let draining = CancellationToken::new();
    let uploads = UploadPool::start(
        store.clone(),
        storage.clone(),
        PoolConfig::from_settings(&settings.storage),
        wake_uploads,
        shutdown.clone(),
    );
    crate::embeddings::spawn(&settings.embeddings, store.clone(), shutdown.clone());
    tokio::spawn(crate::store::retention::run_schedule(
        store.clone(),
        settings.database.message_retention_days,
        settings.database.deleted_retention_days,
        Duration::from_secs(3600),
        shutdown.clone(),
    ));
    if let Some(why) = settings.auth.lockout() {
        warn!("authentication locks firmware out: {why}");
    }
    let limits = Arc::new(Limits::new(&settings.limits, &metrics));
    tokio::spawn(crate::limits::prune_schedule(limits.clone(), Duration::from_secs(60), shutdown.clone()));
    let auth = Arc::new(Authenticator::new(&settings.auth));
    let devices = Arc::new(DeviceRegistry::default());
    let sessions = Arc::new(SessionRegistry::default());
    let session = Arc::new(SessionContext {
        settings: settings.session.clone(),
        bucket: settings.storage.bucket.as_str().into(),
        clip_format: settings.storage.clip_format,
        metrics: metrics.clone(),
        pipeline,
        recorder: Arc::new(writer.clone()),
        sessions: sessions.clone(),
        devices: devices.clone(),
        turns: limits.turns.clone(),
        auth: auth.clone(),
        draining: draining.clone(),
        shutdown: shutdown.clone(),
    });
    Ok(Arc::new(AppState {
        connections: Arc::new(Semaphore::new(settings.session.max_connections)),
        settings: Arc::new(settings),
        auth,
        devices,
        sessions,
        session,
        draining,
        shutdown,
        store,
        writer,
        storage,
        uploads,
        metrics,
        vision,
        limits,
    }))
}
