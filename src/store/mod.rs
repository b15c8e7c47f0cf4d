//! The conversation store: PostgreSQL in production, SQLite for the embedded default, behind
//! one [`Store`] and tested by one conformance suite.
//!
//! * [`model`]: the records a session hands over and the rows queries return.
//! * `writes`: one transaction per batch of turns (idempotent: gateway-generated ids).
//! * [`queries`]: history (the assistant's memory) and the admin listings.
//! * `outbox`: the durable upload queue for clips and the deletion queue for objects.
//! * [`writer`]: the background writer sessions hand records to over a bounded queue.
//! * `retention`: the scheduled deletion of expired conversations.
//! * [`search`]: finding messages by their text (trigram indexes on both backends).
//! * [`devices`] and [`stats`]: the operator's views of devices and of activity per day.
//! * [`vectors`]: message embeddings (search by meaning), scored in the gateway.
//! * [`listing`]: conversations by device, time and status; a conversation's messages by page.
//! * [`keep`]: which clips are kept (`XIAOZHI_KEEP_AUDIO`), user clips' transcriptions.
//! * [`export`]: messages in batches, oldest first, for exports of any size.
//!
//! Both backends run the same SQL text (written with `$N` placeholders, rewritten to `?N` for
//! SQLite) and bind the same Rust types; only the DDL in `migrations/` differs. Timestamps go
//! through [`Ts`], which is `timestamptz` on PostgreSQL and integer microseconds on SQLite.
//! Nothing here may be awaited by a session's audio loop.

pub mod devices;
pub mod export;
pub mod keep;
pub mod listing;
pub mod model;
pub(crate) mod outbox;
pub mod queries;
pub(crate) mod retention;
pub mod search;
pub mod stats;
pub mod vectors;
pub mod writer;
pub(crate) mod writes;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::{DatabaseKind, DatabaseSettings};

/// Connects to the configured database and brings its schema up to date, waiting a while for
/// a database that is still starting; a schema newer than this binary is refused at once.
pub async fn open(settings: &crate::config::Settings) -> Result<Store, StoreError> {
    let opts = PoolOptions::from_settings(&settings.database);
    let store = Store::connect(&settings.database, &settings.data_dir, &opts).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(store),
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A connection pool to one of the two backends.
#[derive(Clone, Debug)]
pub enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The conversation store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
}

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database schema is at version {found}, newer than this binary knows ({known}); run a newer gateway"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("invalid database setting: {0}")]
    Config(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying later may succeed (the database is unreachable, busy or restarting),
    /// as opposed to a write the database will never accept.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => is_transient(e),
            _ => false,
        }
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or(Cow::Borrowed(""));
            match code.parse::<i32>() {
                // SQLite (numeric extended codes): BUSY, LOCKED, IOERR, CANTOPEN.
                Ok(n) => matches!(n & 0xff, 5 | 6 | 10 | 14),
                // PostgreSQL: connection exceptions (08), shutdown (57P), serialization and
                // deadlock (40), insufficient resources (53).
                Err(_) => ["08", "57P", "40", "53"].iter().any(|p| code.starts_with(p)),
            }
        }
        _ => false,
    }
}

/// Runs the same statement text on whichever backend the store has.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Postgres($pool) => $body,
            $crate::store::Pool::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// A statement's text for the given backend: `$N` placeholders become `?N` on SQLite.
