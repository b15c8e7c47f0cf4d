//! Reading messages for export: oldest first in keyset-paginated batches, so an export of
//! any size holds one batch in memory at a time.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::model::{Role, StoredMessage};
use super::queries::{leak, message_from_row};
use super::{Store, StoreError, Ts, with_pool};

/// Which messages to export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub device_id: Option<String>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
}

const FILTERS: &str = "($1 IS NULL OR device_id = $1) AND ($2 IS NULL OR created_at >= $2) \
     AND ($3 IS NULL OR created_at < $3)";

impl Store {
    /// Up to `limit` messages matching `f` after `after` (created_at, message_id), oldest first.
    pub async fn export_batch(
        &self,
        f: &ExportFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT message_id, session_id, device_id, sequence_num, role, content, multi_content, \
                 tool_calls, tool_call_id, audio_file_id, interrupted, created_at FROM conversation_messages \
                 WHERE {FILTERS} AND ($4 IS NULL OR (created_at, message_id) > ($4, $5)) \
                 ORDER BY created_at, message_id LIMIT $6"
            )
        });
        let (after_ts, after_id) = match after {
            Some((t, id)) => (Some(Ts(t)), Some(id)),
            None => (None, None),
        };
        Ok(with_pool!(self, p => {
            let rows = sqlx::query(self.sql(leak(&SQL)))
                .bind(f.device_id.as_deref())
                .bind(f.from.map(Ts))
                .bind(f.to.map(Ts))
                .bind(after_ts)
                .bind(after_id)
                .bind(limit.max(1))
                .fetch_all(p)
                .await?;
            rows.iter().map(|r| Ok(message_from_row!(r))).collect::<Result<Vec<_>, StoreError>>()?
        }))
    }

    /// How many messages match `f` (for progress reporting).
    pub async fn export_count(&self, f: &ExportFilter) -> Result<i64, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("SELECT COUNT(*) FROM conversation_messages WHERE {FILTERS}")
        });
        Ok(with_pool!(self, p => sqlx::query_scalar(self.sql(leak(&SQL)))
            .bind(f.device_id.as_deref())
            .bind(f.from.map(Ts))
            .bind(f.to.map(Ts))
            .fetch_one(p)
            .await?))
    }
}
