//! Message embeddings for search by meaning: which messages still need one (newest first,
//! so a backfill serves recent history first and resumes wherever it stopped), storing them,
//! and ranking the newest candidates that pass the filters by cosine similarity, computed
//! here in the gateway (no pgvector on Debian 12).

use chrono::Utc;
use sqlx::Row;
use uuid::Uuid;

use super::model::{Page, Role, StoredMessage};
use super::queries::{leak, message_from_row};
use super::search::{FILTERS, HIT_COLUMNS, SearchHit, SearchQuery, snippet};
use super::{Store, StoreError, Ts, with_pool};

/// Most candidates scored for one query (the newest that pass the filters).
pub const MAX_CANDIDATES: i64 = 20_000;

/// A vector as stored: little-endian f32.
fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Cosine similarity; 0 for vectors of different lengths or of zero norm.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

impl Store {
    /// Up to `limit` messages with text and no embedding by `model`, newest first.
    pub async fn pending_embeddings(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>, StoreError> {
        const SQL: &str = "SELECT m.message_id, m.content FROM conversation_messages m \
             WHERE m.content <> '' AND NOT EXISTS \
               (SELECT 1 FROM message_embeddings e WHERE e.message_id = m.message_id AND e.model = $1) \
             ORDER BY m.created_at DESC, m.message_id DESC LIMIT $2";
        Ok(with_pool!(self, p => {
            let rows = sqlx::query(self.sql(SQL)).bind(model).bind(limit).fetch_all(p).await?;
            rows.iter().map(|r| Ok((r.try_get("message_id")?, r.try_get("content")?))).collect::<Result<Vec<_>, StoreError>>()?
        }))
    }

    /// Stores embeddings (replacing another model's); an empty vector marks a message the
    /// provider refused for good. Messages deleted meanwhile are skipped.
    pub async fn save_embeddings(&self, model: &str, items: &[(Uuid, Vec<f32>)]) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO message_embeddings (message_id, model, dims, vector, created_at) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM conversation_messages WHERE message_id = $1) \
             ON CONFLICT (message_id) DO UPDATE SET model = excluded.model, dims = excluded.dims, \
             vector = excluded.vector, created_at = excluded.created_at";
        let now = Ts(Utc::now());
        with_pool!(self, p => {
            let mut tx = p.begin_with(self.begin_write()).await?;
            for (id, v) in items {
                sqlx::query(self.sql(SQL))
                    .bind(*id)
                    .bind(model)
                    .bind(v.len() as i32)
                    .bind(to_bytes(v))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// How many messages with text have an embedding by `model` (for progress and tests).
    pub async fn embedded_count(&self, model: &str) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM message_embeddings WHERE model = $1";
        Ok(with_pool!(self, p => sqlx::query_scalar(self.sql(SQL)).bind(model).fetch_one(p).await?))
    }

    /// The messages passing `q`'s filters (not its text), ranked by similarity to `vector`
    /// among the newest [`MAX_CANDIDATES`] embedded by `model`; best first, `q.limit` of them.
    pub async fn semantic_search(
        &self,
        q: &SearchQuery,
        vector: &[f32],
        model: &str,
    ) -> Result<Page<SearchHit>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {HIT_COLUMNS}, e.vector FROM conversation_messages m \
                 JOIN message_embeddings e ON e.message_id = m.message_id AND e.model = $8 AND e.dims > 0 \
                 LEFT JOIN audio_files a ON a.file_id = m.audio_file_id \
                 WHERE {FILTERS} ORDER BY m.created_at DESC, m.message_id DESC LIMIT $7"
            )
        });
        let mut scored = with_pool!(self, p => {
            let rows = sqlx::query(self.sql(leak(&SQL)))
                .bind(q.device_id.as_deref())
                .bind(q.role.map(Role::as_str))
                .bind(q.from.map(Ts))
                .bind(q.to.map(Ts))
                .bind(None::<Ts>)
                .bind(None::<Uuid>)
                .bind(MAX_CANDIDATES)
                .bind(model)
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| {
                    let message = message_from_row!(r);
                    let key: Option<String> = r.try_get("clip_key")?;
                    let status: Option<String> = r.try_get("clip_status")?;
                    let v: Vec<u8> = r.try_get("vector")?;
                    Ok((cosine(vector, &from_bytes(&v)), message, key.zip(status)))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(q.limit.max(1) as usize);
        let items = scored
            .into_iter()
            .map(|(score, message, clip)| SearchHit {
                snippet: snippet(&message.content, ""),
                message,
                clip,
                score: Some(score),
            })
            .collect();
        Ok(Page { items, next_cursor: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_cosine_is_bounded() {
        let v = vec![0.5f32, -1.25, 3.0];
        assert_eq!(from_bytes(&to_bytes(&v)), v);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-6);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
    }
}