pub(crate) fn sql_for(pool: &Pool, q: &'static str) -> &'static str {
    match pool {
        Pool::Postgres(_) => q,
        Pool::Sqlite(_) => {
            static CACHE: Mutex<Option<HashMap<(usize, usize), &'static str>>> = Mutex::new(None);
            let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
            let map = guard.get_or_insert_with(HashMap::new);
            map.entry((q.as_ptr() as usize, q.len()))
                .or_insert_with(|| Box::leak(q.replace('$', "?").into_boxed_str()))
        }
    }
}

/// A point in time as the store keeps it: `timestamptz` on PostgreSQL, microseconds since the
/// epoch on SQLite (so that ordering and comparisons are numeric and exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ts(pub DateTime<Utc>);

mod ts_impls {
    use super::Ts;
    use chrono::{DateTime, Utc};
    use sqlx::encode::IsNull;
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef, Postgres};
    use sqlx::sqlite::{Sqlite, SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
    use sqlx::{Decode, Encode, Type};

    impl Type<Postgres> for Ts {
        fn type_info() -> PgTypeInfo {
            <DateTime<Utc> as Type<Postgres>>::type_info()
        }
        fn compatible(ty: &PgTypeInfo) -> bool {
            <DateTime<Utc> as Type<Postgres>>::compatible(ty)
        }
    }
    impl Encode<'_, Postgres> for Ts {
        fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
            Encode::<Postgres>::encode_by_ref(&self.0, buf)
        }
    }
    impl<'r> Decode<'r, Postgres> for Ts {
        fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
            Ok(Ts(<DateTime<Utc> as Decode<Postgres>>::decode(value)?))
        }
    }
    impl Type<Sqlite> for Ts {
        fn type_info() -> SqliteTypeInfo {
            <i64 as Type<Sqlite>>::type_info()
        }
        fn compatible(ty: &SqliteTypeInfo) -> bool {
            <i64 as Type<Sqlite>>::compatible(ty)
        }
    }
    impl Encode<'_, Sqlite> for Ts {
        fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
            Encode::<Sqlite>::encode(self.0.timestamp_micros(), buf)
        }
    }
    impl<'r> Decode<'r, Sqlite> for Ts {
        fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
            let micros = <i64 as Decode<Sqlite>>::decode(value)?;
            DateTime::from_timestamp_micros(micros)
                .map(Ts)
                .ok_or_else(|| format!("timestamp {micros} out of range").into())
        }
    }
}

fn migrations(kind: DatabaseKind) -> Vec<Migration> {
    let files: &[(i64, &str, &str)] = match kind {
        DatabaseKind::Postgres => &[
            (1, "initial", include_str!("../../migrations/postgres/0001_initial.sql")),
            (2, "deleted sessions", include_str!("../../migrations/postgres/0002_deleted_sessions.sql")),
            (3, "search", include_str!("../../migrations/postgres/0003_search.sql")),
            (4, "embeddings", include_str!("../../migrations/postgres/0004_embeddings.sql")),
        ],
        DatabaseKind::Sqlite => &[
            (1, "initial", include_str!("../../migrations/sqlite/0001_initial.sql")),
            (2, "deleted sessions", include_str!("../../migrations/sqlite/0002_deleted_sessions.sql")),
            (3, "search", include_str!("../../migrations/sqlite/0003_search.sql")),
            (4, "embeddings", include_str!("../../migrations/sqlite/0004_embeddings.sql")),
        ],
    };
    files
        .iter()
        .map(|(v, d, sql)| {
            Migration::new(
                *v,
                Cow::Borrowed(*d),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(*sql),
                false,
            )
        })
        .collect()
}

/// The newest schema version this binary knows.
pub fn schema_version() -> i64 {
    migrations(DatabaseKind::Postgres).iter().map(|m| m.version).max().unwrap_or(0)
}

/// Pool sizing and timeouts.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection (`None`: the server's own).
    pub statement_timeout: Option<Duration>,
    /// Pool connections idle this long are closed (`None`: kept).
    pub idle_timeout: Option<Duration>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

impl PoolOptions {
    /// The pool the settings describe (0 switches a timeout off).
    pub fn from_settings(db: &DatabaseSettings) -> Self {
        let positive = |d: Duration| (!d.is_zero()).then_some(d);
        Self {
            max_connections: db.max_connections,
            acquire_timeout: Duration::from_millis(db.acquire_timeout_ms),
            statement_timeout: positive(Duration::from_millis(db.statement_timeout_ms)),
            idle_timeout: positive(Duration::from_secs(db.idle_timeout_secs)),
        }
    }
}

