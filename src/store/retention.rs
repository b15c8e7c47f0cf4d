//! Retention: messages and clips older than `message_retention_days` are deleted by a
//! scheduled job, and the ids of deleted conversations (tombstones, which turn away late
//! writes) are forgotten after `deleted_retention_days`. Each run is one transaction that queues the expired clips' objects for
//! deletion (the upload workers remove them from object storage) and deletes the rows, so
//! it is idempotent and safe to run from several gateway processes at once: a second run
//! finds nothing left to do.

use chrono::{DateTime, Utc};

use super::{Store, StoreError, Ts, with_pool};

/// What one retention run removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    pub messages: u64,
    pub clips: u64,
    pub sessions: u64,
}

impl Store {
    /// Deletes messages and clips created before `cutoff`, and ended sessions left empty.
    pub async fn expire_before(&self, cutoff: DateTime<Utc>) -> Result<RetentionReport, StoreError> {
        const QUEUE: &str = "INSERT INTO object_deletions (object_key, bucket_name, queued_at) \
             SELECT object_key, bucket_name, $2 FROM audio_files WHERE created_at < $1 ON CONFLICT (object_key) DO NOTHING";
        const CLIPS: &str = "DELETE FROM audio_files WHERE created_at < $1";
        const MESSAGES: &str = "DELETE FROM conversation_messages WHERE created_at < $1";
        const SESSIONS: &str = "DELETE FROM conversation_sessions WHERE started_at < $1 AND status = 'ended' \
             AND NOT EXISTS (SELECT 1 FROM conversation_messages m WHERE m.session_id = conversation_sessions.session_id)";
        let (cutoff, now) = (Ts(cutoff), Ts(Utc::now()));
        Ok(with_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            sqlx::query(self.sql(QUEUE)).bind(cutoff).bind(now).execute(&mut *tx).await?;
            let clips = sqlx::query(self.sql(CLIPS)).bind(cutoff).execute(&mut *tx).await?.rows_affected();
            let messages = sqlx::query(self.sql(MESSAGES)).bind(cutoff).execute(&mut *tx).await?.rows_affected();
            let sessions = sqlx::query(self.sql(SESSIONS)).bind(cutoff).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            RetentionReport { messages, clips, sessions }
        }))
    }
}

impl Store {
    /// Forgets conversations deleted before `cutoff` (their tombstones); returns how many.
    pub async fn purge_deleted_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        const PURGE: &str = "DELETE FROM deleted_sessions WHERE deleted_at < $1";
        Ok(
            with_pool!(self, p => sqlx::query(self.sql(PURGE)).bind(Ts(cutoff)).execute(p).await?.rows_affected()),
        )
    }
}

/// Runs retention every `every` until `stop` is cancelled: messages after `retention_days`,
/// tombstones after `deleted_retention_days` (0 days: never).
pub(crate) async fn run_schedule(
    store: Store,
    retention_days: u32,
    deleted_retention_days: u32,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    if retention_days == 0 && deleted_retention_days == 0 {
        return;
    }
    let days_ago = |days: u32| Utc::now() - chrono::Duration::days(i64::from(days));
    loop {
        if retention_days > 0 {
            match store.expire_before(days_ago(retention_days)).await {
                Ok(r) if r != RetentionReport::default() => {
                    tracing::info!(
                        messages = r.messages,
                        clips = r.clips,
                        sessions = r.sessions,
                        "retention run"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention run failed; will retry"),
            }
        }
        if deleted_retention_days > 0 {
            match store.purge_deleted_before(days_ago(deleted_retention_days)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(tombstones = n, "deleted conversations forgotten"),
                Err(e) => tracing::warn!(error = %e, "purging deleted conversations failed; will retry"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
