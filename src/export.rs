//! Exports of what devices said, shared by the admin API and `xiaozhi-gateway export`:
//! messages as JSON lines or CSV (one row per message, oldest first, read in batches so that
//! an export of any size holds one batch in memory), and one conversation as a `.zip` with
//! its transcript (`conversation.json`) and its clips (`clips/{file_id}.{type}`).

use std::io::Write;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::store::export::ExportFilter;
use crate::store::model::StoredMessage;
use crate::store::{Store, StoreError};
use crate::uploads::storage::ClipStorage;

/// Messages read per batch.
const BATCH: i64 = 500;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(String),
}

/// A line format for message exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jsonl => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
        }
    }
}

/// The CSV columns, in order.
const CSV_HEADER: [&str; 9] = [
    "created_at",
    "device_id",
    "session_id",
    "sequence_num",
    "role",
    "content",
    "interrupted",
    "message_id",
    "audio_file_id",
];

/// An export in progress: each [`MessageExport::next_chunk`] reads one batch and returns it
/// encoded.
pub struct MessageExport {
    store: Store,
    filter: ExportFilter,
    format: ExportFormat,
    after: Option<(DateTime<Utc>, Uuid)>,
    header_written: bool,
    done: bool,
}

impl MessageExport {
    pub fn new(store: Store, filter: ExportFilter, format: ExportFormat) -> Self {
        Self { store, filter, format, after: None, header_written: false, done: false }
    }

    /// The next encoded batch and how many messages it holds; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<(Bytes, usize)>, ExportError> {
        if self.done {
            return Ok(None);
        }
        let batch = self.store.export_batch(&self.filter, self.after, BATCH).await?;
        if (batch.len() as i64) < BATCH {
            self.done = true;
        }
        if let Some(last) = batch.last() {
            self.after = Some((last.created_at, last.message_id));
        }
        let mut out = Vec::with_capacity(batch.len() * 256);
        match self.format {
            ExportFormat::Jsonl => {
                for m in &batch {
                    serde_json::to_writer(&mut out, m).map_err(|e| ExportError::Write(e.to_string()))?;
                    out.push(b'\n');
                }
            }
            ExportFormat::Csv => {
                let mut w = csv::Writer::from_writer(&mut out);
                let werr = |e: csv::Error| ExportError::Write(e.to_string());
                if !self.header_written {
                    w.write_record(CSV_HEADER).map_err(werr)?;
                    self.header_written = true;
                }
                for m in &batch {
                    w.write_record(csv_row(m)).map_err(werr)?;
                }
                w.flush().map_err(|e| ExportError::Write(e.to_string()))?;
            }
        }
        if out.is_empty() && self.done {
            return Ok(None);
        }
        Ok(Some((Bytes::from(out), batch.len())))
    }
}

fn csv_row(m: &StoredMessage) -> [String; 9] {
    [
        m.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        m.device_id.clone(),
        m.session_id.to_string(),
        m.sequence_num.to_string(),
        m.role.as_str().to_owned(),
        m.content.clone(),
        m.interrupted.to_string(),
        m.message_id.to_string(),
        m.audio_file_id.map(|f| f.to_string()).unwrap_or_default(),
    ]
}

/// One conversation as a `.zip`: `conversation.json` (the session, its messages in order,
/// each with the name of its clip in the archive, and the clip rows) and `clips/...`. A clip
/// whose bytes cannot be read is listed under `missing_clips` with the reason. `None` when
/// the conversation does not exist.
pub async fn conversation_zip(
    store: &Store,
    storage: &ClipStorage,
    session_id: Uuid,
) -> Result<Option<Vec<u8>>, ExportError> {
    let Some(session) = store.session(session_id).await? else {
        return Ok(None);
    };
    let messages = store.session_messages(session_id).await?;
    let clips = store.session_clips(session_id).await?;
    let mut files: Vec<(String, Bytes)> = Vec::new();
    let mut missing = Vec::new();
    for c in &clips {
        let name = format!("clips/{}.{}", c.file_id, c.file_type);
        let bytes = if c.upload_status == "uploaded" {
            storage.get(&c.object_key).await.map_err(|e| e.to_string())
        } else {
            match store.staged_bytes(c.file_id).await? {
                Some(b) => Ok(b),
                None => Err("the clip's bytes are gone".to_owned()),
            }
        };
        match bytes {
            Ok(b) => files.push((name, b)),
            Err(reason) => missing.push(json!({ "file_id": c.file_id, "reason": reason })),
        }
    }
    let clip_name = |id: Option<Uuid>| {
        let c = clips.iter().find(|c| Some(c.file_id) == id)?;
        let name = format!("clips/{}.{}", c.file_id, c.file_type);
        files.iter().any(|(n, _)| *n == name).then_some(name)
    };
    let transcript = json!({
        "session": session,
        "messages": messages.iter().map(|m| {
            let mut v = serde_json::to_value(m).unwrap_or_default();
            v["clip"] = json!(clip_name(m.audio_file_id));
            v
        }).collect::<Vec<_>>(),
        "clips": clips,
        "missing_clips": missing,
    });
    let werr = |e: zip::result::ZipError| ExportError::Write(e.to_string());
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    // Clips are Ogg-Opus (already compressed) and the transcript is small: stored as is.
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    zip.start_file("conversation.json", opts).map_err(werr)?;
    let text = serde_json::to_vec_pretty(&transcript).map_err(|e| ExportError::Write(e.to_string()))?;
    zip.write_all(&text).map_err(|e| ExportError::Write(e.to_string()))?;
    for (name, bytes) in &files {
        zip.start_file(name.as_str(), opts).map_err(werr)?;
        zip.write_all(bytes).map_err(|e| ExportError::Write(e.to_string()))?;
    }
    Ok(Some(zip.finish().map_err(werr)?.into_inner()))
}

