//! The [`Sink`] every source writes into: conversations arrive in bounded [`Part`]s and go to
//! the store's normal write path ([`Store::write_batch`]: one transaction per batch, clips
//! staged in the upload outbox); what the store already holds is counted as present and left
//! alone; rows the store refuses are reported. It also keeps the report file and the
//! progress bar. In a dry run it only counts.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

use super::{CommonArgs, ImportError, Summary};
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
    pub(super) async fn open(
        source: &str,
        common: &CommonArgs,
        settings: &Settings,
    ) -> Result<Self, ImportError> {
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
            let opts = crate::store::PoolOptions::from_settings(&settings.database);
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
    pub(super) fn finish(
        mut self,
        aborted: Option<ImportError>,
    ) -> Result<Summary, (PathBuf, std::io::Error)> {
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
