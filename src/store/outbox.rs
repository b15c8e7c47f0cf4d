//! The durable upload queue (transactional outbox). Clip bytes are staged in `audio_staging`
//! by the same transaction as their turn; upload workers claim pending clips with a lease
//! (`next_attempt_at` pushed past the upload's deadline; `FOR UPDATE SKIP LOCKED` on
//! PostgreSQL so several processes never claim the same clip), and after the PUT mark the
//! clip uploaded and drop its bytes in one transaction. A worker that dies mid-upload leaves
//! its lease to expire and another worker takes the clip over.
//!
//! Deleted rows leave their object keys in `object_deletions`, drained the same way.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{Pool, Store, StoreError, Ts, with_pool};

/// A clip claimed for upload.
#[derive(Debug, Clone)]
pub struct PendingClip {
    pub file_id: Uuid,
    pub bucket_name: String,
    pub object_key: String,
    pub file_type: String,
    pub checksum: String,
    /// Attempts made before this one.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub data: Bytes,
}

/// An object to delete from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDeletion {
    pub object_key: String,
    pub bucket_name: String,
}

/// How big and how old the upload backlog is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

impl Store {
    /// Claims up to `limit` pending clips due by `now`, leasing them until `lease_until`.
    pub async fn claim_pending_clips(
        &self,
        limit: i64,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<PendingClip>, StoreError> {
        const CLAIM_PG: &str = "UPDATE audio_files SET next_attempt_at = $3 WHERE file_id IN ( \
               SELECT file_id FROM audio_files WHERE upload_status = 'pending' AND next_attempt_at <= $1 \
               ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING file_id, bucket_name, object_key, file_type, checksum, upload_attempts, created_at";
        const CLAIM_SQLITE: &str = "UPDATE audio_files SET next_attempt_at = $3 WHERE file_id IN ( \
               SELECT file_id FROM audio_files WHERE upload_status = 'pending' AND next_attempt_at <= $1 \
               ORDER BY next_attempt_at LIMIT $2) \
             RETURNING file_id, bucket_name, object_key, file_type, checksum, upload_attempts, created_at";
        const DATA: &str = "SELECT data FROM audio_staging WHERE file_id = $1";
        const FAIL: &str =
            "UPDATE audio_files SET upload_status = 'failed', last_error = $2 WHERE file_id = $1";
        let claim = match self.pool() {
            Pool::Postgres(_) => CLAIM_PG,
            Pool::Sqlite(_) => CLAIM_SQLITE,
        };
        let mut out = Vec::new();
        with_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            let rows = sqlx::query(self.sql(claim))
                .bind(Ts(now))
                .bind(limit)
                .bind(Ts(lease_until))
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                let file_id: Uuid = r.try_get("file_id")?;
                let data: Option<Vec<u8>> =
                    sqlx::query_scalar(self.sql(DATA)).bind(file_id).fetch_optional(&mut *tx).await?;
                let Some(data) = data else {
                    // Pending without bytes cannot be uploaded: surface it, do not spin on it.
                    tracing::error!(%file_id, "pending clip has no staged bytes; marking failed");
                    sqlx::query(self.sql(FAIL)).bind(file_id).bind("staged bytes missing").execute(&mut *tx).await?;
                    continue;
                };
                out.push(PendingClip {
                    file_id,
                    bucket_name: r.try_get("bucket_name")?,
                    object_key: r.try_get("object_key")?,
                    file_type: r.try_get("file_type")?,
                    checksum: r.try_get("checksum")?,
                    attempts: r.try_get("upload_attempts")?,
                    created_at: r.try_get::<Ts, _>("created_at")?.0,
                    data: Bytes::from(data),
                });
            }
            tx.commit().await?;
        });
        Ok(out)
    }

    /// Records a finished upload and drops the staged bytes, atomically. Returns false when the
    /// clip was not pending any more (deleted, or given up by another worker meanwhile).
    pub async fn mark_uploaded(&self, file_id: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError> {
        const MARK: &str = "UPDATE audio_files SET upload_status = 'uploaded', uploaded_at = $2, last_error = NULL, \
             upload_attempts = upload_attempts + 1 WHERE file_id = $1 AND upload_status = 'pending'";
        const UNSTAGE: &str = "DELETE FROM audio_staging WHERE file_id = $1";
        Ok(with_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            let n = sqlx::query(self.sql(MARK)).bind(file_id).bind(Ts(at)).execute(&mut *tx).await?.rows_affected();
            // Only a clip this upload completed loses its staged bytes: one given up meanwhile
            // keeps them for an operator retry.
            if n > 0 {
                sqlx::query(self.sql(UNSTAGE)).bind(file_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            n > 0
        }))
    }

    /// Records a failed attempt: retried at `retry_at`, or (with `None`) given up as `failed`,
    /// keeping the bytes staged so an operator can retry it.
    pub async fn mark_attempt_failed(
        &self,
        file_id: Uuid,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        const RETRY: &str = "UPDATE audio_files SET upload_attempts = upload_attempts + 1, last_error = $2, \
             next_attempt_at = $3 WHERE file_id = $1 AND upload_status = 'pending'";
        const GIVE_UP: &str = "UPDATE audio_files SET upload_attempts = upload_attempts + 1, last_error = $2, \
             upload_status = 'failed' WHERE file_id = $1 AND upload_status = 'pending'";
        let error: String = error.chars().take(1000).collect();
        with_pool!(self, p => {
            match retry_at {
                Some(at) => sqlx::query(self.sql(RETRY)).bind(file_id).bind(&error).bind(Ts(at)).execute(p).await?,
                None => sqlx::query(self.sql(GIVE_UP)).bind(file_id).bind(&error).execute(p).await?,
            };
        });
        Ok(())
    }

    /// Puts failed clips back in the queue (operator retry). Returns how many.
    pub async fn retry_failed_clips(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        const RETRY: &str = "UPDATE audio_files SET upload_status = 'pending', next_attempt_at = $1, upload_attempts = 0 \
             WHERE upload_status = 'failed' AND EXISTS (SELECT 1 FROM audio_staging s WHERE s.file_id = audio_files.file_id)";
        Ok(
            with_pool!(self, p => sqlx::query(self.sql(RETRY)).bind(Ts(now)).execute(p).await?.rows_affected()),
        )
    }

    /// A clip's staged bytes (until it is uploaded).
    pub async fn staged_bytes(&self, file_id: Uuid) -> Result<Option<Bytes>, StoreError> {
        const SQL: &str = "SELECT data FROM audio_staging WHERE file_id = $1";
        let data: Option<Vec<u8>> =
            with_pool!(self, p => sqlx::query_scalar(self.sql(SQL)).bind(file_id).fetch_optional(p).await?);
        Ok(data.map(Bytes::from))
    }

    /// Size and age of the upload backlog.
    pub async fn upload_backlog(&self) -> Result<Backlog, StoreError> {
        const SQL: &str = "SELECT \
             COALESCE(SUM(CASE WHEN upload_status = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
             COALESCE(SUM(CASE WHEN upload_status = 'failed' THEN 1 ELSE 0 END), 0) AS failed, \
             MIN(CASE WHEN upload_status = 'pending' THEN created_at END) AS oldest \
             FROM audio_files WHERE upload_status <> 'uploaded'";
        Ok(with_pool!(self, p => {
            let r = sqlx::query(SQL).fetch_one(p).await?;
            Backlog {
                pending: r.try_get("pending")?,
                failed: r.try_get("failed")?,
                oldest_pending: r.try_get::<Option<Ts>, _>("oldest")?.map(|t| t.0),
            }
        }))
    }

    /// Up to `limit` objects waiting to be deleted from storage.
    pub async fn pending_object_deletions(&self, limit: i64) -> Result<Vec<ObjectDeletion>, StoreError> {
        const SQL: &str =
            "SELECT object_key, bucket_name FROM object_deletions ORDER BY queued_at, object_key LIMIT $1";
        Ok(with_pool!(self, p => {
            let rows = sqlx::query(self.sql(SQL)).bind(limit).fetch_all(p).await?;
            rows.iter()
                .map(|r| Ok(ObjectDeletion { object_key: r.try_get("object_key")?, bucket_name: r.try_get("bucket_name")? }))
                .collect::<Result<Vec<_>, StoreError>>()?
        }))
    }

    /// Forgets a deletion once the object is gone.
    pub async fn object_deleted(&self, object_key: &str) -> Result<(), StoreError> {
        const SQL: &str = "DELETE FROM object_deletions WHERE object_key = $1";
        with_pool!(self, p => {
            sqlx::query(self.sql(SQL)).bind(object_key).execute(p).await?;
        });
        Ok(())
    }
}
