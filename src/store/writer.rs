//! The store writer: sessions hand it [`StoreOp`]s and move on; it commits them in batches
//! (one transaction per batch), retrying with capped backoff while the database is away.
//!
//! When the in-memory queue is full (by count or by bytes), [`StoreWriter::submit`] does not
//! wait and does not drop: the op is written to a spill directory on local disk (by a
//! blocking task, off the session's thread) and replayed, oldest first, once the queue has
//! room. Spilled ops also survive a crash: they are replayed at start-up. An op the database
//! rejects for good (a constraint it can never satisfy) is written to a dead-letter directory
//! with the error and logged at error level. Nothing is ever dropped silently.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::model::StoreOp;
use super::{Store, StoreError};

/// Limits of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Ops held in memory before spilling to disk.
    pub queue_capacity: usize,
    /// Bytes (clip audio mostly) held in memory before spilling to disk.
    pub max_queue_bytes: usize,
    /// Ops committed per transaction at most.
    pub max_batch: usize,
    /// Where spilled and dead-lettered ops go.
    pub spill_dir: PathBuf,
    /// Notified after each commit (the upload pool wakes on it).
    pub on_commit: Option<Arc<tokio::sync::Notify>>,
    /// Where to record each commit's latency.
    pub commit_latency: Option<metrics::Histogram>,
    /// Which clips are kept (`XIAOZHI_KEEP_AUDIO`); applied as ops are submitted.
    pub keep_audio: crate::config::KeepAudio,
}

impl WriterConfig {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            queue_capacity: 4096,
            max_queue_bytes: 64 << 20,
            max_batch: 64,
            spill_dir: data_dir.join("store-spill"),
            on_commit: None,
            commit_latency: None,
            keep_audio: crate::config::KeepAudio::All,
        }
    }
}

/// What the writer has done, for metrics and readiness.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Ops waiting in memory.
    pub queued: AtomicUsize,
    pub queued_bytes: AtomicUsize,
    /// Ops waiting on disk.
    pub spilled: AtomicUsize,
    pub committed_ops: AtomicU64,
    pub committed_batches: AtomicU64,
    /// Failed commit attempts (each is retried).
    pub commit_errors: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Duration of the last successful commit, in microseconds.
    pub last_commit_us: AtomicU64,
    /// Whether the last commit attempt failed (the database is away).
    pub failing: std::sync::atomic::AtomicBool,
    /// Set at exit when the database is away: ops go to disk instead of being retried.
    pub abandoned: std::sync::atomic::AtomicBool,
}

impl WriterStats {
    /// Ops not yet committed (memory and disk).
    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.spilled.load(Ordering::Relaxed)
    }
}

enum Item {
    Op(StoreOp, usize),
    Flush(oneshot::Sender<()>),
}

/// The sessions' handle to the writer.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Item>,
    stats: Arc<WriterStats>,
    config: Arc<WriterConfig>,
    /// Ops neither the queue nor the disk would take; the writer drains them first.
    held: Arc<std::sync::Mutex<Vec<StoreOp>>>,
}

impl StoreWriter {
    /// Starts the writer task. Spilled ops from an earlier run are replayed first.
    pub fn start(store: Store, config: WriterConfig) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let config = Arc::new(config);
        if let Ok(n) = count_spilled(&config.spill_dir) {
            stats.spilled.store(n, Ordering::Relaxed);
        }
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = Worker { store, rx, stats: stats.clone(), config: config.clone(), held: held.clone() };
        let handle = tokio::spawn(task.run());
        (Self { tx, stats, config, held }, handle)
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Hands an op to the writer without waiting. Never blocks, never drops.
    pub fn submit(&self, op: StoreOp) {
        let op = super::keep::apply(self.config.keep_audio, op);
        let weight = op.weight();
        let bytes = self.stats.queued_bytes.load(Ordering::Relaxed);
        if bytes + weight <= self.config.max_queue_bytes {
            match self.tx.try_send(Item::Op(op, weight)) {
                Ok(()) => {
                    self.stats.queued.fetch_add(1, Ordering::Relaxed);
                    self.stats.queued_bytes.fetch_add(weight, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(Item::Op(op, _)))
                | Err(mpsc::error::TrySendError::Closed(Item::Op(op, _))) => self.spill(op),
                Err(_) => unreachable!("only ops are try_sent"),
            }
        } else {
            self.spill(op);
        }
    }

    fn spill(&self, op: StoreOp) {
        self.stats.spilled.fetch_add(1, Ordering::Relaxed);
        let dir = self.config.spill_dir.clone();
        let stats = self.stats.clone();
        let held = self.held.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write_op_file(&dir, &op) {
                // The disk refused too: keep the op in memory until the writer can take it.
                stats.spilled.fetch_sub(1, Ordering::Relaxed);
                error!(error = %e, dir = %dir.display(), "store queue full and spill failed; holding the op in memory");
                held.lock().unwrap_or_else(|e| e.into_inner()).push(op);
            }
        });
        warn!("store queue full; turn spilled to disk");
    }

    /// At exit with the database away: stop retrying, write everything still in memory to the
    /// spill directory (replayed at the next start). Follow with [`StoreWriter::flush`].
    pub fn abandon(&self) {
        self.stats.abandoned.store(true, Ordering::Relaxed);
    }

    /// Waits until everything submitted before this call is committed (or dead-lettered).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Worker {
    store: Store,
    rx: mpsc::Receiver<Item>,
    stats: Arc<WriterStats>,
    config: Arc<WriterConfig>,
    held: Arc<std::sync::Mutex<Vec<StoreOp>>>,
}

