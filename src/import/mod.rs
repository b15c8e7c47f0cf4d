//! `xiaozhi-gateway import`: moving in from the servers people already run.
//!
//! * [`mysql`]: the xinnan-tech Python server's manager database (history, clips, devices,
//!   per-device prompts);
//! * [`redis`]: the Go server's Redis memory (history and per-device prompts);
//! * [`pg`]: the Go server's PostgreSQL branch (the starting design's own schema) and its
//!   MinIO clips.
//!
//! This file is the part every source shares: the command line, deterministic ids (UUIDv5 of
//! the source's keys, so a re-run or a resumed run adds nothing twice) and the [`Sink`] that
//! writes through the store's normal write path ([`Store::write_batch`]: one transaction per
//! batch; clips staged in the upload outbox for the gateway's upload pool), counts what was
//! imported, already present or rejected, keeps a report file and draws the progress bar.
//! Sources stream; the sink holds one batch at a time, so memory stays flat on any size.

pub mod mysql;
pub mod pg;
pub mod redis;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Settings;
use crate::store::model::{ClipRecord, DeviceSighting, MessageRecord, SessionRecord, StoreOp, TurnRecord};
use crate::store::{Pool, Store, StoreError, Ts};

/// Runs the same statement text on whichever backend the target store has.
macro_rules! with_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match $store.pool() {
            Pool::Postgres($p) => $body,
            Pool::Sqlite($p) => $body,
        }
    };
}

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

/// A conversation part is handed to the sink at this many messages…
const PART_MESSAGES: usize = 200;
/// …or this many clip bytes, so that a long conversation never sits in memory whole.
const PART_BYTES: usize = 8 << 20;

/// A conversation being assembled from streamed rows; handed to the sink in bounded parts.
pub(crate) struct Part {
    /// The source's grouping key (its session id, or a device for rows without one).
    pub key: String,
    pub session: SessionRecord,
    /// When the source says the conversation ended (else: its last message).
    pub ended_at: Option<DateTime<Utc>>,
    messages: Vec<MessageRecord>,
    clips: Vec<ClipRecord>,
    bytes: usize,
    next_seq: i32,
    first_part: bool,
    pub last_at: DateTime<Utc>,
}

impl Part {
    pub(crate) fn new(key: String, session: SessionRecord) -> Self {
        let at = session.started_at;
        Part {
            key,
            session,
            ended_at: None,
            messages: Vec::new(),
            clips: Vec::new(),
            bytes: 0,
            next_seq: 0,
            first_part: true,
            last_at: at,
        }
    }

    /// Adds the next message (numbered in arrival order) and its clip; hands a full part on.
    pub(crate) async fn push(
        &mut self,
        sink: &mut Sink,
        mut message: MessageRecord,
        clip: Option<ClipRecord>,
    ) -> Result<(), ImportError> {
        message.sequence_num = self.next_seq;
        self.next_seq += 1;
        self.last_at = message.created_at;
        self.messages.push(message);
        if let Some(c) = clip {
            self.bytes += c.data.len();
            self.clips.push(c);
        }
        if self.messages.len() >= PART_MESSAGES || self.bytes >= PART_BYTES {
            let turn = self.turn();
            let first = std::mem::replace(&mut self.first_part, false);
            sink.conversation(turn, first, None).await?;
        }
        Ok(())
    }

    /// Hands the rest on and marks the conversation ended.
    pub(crate) async fn close(mut self, sink: &mut Sink) -> Result<(), ImportError> {
        let turn = self.turn();
        sink.conversation(turn, self.first_part, Some(self.ended_at.unwrap_or(self.last_at))).await
    }

