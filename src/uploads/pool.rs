//! The durable upload pool: workers drain the outbox the store writer filled (clip bytes
//! staged in the same transaction as their turn), PUT each clip under its deterministic key,
//! then mark it uploaded and drop the staged bytes in one transaction. Failures are retried
//! with capped exponential backoff and jitter; a clip that keeps failing ends `failed`,
//! visible with its last error and still staged. Claims are leases, so a worker (or a whole
//! gateway) that dies mid-upload leaves the clip to be taken over; a repeated PUT of the same
//! key is harmless. The workers also delete objects whose rows were deleted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::storage::ClipStorage;
use crate::store::Store;
use crate::store::outbox::PendingClip;

/// How the pool behaves.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub workers: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a claimed clip is reserved for its worker: what a crashed process's claims
    /// delay their clips by. Uploads are idempotent (same key, same bytes), so a lease that
    /// runs out during a slow upload costs at most a second identical PUT.
    pub lease: Duration,
    /// How often idle workers look for work (they are also woken after each commit).
    pub poll: Duration,
}

impl PoolConfig {
    pub fn from_settings(s: &crate::config::StorageSettings) -> Self {
        Self {
            workers: s.upload_workers,
            max_attempts: s.upload_max_attempts,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(s.upload_backoff_max_secs),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub uploaded: AtomicU64,
    pub attempts_failed: AtomicU64,
    pub given_up: AtomicU64,
    pub objects_deleted: AtomicU64,
    pub uploaded_bytes: AtomicU64,
}

/// A running pool.
#[derive(Clone)]
pub struct UploadPool {
    wake: Arc<Notify>,
    stats: Arc<UploadStats>,
}

impl UploadPool {
    /// Starts the workers; they stop when `stop` is cancelled. `wake` is notified when there
    /// may be new work (the store writer notifies it after each commit).
    pub fn start(
        store: Store,
        storage: ClipStorage,
        config: PoolConfig,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> Self {
        let stats = Arc::new(UploadStats::default());
        let config = Arc::new(config);
        for n in 0..config.workers.max(1) {
            let worker = Worker {
                n,
                store: store.clone(),
                storage: storage.clone(),
                config: config.clone(),
                wake: wake.clone(),
                stats: stats.clone(),
            };
            tokio::spawn(worker.run(stop.clone()));
        }
        Self { wake, stats }
    }

    /// Tells idle workers there is work (after a commit with clips, a deletion…).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    pub fn stats(&self) -> &Arc<UploadStats> {
        &self.stats
    }
}

struct Worker {
    n: usize,
    store: Store,
    storage: ClipStorage,
    config: Arc<PoolConfig>,
    wake: Arc<Notify>,
    stats: Arc<UploadStats>,
}

impl Worker {
    async fn run(self, stop: CancellationToken) {
        loop {
            let did = if stop.is_cancelled() { 0 } else { self.round().await };
            if did == 0 {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.config.poll) => {}
                }
            }
        }
    }

    /// One round: a few deletions and a few uploads. Returns how much was done.
    async fn round(&self) -> usize {
        let mut done = 0;
        // Deletions are rare; the first worker takes care of them.
        if self.n == 0 {
            done += self.delete_objects().await;
        }
        let now = Utc::now();
        let lease_until =
            now + chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::MAX);
        // One clip per claim: its lease then only has to cover one upload.
        let claimed = match self.store.claim_pending_clips(1, now, lease_until).await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "cannot claim clips (database away?)");
                return done;
            }
        };
        for clip in claimed {
            self.upload(clip).await;
            done += 1;
        }
        done
    }

    async fn upload(&self, clip: PendingClip) {
        let content_type = super::storage::content_type(&clip.file_type);
        let size = clip.data.len() as u64;
        match self.storage.put(&clip.object_key, clip.data.clone(), content_type).await {
            Ok(()) => match self.store.mark_uploaded(clip.file_id, Utc::now()).await {
                Ok(true) => {
                    self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                    self.stats.uploaded_bytes.fetch_add(size, Ordering::Relaxed);
                }
                Ok(false) => {
                    // Deleted while we uploaded: do not leave an orphan. (A clip another worker
                    // gave up on meanwhile keeps its row, its bytes and this object.)
                    if let Ok(None) = self.store.clip(clip.file_id).await {
                        let _ = self.storage.delete(&clip.object_key).await;
                    }
                }
                Err(e) => {
                    // Uploaded but not recorded: the lease expires and the PUT is repeated,
                    // which overwrites the same object with the same bytes.
                    warn!(file_id = %clip.file_id, error = %e, "upload done but not recorded; will repeat");
                }
            },
            Err(e) => self.failed(&clip, &e.to_string()).await,
        }
    }

    async fn failed(&self, clip: &PendingClip, error: &str) {
        self.stats.attempts_failed.fetch_add(1, Ordering::Relaxed);
        let attempt = clip.attempts as u32 + 1;
        let retry_at = if attempt >= self.config.max_attempts {
            self.stats.given_up.fetch_add(1, Ordering::Relaxed);
            warn!(file_id = %clip.file_id, attempts = attempt, error, "clip upload given up; marked failed");
            None
        } else {
            let wait = backoff(self.config.backoff_base, self.config.backoff_max, attempt);
            debug!(file_id = %clip.file_id, attempt, ?wait, error, "clip upload failed; will retry");
            Some(Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
        };
        if let Err(e) = self.store.mark_attempt_failed(clip.file_id, error, retry_at).await {
            debug!(error = %e, "cannot record the failed attempt; the lease will expire");
        }
    }

    async fn delete_objects(&self) -> usize {
        let Ok(pending) = self.store.pending_object_deletions(32).await else { return 0 };
        let mut done = 0;
        for d in pending {
            match self.storage.delete(&d.object_key).await {
                Ok(()) => {
                    if self.store.object_deleted(&d.object_key).await.is_ok() {
                        self.stats.objects_deleted.fetch_add(1, Ordering::Relaxed);
                        done += 1;
                    }
                }
                Err(e) => {
                    debug!(key = %d.object_key, error = %e, "object deletion failed; will retry");
                    break;
                }
            }
        }
        if done > 0 {
            info!(count = done, "objects deleted");
        }
        done
    }
}

/// `base × 2^(attempt-1)`, capped, with ±25% jitter.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let r = (uuid::Uuid::new_v4().as_u128() % 500) as f64 / 1000.0; // 0..0.5
    capped.mul_f64(0.75 + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(500);
        let m = Duration::from_secs(60);
        let first = backoff(b, m, 1);
        assert!(first >= Duration::from_millis(375) && first <= Duration::from_millis(625));
        let fifth = backoff(b, m, 5);
        assert!(fifth >= Duration::from_secs(6) && fifth <= Duration::from_secs(10));
        assert!(backoff(b, m, 40) <= Duration::from_secs(75));
    }
}