impl Worker {
    async fn run(mut self) {
        self.replay_spilled().await;
        while let Some(first) = self.rx.recv().await {
            let mut batch = Vec::new();
            let mut weight = 0;
            let mut flushes = Vec::new();
            let mut push = |item: Item, batch: &mut Vec<StoreOp>| match item {
                Item::Op(op, w) => {
                    weight += w;
                    batch.push(op);
                }
                Item::Flush(tx) => flushes.push(tx),
            };
            push(first, &mut batch);
            while batch.len() < self.config.max_batch {
                match self.rx.try_recv() {
                    Ok(item) => push(item, &mut batch),
                    Err(_) => break,
                }
            }
            let held: Vec<StoreOp> =
                std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
            if !held.is_empty() {
                self.commit(&held).await;
            }
            if !batch.is_empty() {
                self.commit(&batch).await;
            }
            self.stats.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            self.stats.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
            if self.stats.spilled.load(Ordering::Relaxed) > 0 && !self.stats.abandoned.load(Ordering::Relaxed)
            {
                self.replay_spilled().await;
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
        // Every handle is gone. Abandoned (exit with the database away): what is on disk stays
        // there for the next start; replaying now would only rewrite the same files, racing the
        // next writer for them.
        if !self.stats.abandoned.load(Ordering::Relaxed) {
            self.replay_spilled().await;
        }
    }

    /// Commits a batch, retrying while the database is away; splits a batch the database
    /// rejects so that one bad op does not hold back the others.
    async fn commit(&self, batch: &[StoreOp]) {
        let mut delay = Duration::from_millis(50);
        loop {
            if self.stats.abandoned.load(Ordering::Relaxed) {
                self.spill_batch(batch);
                return;
            }
            let started = Instant::now();
            match self.store.write_batch(batch).await {
                Ok(()) => {
                    if self.stats.failing.swap(false, Ordering::Relaxed) {
                        info!("database reachable again; store writer resumed");
                    }
                    self.stats.committed_ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.stats.committed_batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.last_commit_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if let Some(h) = &self.config.commit_latency {
                        h.record(started.elapsed().as_secs_f64());
                    }
                    if let Some(n) = &self.config.on_commit {
                        n.notify_waiters();
                    }
                    return;
                }
                Err(e) if e.is_transient() => {
                    self.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                    if !self.stats.failing.swap(true, Ordering::Relaxed) {
                        warn!(error = %e, backlog = self.stats.backlog(), "database unavailable; store writer retrying");
                    }
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    self.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
                    if batch.len() > 1 {
                        for op in batch {
                            Box::pin(self.commit(std::slice::from_ref(op))).await;
                        }
                    } else {
                        self.dead_letter(&batch[0], &e);
                    }
                    return;
                }
            }
        }
    }

    /// Writes a batch to the spill directory (it is replayed at the next start).
    fn spill_batch(&self, batch: &[StoreOp]) {
        for op in batch {
            match write_op_file(&self.config.spill_dir, op) {
                Ok(()) => {
                    self.stats.spilled.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => error!(error = %e, "could not keep a store write on disk at exit; it is lost"),
            }
        }
    }

    fn dead_letter(&self, op: &StoreOp, e: &StoreError) {
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let dir = self.config.spill_dir.join("dead-letter");
        let written = write_op_file(&dir, &(op, e.to_string()));
        error!(error = %e, kept_in = %dir.display(), written = written.is_ok(), "the database rejected a write; kept for inspection");
    }

    /// Commits spilled ops, oldest first, deleting each file after its commit.
    async fn replay_spilled(&self) {
        let dir = self.config.spill_dir.clone();
        let files = match tokio::task::spawn_blocking(move || list_spilled(&dir)).await {
            Ok(Ok(files)) => files,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot list spilled store ops");
                return;
            }
            Err(_) => return,
        };
        if !files.is_empty() {
            info!(count = files.len(), "replaying spilled store ops");
        }
        for chunk in files.chunks(self.config.max_batch) {
            let mut ops = Vec::with_capacity(chunk.len());
            let mut done = Vec::with_capacity(chunk.len());
            for path in chunk {
                match std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice::<StoreOp>(&b).map_err(|e| e.to_string()))
                {
                    Ok(op) => {
                        ops.push(op);
                        done.push(path.clone());
                    }
                    Err(e) => {
                        // A half-written file from a crash mid-spill: keep it aside.
                        error!(path = %path.display(), error = %e, "unreadable spilled op moved aside");
                        let _ = std::fs::rename(path, path.with_extension("corrupt"));
                        self.stats.spilled.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            self.commit(&ops).await;
            for path in done {
                let _ = std::fs::remove_file(&path);
                self.stats.spilled.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// ±25% jitter so that many writers do not retry in step.
fn jitter(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 500) as u32; // 0..500
    d.mul_f64(0.75 + f64::from(r) / 1000.0)
}

/// Writes `value` as JSON to a new file in `dir`, atomically (temp file + rename), with a
/// time-ordered name so replay keeps the original order.
fn write_op_file<T: serde::Serialize>(dir: &Path, value: &T) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = uuid::Uuid::now_v7().simple().to_string();
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(format!("{name}.json")))
}

fn list_spilled(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

fn count_spilled(dir: &Path) -> std::io::Result<usize> {
    list_spilled(dir).map(|f| f.len())
}