    fn turn(&mut self) -> TurnRecord {
        self.bytes = 0;
        TurnRecord {
            session: self.session.clone(),
            device_id: self.session.device_id.clone(),
            messages: std::mem::take(&mut self.messages),
            clips: std::mem::take(&mut self.clips),
        }
    }
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

/// Where imported records go: batched writes through the store, counts, the report file and
/// the progress bar. In a dry run it only counts.
pub struct Sink {
    store: Option<Store>,
    batch: usize,
    /// Bucket clips are filed under (the configured one).
    pub(crate) bucket: String,
    ops: Vec<StoreOp>,
    queued_messages: usize,
    queued_bytes: usize,
    summary: Summary,
    report: std::io::BufWriter<std::fs::File>,
    report_path: PathBuf,
    progress: ProgressBar,
}

impl Sink {
    async fn open(source: &str, common: &CommonArgs, settings: &Settings) -> Result<Self, ImportError> {
        let report_path = common.report.clone().unwrap_or_else(|| {
            settings.data_dir.join(format!("import-{source}-{}.txt", Utc::now().format("%Y%m%dT%H%M%SZ")))
        });
        let io = |error| ImportError::Report { path: report_path.clone(), error };
        if let Some(dir) = report_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let report = std::io::BufWriter::new(std::fs::File::create(&report_path).map_err(io)?);
        let store = if common.dry_run {
            None
        } else {
            std::fs::create_dir_all(&settings.data_dir).map_err(io)?;
            let opts = crate::store::PoolOptions {
                max_connections: settings.database.max_connections,
                acquire_timeout: Duration::from_millis(settings.database.acquire_timeout_ms),
            };
            let store = Store::connect(&settings.database, &settings.data_dir, &opts).await?;
            store.migrate().await?;
            Some(store)
        };
        let progress = ProgressBar::hidden();
        Ok(Sink {
            store,
            batch: common.batch.max(1),
            bucket: settings.storage.bucket.clone(),
            ops: Vec::new(),
            queued_messages: 0,
            queued_bytes: 0,
            summary: Summary {
                source: source.to_owned(),
                dry_run: common.dry_run,
                report_file: report_path.clone(),
                ..Summary::default()
            },
            report,
            report_path,
            progress,
        })
    }

    /// Shows a progress bar on a terminal: `total` messages when the source knows it.
    pub(crate) fn start_progress(&mut self, total: Option<u64>) {
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} messages  {per_sec}  eta {eta}  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {pos} messages  {per_sec}  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.enable_steady_tick(Duration::from_millis(200));
        self.progress = bar;
    }

    pub(crate) fn is_dry_run(&self) -> bool {
        self.store.is_none()
    }

    /// Reports a row that cannot be imported; the import goes on.
    pub(crate) fn reject(&mut self, what: &str, reason: &str) {
        let _ = writeln!(self.report, "rejected\t{what}\t{reason}");
        self.progress.set_message(format!("{} rejected", self.rejected_total() + 1));
    }

    pub(crate) fn reject_message(&mut self, what: &str, reason: &str) {
        self.reject(what, reason);
        self.summary.messages.rejected += 1;
        self.progress.inc(1);
    }

    pub(crate) fn reject_clip(&mut self, what: &str, reason: &str) {
        self.reject(what, reason);
        self.summary.clips.rejected += 1;
    }

    pub(crate) fn reject_device(&mut self, what: &str, reason: &str) {
        self.reject(what, reason);
        self.summary.devices.rejected += 1;
    }

    fn rejected_total(&self) -> u64 {
        let s = &self.summary;
        s.messages.rejected + s.clips.rejected + s.devices.rejected + s.prompts.rejected
    }

