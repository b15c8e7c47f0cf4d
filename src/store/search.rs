//! Finding what devices said: messages by a piece of their text, newest first, with
//! device, role and time filters and cursor pagination, on both backends.
//!
//! Chinese has no spaces between words, so word indexes do not help: both backends index
//! every three-character window of a message (`pg_trgm` GIN on PostgreSQL, FTS5 with the
//! `trigram` tokenizer on SQLite; `migrations/*/0003_search.sql`). A query of three or more
//! characters goes through that index; a one- or two-character query (a trigram index
//! cannot answer it) scans the messages newest first and stops at the page's limit. An empty
//! query lists messages newest first (browsing with filters).
//!
//! Matching is a case-insensitive substring match on both backends; what was matched is
//! returned as an HTML-escaped snippet with the matches in `<mark>`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::model::{Page, Role, StoredMessage};
use super::queries::{encode_cursor, leak, message_from_row};
use super::{Pool, Store, StoreError, Ts, with_pool};

/// Longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// The text to find (empty: every message matching the filters).
    pub text: String,
    pub device_id: Option<String>,
    pub role: Option<Role>,
    /// Messages created at or after this.
    pub from: Option<DateTime<Utc>>,
    /// Messages created before this.
    pub to: Option<DateTime<Utc>>,
    /// Continue after this (created_at, message_id), from a previous page's cursor.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// One message found, with what the API needs to point at its clip.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    #[serde(flatten)]
    pub message: StoredMessage,
    /// The text around the first match, HTML-escaped, matches in `<mark>…</mark>`.
    pub snippet: String,
    /// The clip's object key and upload status, when the message has a clip.
    #[serde(skip)]
    pub clip: Option<(String, String)>,
    /// Cosine similarity to the query (search by meaning only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

pub(super) const HIT_COLUMNS: &str = "m.message_id, m.session_id, m.device_id, m.sequence_num, m.role, m.content, \
     m.multi_content, m.tool_calls, m.tool_call_id, m.audio_file_id, m.interrupted, m.created_at, \
     a.object_key AS clip_key, a.upload_status AS clip_status";

/// The filters every variant shares ($1..$6) and the page size ($7).
pub(super) const FILTERS: &str = "($1 IS NULL OR m.device_id = $1) AND ($2 IS NULL OR m.role = $2) \
     AND ($3 IS NULL OR m.created_at >= $3) AND ($4 IS NULL OR m.created_at < $4) \
     AND ($5 IS NULL OR (m.created_at, m.message_id) < ($5, $6))";

/// How the text condition is evaluated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Plan {
    /// No text: filters only.
    Browse,
    /// A substring pattern ($8) matched by LIKE/ILIKE (PostgreSQL: index-assisted by
    /// pg_trgm; SQLite: a scan bounded by the page limit).
    Pattern,
    /// SQLite FTS5 trigram phrase ($8).
    Trigram,
}

fn statement(pool: &Pool, plan: Plan) -> &'static str {
    use std::sync::LazyLock;
    static BROWSE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {HIT_COLUMNS} FROM conversation_messages m \
             LEFT JOIN audio_files a ON a.file_id = m.audio_file_id \
             WHERE {FILTERS} ORDER BY m.created_at DESC, m.message_id DESC LIMIT $7"
        )
    });
    static PG_PATTERN: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {HIT_COLUMNS} FROM conversation_messages m \
             LEFT JOIN audio_files a ON a.file_id = m.audio_file_id \
             WHERE m.content ILIKE $8 ESCAPE '\\' AND {FILTERS} \
             ORDER BY m.created_at DESC, m.message_id DESC LIMIT $7"
        )
    });
    static SQLITE_PATTERN: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {HIT_COLUMNS} FROM conversation_messages m \
             LEFT JOIN audio_files a ON a.file_id = m.audio_file_id \
             WHERE m.content LIKE $8 ESCAPE '\\' AND {FILTERS} \
             ORDER BY m.created_at DESC, m.message_id DESC LIMIT $7"
        )
    });
    static SQLITE_TRIGRAM: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {HIT_COLUMNS} FROM message_search f \
             JOIN message_search_ids k ON k.id = f.rowid \
             JOIN conversation_messages m ON m.message_id = k.message_id \
             LEFT JOIN audio_files a ON a.file_id = m.audio_file_id \
             WHERE message_search MATCH $8 AND {FILTERS} \
             ORDER BY m.created_at DESC, m.message_id DESC LIMIT $7"
        )
    });
    let sql = match (pool, plan) {
        (_, Plan::Browse) => leak(&BROWSE),
        (Pool::Postgres(_), _) => leak(&PG_PATTERN),
        (Pool::Sqlite(_), Plan::Pattern) => leak(&SQLITE_PATTERN),
        (Pool::Sqlite(_), Plan::Trigram) => leak(&SQLITE_TRIGRAM),
    };
    super::sql_for(pool, sql)
}