impl Store {
    /// Connects as configured (`DB_*`, `DATABASE_URL`, or SQLite under `data_dir`). Does not
    /// migrate: call [`Store::migrate`].
    pub async fn connect(
        settings: &DatabaseSettings,
        data_dir: &Path,
        opts: &PoolOptions,
    ) -> Result<Self, StoreError> {
        let url = settings.url.as_deref();
        let kind = match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                DatabaseKind::Postgres
            }
            Some(u) if u.starts_with("sqlite:") => DatabaseKind::Sqlite,
            Some(u) => {
                return Err(StoreError::Config(format!(
                    "DATABASE_URL {u:?} is neither postgres:// nor sqlite:"
                )));
            }
            None => settings.kind,
        };
        match kind {
            DatabaseKind::Postgres => {
                let options = match url {
                    Some(u) => PgConnectOptions::from_str(u)?,
                    None => PgConnectOptions::new()
                        .host(&settings.host)
                        .port(settings.port)
                        .username(&settings.user)
                        .password(&settings.password)
                        .database(&settings.name)
                        .ssl_mode(match settings.ssl_mode.as_str() {
                            "require" => PgSslMode::Require,
                            "verify-ca" => PgSslMode::VerifyCa,
                            "verify-full" => PgSslMode::VerifyFull,
                            _ => PgSslMode::Disable,
                        }),
                };
                let options = match opts.statement_timeout {
                    Some(t) => options.options([("statement_timeout", t.as_millis().to_string())]),
                    None => options,
                };
                let pool = PgPoolOptions::new()
                    .max_connections(opts.max_connections)
                    .acquire_timeout(opts.acquire_timeout)
                    .idle_timeout(opts.idle_timeout)
                    .connect_lazy_with(options.application_name("xiaozhi-gateway"));
                Ok(Store { pool: Pool::Postgres(pool) })
            }
            DatabaseKind::Sqlite => {
                let options = match url {
                    Some(u) => SqliteConnectOptions::from_str(u)?,
                    None => SqliteConnectOptions::new().filename(data_dir.join("xiaozhi.db")),
                };
                let options = options
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(2));
                // One writer at a time is what SQLite does anyway; readers share the rest.
                let pool = SqlitePoolOptions::new()
                    .max_connections(opts.max_connections.max(2))
                    .acquire_timeout(opts.acquire_timeout)
                    .idle_timeout(opts.idle_timeout)
                    .connect_lazy_with(options);
                Ok(Store { pool: Pool::Sqlite(pool) })
            }
        }
    }

    /// Connects to a URL (tests and tools).
    pub async fn connect_url(url: &str) -> Result<Self, StoreError> {
        Self::connect_url_with(url, &PoolOptions::default()).await
    }

    /// Connects to a URL with explicit pool options.
    pub async fn connect_url_with(url: &str, opts: &PoolOptions) -> Result<Self, StoreError> {
        let settings = DatabaseSettings { url: Some(url.to_owned()), ..DatabaseSettings::default() };
        Self::connect(&settings, Path::new("."), opts).await
    }

    pub fn kind(&self) -> DatabaseKind {
        match self.pool {
            Pool::Postgres(_) => DatabaseKind::Postgres,
            Pool::Sqlite(_) => DatabaseKind::Sqlite,
        }
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The statement that opens a write transaction. SQLite's default (deferred) transaction
    /// that reads before it writes fails at once with SQLITE_BUSY_SNAPSHOT when another
    /// connection wrote in between; `BEGIN IMMEDIATE` takes the write lock first and waits
    /// for it (busy timeout) instead.
    pub(crate) fn begin_write(&self) -> &'static str {
        match &self.pool {
            Pool::Postgres(_) => "BEGIN",
            Pool::Sqlite(_) => "BEGIN IMMEDIATE",
        }
    }

    pub(crate) fn sql(&self, q: &'static str) -> &'static str {
        sql_for(&self.pool, q)
    }

    /// Applies pending migrations; refuses a schema newer than this binary.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let applied = self.applied_version().await?;
        let known = schema_version();
        if applied > known {
            return Err(StoreError::SchemaTooNew { found: applied, known });
        }
        let migrator = Migrator::with_migrations(migrations(self.kind()));
        with_pool!(self, p => migrator.run(p).await)?;
        Ok(())
    }

    /// The highest applied migration (0 for an empty database).
    pub async fn applied_version(&self) -> Result<i64, StoreError> {
        let exists_sql = match self.pool {
            Pool::Postgres(_) => {
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations'"
            }
            Pool::Sqlite(_) => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
        };
        let exists: i64 = with_pool!(self, p => sqlx::query_scalar(exists_sql).fetch_one(p).await)?;
        if exists == 0 {
            return Ok(0);
        }
        let v: Option<i64> = with_pool!(self, p => sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success").fetch_one(p).await)?;
        Ok(v.unwrap_or(0))
    }

    /// Whether the database answers (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: i32 = with_pool!(self, p => sqlx::query_scalar("SELECT 1").fetch_one(p).await)?;
        Ok(())
    }

    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }
}