    /// One conversation's messages (a part of them for long ones) with their clips;
    /// `ended_at` on its last part. Messages and clips already in the store are skipped.
    pub(crate) async fn conversation(
        &mut self,
        mut turn: TurnRecord,
        first_part: bool,
        ended_at: Option<DateTime<Utc>>,
    ) -> Result<(), ImportError> {
        let (present_messages, present_clips, session_present) = match &self.store {
            Some(store) => existing(store, turn.session.session_id).await?,
            None => Default::default(),
        };
        if first_part {
            if session_present {
                self.summary.conversations.present += 1;
            } else {
                self.summary.conversations.imported += 1;
            }
        }
        if self.is_dry_run() && self.summary.samples.len() < 3 {
            for m in turn.messages.iter().take(3 - self.summary.samples.len()) {
                let text: String = m.content.chars().take(60).collect();
                self.summary.samples.push(format!(
                    "{} {} {}: {text}",
                    turn.device_id,
                    m.created_at,
                    m.role.as_str()
                ));
            }
        }
        let before = (turn.messages.len(), turn.clips.len());
        turn.messages.retain(|m| !present_messages.contains(&m.message_id));
        turn.clips.retain(|c| !present_clips.contains(&c.file_id));
        self.summary.messages.present += (before.0 - turn.messages.len()) as u64;
        self.summary.clips.present += (before.1 - turn.clips.len()) as u64;
        self.progress.inc(before.0 as u64);
        self.queued_messages += turn.messages.len();
        self.queued_bytes += turn.clips.iter().map(|c| c.data.len()).sum::<usize>();
        let session = turn.session.clone();
        if !turn.messages.is_empty() || !turn.clips.is_empty() {
            self.ops.push(StoreOp::Turn(Box::new(turn)));
        }
        if let Some(ended_at) = ended_at {
            self.ops.push(StoreOp::SessionEnded { session, ended_at });
        }
        if self.queued_messages >= self.batch || self.queued_bytes >= 16 << 20 {
            self.flush().await?;
        }
        Ok(())
    }

    /// A device; counted as present when the store already knows it.
    pub(crate) async fn device(&mut self, sighting: DeviceSighting) -> Result<(), ImportError> {
        const KNOWN: &str = "SELECT COUNT(*) FROM devices WHERE device_id = $1";
        if let Some(store) = &self.store {
            let n: i64 = with_pool!(store, p => sqlx::query_scalar(store.sql(KNOWN)).bind(&sighting.device_id).fetch_one(p).await)
                .map_err(StoreError::from)?;
            if n > 0 {
                self.summary.devices.present += 1;
                return Ok(());
            }
        }
        self.summary.devices.imported += 1;
        self.ops.push(StoreOp::DeviceSeen(sighting));
        Ok(())
    }