/// `text` as a LIKE pattern matching it anywhere (`%`, `_` and `\` taken literally).
fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// `text` as one FTS5 phrase (double quotes doubled), which the trigram tokenizer turns
/// into "contains this substring".
fn fts_phrase(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

impl Store {
    /// Messages matching `q`, newest first; `next_cursor` continues the listing.
    pub async fn search_messages(&self, q: &SearchQuery) -> Result<Page<SearchHit>, StoreError> {
        let text = q.text.trim();
        let chars = text.chars().count();
        let plan = match (&self.pool, chars) {
            (_, 0) => Plan::Browse,
            (Pool::Sqlite(_), n) if n >= 3 => Plan::Trigram,
            _ => Plan::Pattern,
        };
        let needle = match plan {
            Plan::Browse => None,
            Plan::Pattern => Some(like_pattern(text)),
            Plan::Trigram => Some(fts_phrase(text)),
        };
        let (after_ts, after_id) = match q.after {
            Some((t, id)) => (Some(Ts(t)), Some(id)),
            None => (None, None),
        };
        let limit = q.limit.max(1);
        let sql = statement(&self.pool, plan);
        let mut rows = with_pool!(self, p => {
            let mut query = sqlx::query(sql)
                .bind(q.device_id.as_deref())
                .bind(q.role.map(Role::as_str))
                .bind(q.from.map(Ts))
                .bind(q.to.map(Ts))
                .bind(after_ts)
                .bind(after_id)
                .bind(limit + 1);
            if let Some(n) = &needle {
                query = query.bind(n.as_str());
            }
            let rows = query.fetch_all(p).await?;
            rows.iter()
                .map(|r| {
                    let message = message_from_row!(r);
                    let key: Option<String> = r.try_get("clip_key")?;
                    let status: Option<String> = r.try_get("clip_status")?;
                    Ok((message, key.zip(status)))
                })
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|(m, _)| encode_cursor(m.created_at, m.message_id))
        } else {
            None
        };
        let items = rows
            .into_iter()
            .map(|(message, clip)| SearchHit {
                snippet: snippet(&message.content, text),
                message,
                clip,
                score: None,
            })
            .collect();
        Ok(Page { items, next_cursor })
    }
}

/// Characters of context kept on each side of the first match.
const CONTEXT_CHARS: usize = 30;

/// The text around the first case-insensitive occurrence of `needle` (or the start of the
/// text), HTML-escaped, every occurrence inside it wrapped in `<mark>`.
pub fn snippet(content: &str, needle: &str) -> String {
    let hay: Vec<char> = content.chars().collect();
    let pat: Vec<char> = needle.chars().collect();
    let matches = find_all(&hay, &pat);
    let first = matches.first().map(|&(s, _)| s).unwrap_or(0);
    let start = first.saturating_sub(CONTEXT_CHARS);
    let end = (first + pat.len() + CONTEXT_CHARS).max(start + 2 * CONTEXT_CHARS).min(hay.len());
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    let mut i = start;
    for &(s, e) in matches.iter().filter(|&&(s, e)| s >= start && e <= end) {
        escape_into(&mut out, &hay[i..s]);
        out.push_str("<mark>");
        escape_into(&mut out, &hay[s..e]);
        out.push_str("</mark>");
        i = e;
    }
    escape_into(&mut out, &hay[i..end]);
    if end < hay.len() {
        out.push('…');
    }
    out
}

/// Non-overlapping occurrences of `pat` in `hay` (character ranges), ignoring case.
fn find_all(hay: &[char], pat: &[char]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    if pat.is_empty() || pat.len() > hay.len() {
        return out;
    }
    let same = |a: char, b: char| a == b || a.to_lowercase().eq(b.to_lowercase());
    let mut i = 0;
    while i + pat.len() <= hay.len() {
        if hay[i..i + pat.len()].iter().zip(pat).all(|(&a, &b)| same(a, b)) {
            out.push((i, i + pat.len()));
            i += pat.len();
        } else {
            i += 1;
        }
    }
    out
}

fn escape_into(out: &mut String, chars: &[char]) {
    for &c in chars {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_mark_every_match_and_escape_the_rest() {
        assert_eq!(snippet("今天天气很好", "天气"), "今天<mark>天气</mark>很好");
        assert_eq!(
            snippet("Hello <b>World</b> world", "WORLD"),
            "Hello &lt;b&gt;<mark>World</mark>&lt;/b&gt; <mark>world</mark>"
        );
        let long = format!("{}needle{}", "a".repeat(100), "b".repeat(100));
        let s = snippet(&long, "needle");
        assert!(s.starts_with('…') && s.ends_with('…') && s.contains("<mark>needle</mark>"), "{s}");
        assert_eq!(snippet("no match here", "zzz"), "no match here");
    }

    #[test]
    fn patterns_take_wildcards_literally() {
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
        assert_eq!(fts_phrase("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
