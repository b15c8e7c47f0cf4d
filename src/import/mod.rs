//! `xiaozhi-gateway import`: moving in from the servers people already run.
//!
//! * [`mysql`]: the xinnan-tech Python server's manager database (history, clips, devices,
//!   per-device prompts);
//! * [`redis`]: the Go server's Redis memory (history and per-device prompts);
//! * [`pg`]: the Go server's PostgreSQL branch (the starting design's own schema) and its
//!   MinIO clips.
//!
//! This file is the part every source shares: the command line, deterministic ids (UUIDv5 of
//! the source's keys, so a re-run or a resumed run adds nothing twice), WAV clips and the
//! closing report. [`Sink`] writes through the store's normal write path (one transaction
//! per batch; clips staged in the upload outbox for the gateway's upload pool) and counts
//! what was imported, already present or rejected. Sources stream; the sink holds one batch
//! at a time, so memory stays flat on any size.

pub mod mysql;
pub mod pg;
pub mod redis;
mod sink;

pub(crate) use sink::Part;
pub use sink::Sink;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Settings;
use crate::store::StoreError;
use crate::store::model::ClipRecord;

/// `xiaozhi-gateway import <source>`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub source: Source,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// What every import takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Count and show a few samples; write nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Where the closing report (with every rejected row and why) is written; default:
    /// `import-<source>-<time>.txt` under the data dir.
    #[arg(long, global = true, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Messages per transaction.
    #[arg(long, global = true, default_value_t = 500)]
    pub batch: usize,
}

/// The sources.
#[derive(Debug, clap::Subcommand)]
pub enum Source {
    /// The xinnan-tech Python server's manager database (MySQL/MariaDB).
    Mysql(mysql::MysqlArgs),
    /// The Go server's Redis memory.
    Redis(redis::RedisArgs),
    /// The Go server's PostgreSQL database (the starting design's schema) and MinIO clips.
    Pg(pg::PgArgs),
}

/// What went wrong so badly that the import stops (a row that cannot be imported is
/// reported and skipped instead).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("source: {0}")]
    Source(String),
    #[error("target store: {0}")]
    Store(#[from] StoreError),
    #[error("report file {path}: {error}")]
    Report { path: PathBuf, error: std::io::Error },
}

impl From<sqlx::Error> for ImportError {
    fn from(e: sqlx::Error) -> Self {
        ImportError::Store(StoreError::Db(e))
    }
}

/// Runs an import into the store `settings` name; returns the closing report.
pub async fn run(args: ImportArgs, settings: &Settings) -> Result<Summary, ImportError> {
    crate::install_crypto_provider();
    let name = match &args.source {
        Source::Mysql(_) => "mysql",
        Source::Redis(_) => "redis",
        Source::Pg(_) => "pg",
    };
    let mut sink = Sink::open(name, &args.common, settings).await?;
    let result = match &args.source {
        Source::Mysql(a) => mysql::import(a, &mut sink).await,
        Source::Redis(a) => redis::import(a, &mut sink).await,
        Source::Pg(a) => pg::import(a, &mut sink).await,
    };
    let flushed = sink.flush().await;
    let summary = sink.finish(result.and(flushed).err());
    summary.map_err(|e| ImportError::Report { path: e.0, error: e.1 })
}

/// A deterministic id: the same source key always gives the same id.
pub(crate) fn stable_id(source: &str, kind: &str, key: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("xiaozhi-gateway-import:{source}/{kind}/{key}").as_bytes())
}

/// Hex SHA-256, as clips carry it.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A device id as the gateway sees it: the MAC, lower case, colons kept.
pub(crate) fn device_id(mac: &str) -> String {
    mac.trim().to_ascii_lowercase()
}

/// A WAV clip (kept byte for byte) for `message_id`, or why it cannot be one.
pub(crate) fn wav_clip(
    file_id: Uuid,
    message_id: Uuid,
    session_id: Uuid,
    device_id: &str,
    bucket: &str,
    at: DateTime<Utc>,
    data: Vec<u8>,
) -> Result<ClipRecord, String> {
    let reader =
        hound::WavReader::new(std::io::Cursor::new(&data[..])).map_err(|e| format!("not a WAV: {e}"))?;
    let spec = reader.spec();
    if spec.sample_rate == 0 || spec.channels == 0 {
        return Err("WAV header without a sample rate or channels".into());
    }
    let duration_ms = u64::from(reader.duration()) * 1000 / u64::from(spec.sample_rate);
    Ok(ClipRecord {
        file_id,
        message_id,
        bucket_name: bucket.to_owned(),
        object_key: crate::session::record::object_key(device_id, at, session_id, file_id, "wav"),
        file_type: "wav".into(),
        duration_ms: i32::try_from(duration_ms).unwrap_or(i32::MAX),
        sample_rate: spec.sample_rate as i32,
        channels: spec.channels as i16,
        source_type: crate::store::model::SourceType::User,
        transcription: None,
        metadata: serde_json::json!({ "imported": true }),
        checksum: sha256_hex(&data),
        data: bytes::Bytes::from(data),
        created_at: at,
    })
}
/// Counts of one kind of thing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub imported: u64,
    pub present: u64,
    pub rejected: u64,
}

/// The closing report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub source: String,
    pub dry_run: bool,
    pub conversations: Tally,
    pub messages: Tally,
    pub clips: Tally,
    pub devices: Tally,
    pub prompts: Tally,
    /// A few messages as they would land (dry run).
    pub samples: Vec<String>,
    pub report_file: PathBuf,
    /// Why the import stopped early, if it did.
    pub aborted: Option<String>,
}

impl Summary {
    /// The report as people read it.
    pub fn text(&self) -> String {
        let mut out = format!(
            "import {}{}\n",
            self.source,
            if self.dry_run { " (dry run: nothing written; counts are what would be imported)" } else { "" }
        );
        for (what, t) in [
            ("conversations", self.conversations),
            ("messages", self.messages),
            ("clips", self.clips),
            ("devices", self.devices),
            ("prompts", self.prompts),
        ] {
            out.push_str(&format!(
                "  {what:<14} {:>8} imported {:>8} already present {:>6} rejected\n",
                t.imported, t.present, t.rejected
            ));
        }
        for s in &self.samples {
            out.push_str(&format!("  sample: {s}\n"));
        }
        if let Some(why) = &self.aborted {
            out.push_str(&format!("  STOPPED EARLY: {why} (run again to resume: nothing is added twice)\n"));
        }
        out.push_str(&format!("  report: {}\n", self.report_file.display()));
        out
    }
}
