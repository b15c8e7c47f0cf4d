//! Listings that scale with the page, not the history: conversations filtered by device,
//! time range and status (newest first, cursor), and a conversation's messages in speaking
//! order page by page, each with its clip's key and upload status.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::model::{Page, Role, StoredMessage, StoredSession};
use super::queries::{SESSION_COLUMNS, encode_cursor, leak, message_from_row, session_from_row};
use super::search::HIT_COLUMNS;
use super::{Store, StoreError, Ts, with_pool};

/// Which conversations to list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub device_id: Option<String>,
    /// Started at or after.
    pub from: Option<DateTime<Utc>>,
    /// Started before.
    pub to: Option<DateTime<Utc>>,
    /// `active` or `ended`.
    pub status: Option<String>,
}

/// One message with its clip's object key and upload status (when it has a clip).
pub type MessageWithClip = (StoredMessage, Option<(String, String)>);

impl Store {
    /// Conversations matching `f`, newest first; `after` continues a listing.
    pub async fn list_sessions(
        &self,
        f: &SessionFilter,
        after: Option<(DateTime<Utc>, Uuid)>,
        limit: i64,
    ) -> Result<Page<StoredSession>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {SESSION_COLUMNS} FROM conversation_sessions s \
                 WHERE ($1 IS NULL OR s.device_id = $1) AND ($2 IS NULL OR s.started_at >= $2) \
                 AND ($3 IS NULL OR s.started_at < $3) AND ($4 IS NULL OR s.status = $4) \
                 AND ($5 IS NULL OR (s.started_at, s.session_id) < ($5, $6)) \
                 ORDER BY s.started_at DESC, s.session_id DESC LIMIT $7"
            )
        });
        let (after_ts, after_id) = match after {
            Some((t, id)) => (Some(Ts(t)), Some(id)),
            None => (None, None),
        };
        let limit = limit.max(1);
        let mut items = with_pool!(self, p => {
            let rows = sqlx::query(self.sql(leak(&SQL)))
                .bind(f.device_id.as_deref())
                .bind(f.from.map(Ts))
                .bind(f.to.map(Ts))
                .bind(f.status.as_deref())
                .bind(after_ts)
                .bind(after_id)
                .bind(limit + 1)
                .fetch_all(p)
                .await?;
            rows.iter().map(|r| Ok(session_from_row!(r))).collect::<Result<Vec<_>, StoreError>>()?
        });
        let next_cursor = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|s| encode_cursor(s.started_at, s.session_id))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Up to `limit` messages of a conversation after sequence number `after_seq`, in
    /// speaking order; the second value is the sequence number the next page starts after.
    pub async fn session_messages_page(
        &self,
        session_id: Uuid,
        after_seq: Option<i32>,
        limit: i64,
    ) -> Result<(Vec<MessageWithClip>, Option<i32>), StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {HIT_COLUMNS} FROM conversation_messages m \
                 LEFT JOIN audio_files a ON a.file_id = m.audio_file_id \
                 WHERE m.session_id = $1 AND ($2 IS NULL OR m.sequence_num > $2) \
                 ORDER BY m.sequence_num LIMIT $3"
            )
        });
        let limit = limit.max(1);
        let mut rows = with_pool!(self, p => {
            let rows = sqlx::query(self.sql(leak(&SQL)))
                .bind(session_id)
                .bind(after_seq)
                .bind(limit + 1)
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| {
                    let message = message_from_row!(r);
                    let key: Option<String> = r.try_get("clip_key")?;
                    let status: Option<String> = r.try_get("clip_status")?;
                    Ok((message, key.zip(status)))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|(m, _)| m.sequence_num)
        } else {
            None
        };
        Ok((rows, next))
    }
}