    /// A device's prompt, made its active one unless this very prompt was imported before.
    pub(crate) async fn prompt(
        &mut self,
        device_id: &str,
        prompt_id: Uuid,
        prompt: &str,
    ) -> Result<(), ImportError> {
        const KNOWN: &str = "SELECT COUNT(*) FROM system_prompts WHERE prompt_id = $1";
        const DEACTIVATE: &str =
            "UPDATE system_prompts SET is_active = FALSE, updated_at = $2 WHERE device_id = $1 AND is_active";
        const INSERT: &str = "INSERT INTO system_prompts (prompt_id, device_id, prompt, is_active, created_at, updated_at) \
             VALUES ($1, $2, $3, TRUE, $4, $4)";
        let Some(store) = &self.store else {
            self.summary.prompts.imported += 1;
            return Ok(());
        };
        let now = Ts(Utc::now());
        let imported = with_pool!(store, p => {
            let mut tx = p.begin_with(store.begin_write()).await?;
            let n: i64 = sqlx::query_scalar(store.sql(KNOWN)).bind(prompt_id).fetch_one(&mut *tx).await?;
            if n == 0 {
                sqlx::query(store.sql(DEACTIVATE)).bind(device_id).bind(now).execute(&mut *tx).await?;
                sqlx::query(store.sql(INSERT)).bind(prompt_id).bind(device_id).bind(prompt).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(n == 0)
        })
        .map_err(StoreError::from)?;
        if imported {
            self.summary.prompts.imported += 1;
        } else {
            self.summary.prompts.present += 1;
        }
        Ok(())
    }

    /// Writes what is queued: one transaction; a batch the database refuses is split so that
    /// one bad conversation does not hold back the rest, and what still fails is reported.
    pub(crate) async fn flush(&mut self) -> Result<(), ImportError> {
        let ops = std::mem::take(&mut self.ops);
        self.queued_messages = 0;
        self.queued_bytes = 0;
        let Some(store) = self.store.clone() else {
            for op in &ops {
                self.count_written(op);
            }
            return Ok(());
        };
        if ops.is_empty() {
            return Ok(());
        }
        if write_retrying(&store, &ops).await? {
            for op in &ops {
                self.count_written(op);
            }
            return Ok(());
        }
        for op in ops {
            match store.write_batch(std::slice::from_ref(&op)).await {
                Ok(()) => self.count_written(&op),
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => self.reject_op(&op, &e.to_string()),
            }
        }
        Ok(())
    }

    fn count_written(&mut self, op: &StoreOp) {
        if let StoreOp::Turn(t) = op {
            self.summary.messages.imported += t.messages.len() as u64;
            self.summary.clips.imported += t.clips.len() as u64;
        }
    }

    fn reject_op(&mut self, op: &StoreOp, reason: &str) {
        match op {
            StoreOp::Turn(t) => {
                for m in &t.messages {
                    let _ = writeln!(
                        self.report,
                        "rejected\tmessage {}\tthe store refused it: {reason}",
                        m.message_id
                    );
                }
                self.summary.messages.rejected += t.messages.len() as u64;
                self.summary.clips.rejected += t.clips.len() as u64;
            }
            StoreOp::DeviceSeen(d) => {
                self.summary.devices.imported -= 1;
                self.reject_device(&format!("device {}", d.device_id), reason);
            }
            _ => {
                let _ = writeln!(self.report, "rejected\t{op:?}\t{reason}");
            }
        }
    }

    /// Closes the report file (summary at its end) and the progress bar.
    fn finish(mut self, aborted: Option<ImportError>) -> Result<Summary, (PathBuf, std::io::Error)> {
        self.progress.finish_and_clear();
        self.summary.aborted = aborted.map(|e| e.to_string());
        let text = self.summary.text();
        let path = self.report_path.clone();
        self.report.write_all(text.as_bytes()).and_then(|()| self.report.flush()).map_err(|e| (path, e))?;
        Ok(self.summary)
    }
}

/// Commits a batch, retrying while the database is away (a minute at most). `Ok(false)`: the
/// database refused the batch for good.
async fn write_retrying(store: &Store, ops: &[StoreOp]) -> Result<bool, ImportError> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..12 {
        match store.write_batch(ops).await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "target database unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(_) => return Ok(false),
        }
    }
    store.write_batch(ops).await.map(|()| true).map_err(Into::into)
}

/// What the store already holds of a session: message ids, clip ids, and whether it exists.
async fn existing(
    store: &Store,
    session_id: Uuid,
) -> Result<(HashSet<Uuid>, HashSet<Uuid>, bool), ImportError> {
    const MESSAGES: &str = "SELECT message_id FROM conversation_messages WHERE session_id = $1";
    const CLIPS: &str = "SELECT file_id FROM audio_files WHERE session_id = $1";
    const SESSION: &str = "SELECT COUNT(*) FROM conversation_sessions WHERE session_id = $1";
    let (m, c, s) = with_pool!(store, p => {
        let m: Vec<Uuid> = sqlx::query_scalar(store.sql(MESSAGES)).bind(session_id).fetch_all(p).await?;
        let c: Vec<Uuid> = sqlx::query_scalar(store.sql(CLIPS)).bind(session_id).fetch_all(p).await?;
        let s: i64 = sqlx::query_scalar(store.sql(SESSION)).bind(session_id).fetch_one(p).await?;
        Ok::<_, sqlx::Error>((m, c, s))
    })
    .map_err(StoreError::from)?;
    Ok((m.into_iter().collect(), c.into_iter().collect(), s > 0))
}