/// A time bound as operators write it: RFC 3339 (`2026-12-02T08:00:00Z`) or a date
/// (`2026-12-02`, midnight UTC).
pub fn parse_time_bound(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(day.and_hms_opt(0, 0, 0)?.and_utc())
}

/// `xiaozhi-gateway export`: what the admin API exports, straight from the database.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Export one conversation as a .zip (transcript and clips) instead of messages.
    #[arg(long, value_name = "SESSION_ID")]
    pub conversation: Option<Uuid>,
    /// Only this device's messages.
    #[arg(long)]
    pub device_id: Option<String>,
    /// Messages created at or after (RFC 3339 time or YYYY-MM-DD).
    #[arg(long, value_parser = time_arg)]
    pub from: Option<DateTime<Utc>>,
    /// Messages created before (RFC 3339 time or YYYY-MM-DD).
    #[arg(long, value_parser = time_arg)]
    pub to: Option<DateTime<Utc>>,
    /// jsonl or csv.
    #[arg(long, default_value = "jsonl", value_parser = format_arg)]
    pub format: ExportFormat,
    /// Where to write (a .zip for --conversation).
    #[arg(long, short, value_name = "FILE")]
    pub output: std::path::PathBuf,
}

fn time_arg(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_bound(s).ok_or_else(|| format!("{s:?} is neither an RFC 3339 time nor a YYYY-MM-DD date"))
}

fn format_arg(s: &str) -> Result<ExportFormat, String> {
    ExportFormat::parse(s).ok_or_else(|| format!("{s:?}: the format is jsonl or csv"))
}

/// `xiaozhi-gateway export` with the configured database and object storage.
pub async fn run_configured(settings: &crate::config::Settings, args: &ExportArgs) -> anyhow::Result<u64> {
    crate::install_crypto_provider();
    let store = crate::store::open(settings).await?;
    let storage = ClipStorage::open(settings).await?;
    run_cli(&store, &storage, args).await
}

/// Runs the export with a progress bar on stderr; returns how many messages (or clips) went out.
pub async fn run_cli(store: &Store, storage: &ClipStorage, args: &ExportArgs) -> anyhow::Result<u64> {
    use anyhow::Context;
    let out = &args.output;
    if let Some(id) = args.conversation {
        let zip =
            conversation_zip(store, storage, id).await?.with_context(|| format!("no conversation {id}"))?;
        std::fs::write(out, &zip).with_context(|| format!("cannot write {}", out.display()))?;
        return Ok(zip.len() as u64);
    }
    let filter = ExportFilter {
        device_id: args.device_id.as_deref().map(str::to_ascii_lowercase),
        from: args.from,
        to: args.to,
    };
    let total = store.export_count(&filter).await?;
    let bar = indicatif::ProgressBar::new(total.max(0) as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} messages, {per_sec}, {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let file = std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut file = std::io::BufWriter::new(file);
    let mut export = MessageExport::new(store.clone(), filter, args.format);
    let mut written = 0u64;
    while let Some((bytes, n)) = export.next_chunk().await? {
        file.write_all(&bytes).with_context(|| format!("cannot write {}", out.display()))?;
        written += n as u64;
        bar.inc(n as u64);
    }
    file.flush().with_context(|| format!("cannot write {}", out.display()))?;
    bar.finish();
    Ok(written)
}
