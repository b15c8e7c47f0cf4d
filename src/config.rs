//! Configuration: defaults < config file (`--config FILE`, TOML) < environment, parsed into
//! typed [`Settings`] once at start-up and validated there. Nothing reads the environment
//! later. Every setting is listed once in [`SETTINGS`] (environment name, key, default,
//! meaning); the environment provider and the configuration reference are both built from it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

mod go_yaml;

/// What `DB_TYPE=mysql` (or `database.type: mysql`) is answered with.
pub const MYSQL_HINT: &str = "MySQL is not a live backend; import it with `xiaozhi-gateway import mysql` and run on PostgreSQL or SQLite";

/// Environment names another part of the starting design uses, read as aliases of ours (ours
/// win when both are set).
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("MINIO_ACCESS_KEY_ID", "storage.access_key"),
    ("MINIO_SECRET_ACCESS_KEY", "storage.secret_key"),
    ("MINIO_BUCKET_NAME", "storage.bucket"),
];

/// One documented setting: its environment name, its key in the config file, its default
/// and what it means.
pub struct SettingDoc {
    pub env: &'static str,
    pub key: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

macro_rules! settings_table {
    ($( $env:literal => $key:literal, $default:literal, $meaning:literal; )*) => {
        /// Every setting the gateway reads.
        pub const SETTINGS: &[SettingDoc] = &[
            $( SettingDoc { env: $env, key: $key, default: $default, meaning: $meaning }, )*
        ];
    };
}

settings_table! {
    "XIAOZHI_LISTEN" => "listen", "0.0.0.0:8000", "Address of the one HTTP/WebSocket listener.";
    "XIAOZHI_PUBLIC_URL" => "public_url", "", "WebSocket URL the OTA endpoint hands to devices (e.g. wss://voice.example.com/xiaozhi/v1/). Empty: derived from the request's Host header.";
    "XIAOZHI_DATA_DIR" => "data_dir", "./data", "Directory for everything the embedded default writes (SQLite file, local object store).";
    "XIAOZHI_LOG_FORMAT" => "log_format", "auto", "Log output: json, text, or auto (text on a terminal, JSON otherwise).";
    "XIAOZHI_ADMIN_TOKEN" => "admin.token", "", "Bearer token for the admin API under /api; empty: the admin API is disabled.";
    "XIAOZHI_DRAIN_SECS" => "ops.drain_secs", "30", "On SIGTERM/SIGINT, how long turns in progress may take to finish before sessions are closed.";
    "XIAOZHI_READY_MAX_STORE_BACKLOG" => "ops.ready_max_store_backlog", "1000", "/readyz reports 503 when more store writes than this are waiting.";
    "XIAOZHI_READY_MAX_UPLOAD_BACKLOG" => "ops.ready_max_upload_backlog", "5000", "/readyz reports 503 when more clips than this wait for upload.";
    "XIAOZHI_AUTH_TOKENS" => "auth.tokens", "", "Comma-separated static access tokens. Authentication is on when this or auth.secret is set.";
    "XIAOZHI_AUTH_SECRET" => "auth.secret", "", "Secret for HMAC-signed tokens that the OTA endpoint issues, bound to device id and client id.";
    "XIAOZHI_AUTH_OTA_TOKEN" => "auth.ota_token", "", "A static token the OTA endpoint hands to every device (accepted like auth.tokens). Firmware 1.6.1 and later takes its token only from OTA: with static tokens and no auth.secret, set this or devices are refused.";
    "XIAOZHI_AUTH_TOKEN_TTL_SECS" => "auth.token_ttl_secs", "2592000", "Lifetime of OTA-issued tokens (30 days).";
    "XIAOZHI_AUTH_ALLOWED_DEVICES" => "auth.allowed_devices", "", "Comma-separated device ids (MACs) admitted without a token.";
    "XIAOZHI_LIMIT_UPGRADES_PER_SEC" => "limits.upgrades_per_sec", "20", "WebSocket upgrades per second from one source address (burst as large); beyond it HTTP 429 with Retry-After. 0: no limit. Behind a reverse proxy every device shares the proxy's address: raise it or limit at the proxy.";
    "XIAOZHI_LIMIT_OTA_PER_SEC" => "limits.ota_per_sec", "20", "OTA calls per second from one source address (burst as large); beyond it HTTP 429 with Retry-After. 0: no limit.";
    "XIAOZHI_LIMIT_NEW_SESSIONS_PER_SEC" => "limits.new_sessions_per_sec", "200", "New device sessions admitted per second over the whole gateway (a reconnect storm is let in at this pace); beyond it HTTP 503 with Retry-After. Live sessions are not affected. 0: no limit.";
    "XIAOZHI_LIMIT_TURNS_PER_MINUTE" => "limits.turns_per_minute", "30", "Turns one device may take per minute (each may cost a paid LLM call); over it the device hears a short notice. 0: no limit.";
    "XIAOZHI_LIMIT_TURNS_PER_DAY" => "limits.turns_per_day", "2000", "Turns one device may take per day (a rolling allowance). 0: no limit.";
    "XIAOZHI_HTTP_HEADER_TIMEOUT_SECS" => "limits.header_timeout_secs", "10", "How long a client may take to send a request's headers (slow-loris); the connection is closed after it.";
    "XIAOZHI_HTTP_BODY_TIMEOUT_SECS" => "limits.body_timeout_secs", "30", "How long a client may take between the bytes of a request body, on every route; the request fails after it.";
    "XIAOZHI_HELLO_TIMEOUT_MS" => "session.hello_timeout_ms", "10000", "How long a new connection may take to send its hello before it is closed.";
    "XIAOZHI_IDLE_TIMEOUT_SECS" => "session.idle_timeout_secs", "120", "A session without user speech for this long is closed cleanly.";
    "XIAOZHI_TCP_KEEPALIVE_SECS" => "session.tcp_keepalive_secs", "60", "TCP keepalive on every connection: a peer that vanished without closing is found within about this many seconds (0: off). The gateway sends no WebSocket pings (some firmware drops connections that get them).";
    "XIAOZHI_MAX_CONNECTIONS" => "session.max_connections", "10000", "Most concurrent device sessions; further upgrades get HTTP 503.";
    "XIAOZHI_MAX_MESSAGE_BYTES" => "session.max_message_bytes", "65536", "Largest WebSocket message (text or binary) accepted from a device; larger closes with 1009.";
    "XIAOZHI_MAX_UTTERANCE_SECS" => "session.max_utterance_secs", "30", "Longest user utterance kept; audio beyond it ends the turn.";
    "XIAOZHI_VAD_SILENCE_MS" => "session.vad_silence_ms", "600", "Silence after speech that ends a turn in auto and realtime modes.";
    "XIAOZHI_VAD_THRESHOLD" => "session.vad_threshold", "0.5", "Voice probability (0..1) above which a 16 ms frame counts as speech.";
    "XIAOZHI_DOWNLINK_SAMPLE_RATE" => "session.downlink_sample_rate", "24000", "Sample rate of synthesized downlink Opus, announced in the server hello (8000, 12000, 16000, 24000 or 48000). The echo brain announces the uplink's rate instead: it plays the device's own packets back.";
    "XIAOZHI_DOWNLINK_PREBUFFER_FRAMES" => "session.prebuffer_frames", "2", "Reply frames sent ahead of real time (the rest are paced at their playback time).";
    "XIAOZHI_WAKE_WORDS" => "session.wake_words", "你好小智,你好小志,小爱同学,你好小鑫,你好小新,小美同学,小龙小龙,喵喵同学,小滨小滨,小冰小冰,嘿你好呀", "Comma-separated phrases that `listen detect` treats as a wake word rather than a typed turn.";
    "XIAOZHI_PROTOCOL_VERSION" => "ota.protocol_version", "1", "Binary protocol version (1, 2 or 3) the OTA endpoint tells devices to use.";
    "XIAOZHI_TIMEZONE_OFFSET_MIN" => "ota.timezone_offset_min", "480", "server_time.timezone_offset given to devices (minutes east of UTC).";
    "XIAOZHI_FIRMWARE_VERSION" => "ota.firmware_version", "", "Offer this firmware version to devices (with ota.firmware_url); empty: no update offered.";
    "XIAOZHI_FIRMWARE_URL" => "ota.firmware_url", "", "Download URL of the offered firmware.";
    "XIAOZHI_ACTIVATION" => "ota.activation", "false", "Ask unknown devices to activate with a code, approved by an operator through POST /api/devices/{id}/activate (off: devices connect at once).";
    "XIAOZHI_ASR_URL" => "brain.asr_url", "", "OpenAI-compatible speech-to-text API base (e.g. https://api.openai.com/v1). The brain is on when this and XIAOZHI_LLM_URL are set; otherwise the echo brain answers. A comma-separated list is an ordered fallback list (same for every *_URL, *_MODEL and *_API_KEY of the brain: one value for all, or one per URL).";
    "XIAOZHI_ASR_MODEL" => "brain.asr_model", "whisper-1", "Speech-to-text model (or one per URL, comma-separated).";
    "XIAOZHI_ASR_API_KEY" => "brain.asr_api_key", "", "Bearer key for the speech-to-text API (or one per URL, comma-separated; an empty entry sends none).";
    "XIAOZHI_LLM_URL" => "brain.llm_url", "", "OpenAI-compatible chat completions API base (comma-separated: fallbacks in order).";
    "XIAOZHI_LLM_MODEL" => "brain.llm_model", "gpt-4o-mini", "Chat model (or one per URL).";
    "XIAOZHI_LLM_API_KEY" => "brain.llm_api_key", "", "Bearer key for the chat API (or one per URL).";
    "XIAOZHI_TTS_URL" => "brain.tts_url", "", "OpenAI-compatible text-to-speech API base (comma-separated: fallbacks in order); empty: the local synthesizer (espeak-ng), which also speaks any sentence every provider failed.";
    "XIAOZHI_TTS_MODEL" => "brain.tts_model", "tts-1", "Text-to-speech model (or one per URL).";
    "XIAOZHI_TTS_API_KEY" => "brain.tts_api_key", "", "Bearer key for the text-to-speech API (or one per URL).";
    "XIAOZHI_VISION_URL" => "brain.vision_url", "", "OpenAI-compatible chat API of a vision-capable model that answers the device camera's questions; empty: the first XIAOZHI_LLM_URL.";
    "XIAOZHI_VISION_MODEL" => "brain.vision_model", "", "Vision model; empty: the first XIAOZHI_LLM_MODEL.";
    "XIAOZHI_VISION_API_KEY" => "brain.vision_api_key", "", "Bearer key for the vision model; empty: the first XIAOZHI_LLM_API_KEY (when the URL is the LLM's).";
    "XIAOZHI_VISION_MAX_BYTES" => "brain.vision_max_bytes", "4194304", "Largest camera image accepted at /mcp/vision/explain (larger: 413).";
    "XIAOZHI_DEVICE_TOOL_TIMEOUT_SECS" => "brain.device_tool_timeout_secs", "30", "How long a device tool call (MCP tools/call) may take; the camera tool uploads and waits for the vision model first.";
    "XIAOZHI_TTS_VOICE" => "brain.tts_voice", "alloy", "Voice asked of the text-to-speech API.";
    "XIAOZHI_SYSTEM_PROMPT" => "brain.system_prompt", "You are a friendly voice assistant on a small speaker. Answer briefly, in the user's language, in plain sentences without lists or markup.", "System prompt for devices without their own (set per device through the admin API).";
    "XIAOZHI_MEMORY_MESSAGES" => "brain.memory_messages", "10", "How many of the device's earlier messages go with each request.";
    "XIAOZHI_PROVIDER_TIMEOUT_SECS" => "brain.provider_timeout_secs", "30", "Per-request timeout of each provider (first byte and gaps in streams).";
    "XIAOZHI_EMBEDDINGS_URL" => "embeddings.url", "", "OpenAI-compatible embeddings API base (e.g. https://api.openai.com/v1). Set: messages are embedded in the background (older ones too) and GET /api/search?mode=semantic searches by meaning.";
    "XIAOZHI_EMBEDDINGS_MODEL" => "embeddings.model", "text-embedding-3-small", "Embedding model. Changing it re-embeds every message in the background.";
    "XIAOZHI_EMBEDDINGS_API_KEY" => "embeddings.api_key", "", "Bearer key for the embeddings API.";
        "DB_TYPE" => "database.kind", "sqlite", "Database: sqlite (embedded, under the data dir) or postgres. (mysql is not a live backend: import it with `xiaozhi-gateway import mysql`.)";
    "DATABASE_URL" => "database.url", "", "A whole database URL; overrides the DB_* parts.";
    "DB_HOST" => "database.host", "localhost", "PostgreSQL host.";
    "DB_PORT" => "database.port", "5432", "PostgreSQL port.";
    "DB_USER" => "database.user", "postgres", "PostgreSQL user.";
    "DB_PASSWORD" => "database.password", "", "PostgreSQL password.";
    "DB_NAME" => "database.name", "xiaozhi_admin", "PostgreSQL database name.";
    "DB_SSL_MODE" => "database.ssl_mode", "disable", "PostgreSQL TLS: disable, require, verify-ca or verify-full.";
    "XIAOZHI_DB_MAX_CONNECTIONS" => "database.max_connections", "10", "Database connection pool size.";
    "XIAOZHI_DB_ACQUIRE_TIMEOUT_MS" => "database.acquire_timeout_ms", "5000", "How long a query waits for a pool connection before it counts as a database failure.";
    "XIAOZHI_DB_STATEMENT_TIMEOUT_MS" => "database.statement_timeout_ms", "30000", "PostgreSQL statement_timeout of every gateway connection: a statement running longer (stuck behind a lock, say) is cancelled and counts as a database failure. 0: none.";
    "XIAOZHI_DB_IDLE_TIMEOUT_SECS" => "database.idle_timeout_secs", "300", "Pool connections idle this long are closed. 0: kept open.";
    "XIAOZHI_DELETED_RETENTION_DAYS" => "database.deleted_retention_days", "30", "How long a deleted conversation's id is remembered (so a late write cannot bring it back); older ones are purged hourly. 0: forever.";
    "XIAOZHI_STORE_QUEUE" => "database.queue_capacity", "4096", "Store writes (turns, session ends) held in memory; beyond it they spill to disk under the data dir.";
    "XIAOZHI_STORE_QUEUE_MB" => "database.queue_mb", "64", "Memory budget of that queue (clip audio mostly), in MiB.";
    "XIAOZHI_MESSAGE_RETENTION_DAYS" => "database.message_retention_days", "0", "Delete messages and clips older than this many days (0: keep forever).";
    "MINIO_ENDPOINT" => "storage.endpoint", "", "MinIO/S3 endpoint (host:port). Empty: clips go to a directory under the data dir.";
    "MINIO_ACCESS_KEY" => "storage.access_key", "", "S3 access key (alias: MINIO_ACCESS_KEY_ID).";
    "MINIO_SECRET_KEY" => "storage.secret_key", "", "S3 secret key (alias: MINIO_SECRET_ACCESS_KEY).";
    "MINIO_USE_SSL" => "storage.use_ssl", "false", "Use https for the S3 endpoint.";
    "MINIO_BUCKET_AUDIO" => "storage.bucket", "xiaozhi-audio", "Bucket for audio clips (created when missing; alias: MINIO_BUCKET_NAME).";
    "MINIO_REGION" => "storage.region", "us-east-1", "S3 region.";
    "XIAOZHI_CLIP_FORMAT" => "storage.clip_format", "ogg", "Clip files: ogg (the packets as sent, no transcoding) or wav (decoded 16-bit PCM).";
    "XIAOZHI_KEEP_AUDIO" => "storage.keep_audio", "all", "Which audio clips are kept: all, user (the device's speech only) or none. Messages (text) are always kept, and camera images.";
    "XIAOZHI_UPLOAD_WORKERS" => "storage.upload_workers", "4", "Upload workers per gateway process.";
    "XIAOZHI_UPLOAD_MAX_ATTEMPTS" => "storage.upload_max_attempts", "12", "Attempts before a clip is marked failed (it stays staged and visible).";
    "XIAOZHI_UPLOAD_BACKOFF_MAX_SECS" => "storage.upload_backoff_max_secs", "300", "Longest wait between upload attempts (exponential backoff with jitter up to this).";
    "XIAOZHI_PRESIGN_EXPIRY_SECS" => "storage.presign_expiry_secs", "3600", "Lifetime of presigned GET URLs for clips.";
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

/// Who may connect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Static bearer tokens accepted from any device.
    #[serde(deserialize_with = "string_list")]
    pub tokens: Vec<String>,
    /// HMAC key for tokens issued by the OTA endpoint.
    #[serde(deserialize_with = "opt_string")]
    pub secret: Option<String>,
    /// A static token the OTA endpoint hands to every device (when there is no secret).
    #[serde(deserialize_with = "opt_string")]
    pub ota_token: Option<String>,
    /// Lifetime of issued tokens in seconds.
    pub token_ttl_secs: u64,
    /// Devices admitted without a token.
    #[serde(deserialize_with = "string_list")]
    pub allowed_devices: Vec<String>,
}

impl AuthSettings {
    /// Authentication is on as soon as any credential is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.secret.is_some() || self.ota_token.is_some()
    }

    /// Why devices that take their token from OTA (firmware 1.6.1 and later) would all be
    /// refused with these settings, if they would.
    pub fn lockout(&self) -> Option<&'static str> {
        (self.enabled() && self.secret.is_none() && self.ota_token.is_none()).then_some(
            "static tokens without XIAOZHI_AUTH_SECRET or XIAOZHI_AUTH_OTA_TOKEN: the OTA answer carries an \
             empty token, and firmware 1.6.1 and later (which takes its token only from OTA) is refused with 401; \
             set XIAOZHI_AUTH_SECRET for per-device tokens or XIAOZHI_AUTH_OTA_TOKEN to hand out a static one",
        )
    }
}

/// Per-connection limits and turn-taking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionSettings {
    pub hello_timeout_ms: u64,
    pub idle_timeout_secs: u64,
    /// TCP keepalive detection time (0: off).
    pub tcp_keepalive_secs: u64,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub max_utterance_secs: u64,
    pub vad_silence_ms: u64,
    pub vad_threshold: f32,
    pub downlink_sample_rate: u32,
    pub prebuffer_frames: u32,
    #[serde(deserialize_with = "string_list")]
    pub wake_words: Vec<String>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            hello_timeout_ms: 10_000,
            idle_timeout_secs: 120,
            tcp_keepalive_secs: 60,
            max_connections: 10_000,
            max_message_bytes: 64 * 1024,
            max_utterance_secs: 30,
            vad_silence_ms: 600,
            vad_threshold: 0.5,
            downlink_sample_rate: 24_000,
            prebuffer_frames: 2,
            wake_words: default_from_table("session.wake_words").split(',').map(str::to_owned).collect(),
        }
    }
}

impl SessionSettings {
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }
    /// TCP keepalive that finds a vanished peer within the detection time: quiet for half of
    /// it, then three probes over the other half. `None` when off.
    pub fn tcp_keepalive(&self) -> Option<(Duration, Duration, u32)> {
        const PROBES: u32 = 3;
        let total = self.tcp_keepalive_secs;
        (total > 0).then(|| {
            let idle = (total / 2).max(1);
            let interval = ((total - idle) / u64::from(PROBES)).max(1);
            (Duration::from_secs(idle), Duration::from_secs(interval), PROBES)
        })
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn vad_silence(&self) -> Duration {
        Duration::from_millis(self.vad_silence_ms)
    }
}

/// Rate limits and admission (read by `limits` and the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    pub upgrades_per_sec: u32,
    pub ota_per_sec: u32,
    pub new_sessions_per_sec: u32,
    pub turns_per_minute: u32,
    pub turns_per_day: u32,
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            upgrades_per_sec: 20,
            ota_per_sec: 20,
            new_sessions_per_sec: 200,
            turns_per_minute: 30,
            turns_per_day: 2000,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
        }
    }
}

/// What the OTA endpoint tells devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OtaSettings {
    pub protocol_version: u8,
    pub timezone_offset_min: i32,
    #[serde(deserialize_with = "opt_string")]
    pub firmware_version: Option<String>,
    #[serde(deserialize_with = "opt_string")]
    pub firmware_url: Option<String>,
    pub activation: bool,
}

impl Default for OtaSettings {
    fn default() -> Self {
        Self {
            protocol_version: 1,
            timezone_offset_min: 480,
            firmware_version: None,
            firmware_url: None,
            activation: false,
        }
    }
}

/// Which database holds conversations (read by the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    #[default]
    Sqlite,
    #[serde(alias = "postgresql", alias = "pg")]
    Postgres,
}

/// Database connection settings (the seed's `DB_*` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    #[serde(deserialize_with = "database_kind")]
    pub kind: DatabaseKind,
    #[serde(deserialize_with = "opt_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub host: String,
    pub port: u16,
    #[serde(deserialize_with = "lenient_string")]
    pub user: String,
    #[serde(deserialize_with = "lenient_string")]
    pub password: String,
    #[serde(deserialize_with = "lenient_string")]
    pub name: String,
    #[serde(deserialize_with = "lenient_string")]
    pub ssl_mode: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    pub queue_capacity: usize,
    pub queue_mb: usize,
    pub message_retention_days: u32,
    pub statement_timeout_ms: u64,
    pub idle_timeout_secs: u64,
    pub deleted_retention_days: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            kind: DatabaseKind::Sqlite,
            url: None,
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: String::new(),
            name: "xiaozhi_admin".into(),
            ssl_mode: "disable".into(),
            max_connections: 10,
            acquire_timeout_ms: 5000,
            queue_capacity: 4096,
            queue_mb: 64,
            message_retention_days: 0,
            statement_timeout_ms: 30_000,
            idle_timeout_secs: 300,
            deleted_retention_days: 30,
        }
    }
}

/// Object storage settings (the seed's `MINIO_*` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageSettings {
    #[serde(deserialize_with = "opt_string")]
    pub endpoint: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub access_key: String,
    #[serde(deserialize_with = "lenient_string")]
    pub secret_key: String,
    pub use_ssl: bool,
    #[serde(deserialize_with = "lenient_string")]
    pub bucket: String,
    #[serde(deserialize_with = "lenient_string")]
    pub region: String,
    pub clip_format: ClipFileFormat,
    pub keep_audio: KeepAudio,
    pub upload_workers: usize,
    pub upload_max_attempts: u32,
    pub upload_backoff_max_secs: u64,
    pub presign_expiry_secs: u64,
}

/// How clips are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipFileFormat {
    /// Ogg-Opus with the packets as they went over the wire.
    #[default]
    Ogg,
    /// 16 kHz 16-bit mono PCM.
    Wav,
}

/// Which audio clips are kept (`XIAOZHI_KEEP_AUDIO`, the starting design's
/// `enable_audio_storage`); text is always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepAudio {
    /// The device's speech and the synthesized replies.
    #[default]
    All,
    /// Only the device's speech.
    User,
    /// No audio (camera images are still kept).
    None,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            endpoint: None,
            access_key: String::new(),
            secret_key: String::new(),
            use_ssl: false,
            bucket: "xiaozhi-audio".into(),
            region: "us-east-1".into(),
            clip_format: ClipFileFormat::Ogg,
            keep_audio: KeepAudio::All,
            upload_workers: 4,
            upload_max_attempts: 12,
            upload_backoff_max_secs: 300,
            presign_expiry_secs: 3600,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub listen: SocketAddr,
    #[serde(deserialize_with = "opt_string")]
    pub public_url: Option<String>,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub auth: AuthSettings,
    pub session: SessionSettings,
    pub ota: OtaSettings,
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    pub admin: AdminSettings,
    pub ops: OpsSettings,
    pub brain: BrainSettings,
    /// Keys of a Go server `config.yaml` this gateway does not use (logged once at start-up).
    #[serde(skip)]
    pub ignored_file_keys: Vec<String>,
    pub embeddings: EmbeddingsSettings,
    pub limits: LimitSettings,
}

/// Search by meaning: the embeddings provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmbeddingsSettings {
    #[serde(deserialize_with = "opt_string")]
    pub url: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub model: String,
    #[serde(deserialize_with = "opt_string")]
    pub api_key: Option<String>,
}

impl Default for EmbeddingsSettings {
    fn default() -> Self {
        Self { url: None, model: default_from_table("embeddings.model").to_owned(), api_key: None }
    }
}

/// The conversation brain's providers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrainSettings {
    #[serde(deserialize_with = "opt_string")]
    pub asr_url: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub asr_model: String,
    #[serde(deserialize_with = "opt_string")]
    pub asr_api_key: Option<String>,
    #[serde(deserialize_with = "opt_string")]
    pub llm_url: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub llm_model: String,
    #[serde(deserialize_with = "opt_string")]
    pub llm_api_key: Option<String>,
    #[serde(deserialize_with = "opt_string")]
    pub tts_url: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub tts_model: String,
    #[serde(deserialize_with = "opt_string")]
    pub tts_api_key: Option<String>,
    #[serde(deserialize_with = "lenient_string")]
    pub tts_voice: String,
    #[serde(deserialize_with = "lenient_string")]
    pub system_prompt: String,
    pub memory_messages: i64,
    pub provider_timeout_secs: u64,
    #[serde(deserialize_with = "opt_string")]
    pub vision_url: Option<String>,
    #[serde(deserialize_with = "opt_string")]
    pub vision_model: Option<String>,
    #[serde(deserialize_with = "opt_string")]
    pub vision_api_key: Option<String>,
    pub vision_max_bytes: usize,
    pub device_tool_timeout_secs: u64,
}

impl Default for BrainSettings {
    fn default() -> Self {
        Self {
            asr_url: None,
            asr_model: "whisper-1".into(),
            asr_api_key: None,
            llm_url: None,
            llm_model: "gpt-4o-mini".into(),
            llm_api_key: None,
            tts_url: None,
            tts_model: "tts-1".into(),
            tts_api_key: None,
            tts_voice: "alloy".into(),
            system_prompt: default_from_table("brain.system_prompt").to_owned(),
            memory_messages: 10,
            provider_timeout_secs: 30,
            vision_url: None,
            vision_model: None,
            vision_api_key: None,
            vision_max_bytes: 4 << 20,
            device_tool_timeout_secs: 30,
        }
    }
}

/// The admin API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminSettings {
    #[serde(deserialize_with = "opt_string")]
    pub token: Option<String>,
}

/// Readiness and shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpsSettings {
    pub drain_secs: u64,
    pub ready_max_store_backlog: usize,
    pub ready_max_upload_backlog: i64,
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self { drain_secs: 30, ready_max_store_backlog: 1000, ready_max_upload_backlog: 5000 }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            public_url: None,
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Auto,
            auth: AuthSettings { token_ttl_secs: 30 * 24 * 3600, ..AuthSettings::default() },
            session: SessionSettings::default(),
            ota: OtaSettings::default(),
            database: DatabaseSettings::default(),
            storage: StorageSettings::default(),
            admin: AdminSettings::default(),
            ops: OpsSettings::default(),
            brain: BrainSettings::default(),
            ignored_file_keys: Vec::new(),
            embeddings: EmbeddingsSettings::default(),
            limits: LimitSettings::default(),
        }
    }
}

/// A configuration that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Parse(String),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid setting {setting} ({env}): {reason}")]
    Invalid { setting: &'static str, env: &'static str, reason: String },
}

impl Settings {
    /// Loads defaults, then the file (if given), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::raw())
    }

    /// As [`Settings::load`], with an explicit environment source (for tests).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let mut ignored = Vec::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            if is_yaml(path) {
                let go = go_yaml::read(path)?;
                for (key, value) in go.values {
                    figment = figment.merge(Serialized::default(key, value));
                }
                ignored = go.ignored;
            } else {
                figment = figment.merge(Toml::file_exact(path));
            }
        }
        // The starting design's other names: below ours, so ours win when both are set.
        let aliases = env.clone().filter_map(|name| {
            let (alias, key) = ENV_ALIASES.iter().find(|(a, _)| name.as_str().eq_ignore_ascii_case(a))?;
            let empty = std::env::var(alias).is_ok_and(|v| v.trim().is_empty());
            (!empty).then(|| (*key).into())
        });
        figment = figment.merge(aliases);
        // An empty variable means "not set" rather than "set to nothing".
        let env = env.filter_map(|name| {
            let doc = SETTINGS.iter().find(|s| name.as_str().eq_ignore_ascii_case(s.env))?;
            let empty = std::env::var(doc.env).is_ok_and(|v| v.trim().is_empty());
            (!empty).then(|| doc.key.into())
        });
        let figment = figment.merge(env);
        let mut settings: Settings = figment.extract().map_err(|e| ConfigError::Parse(describe(e)))?;
        settings.ignored_file_keys = ignored;
        settings.validate()?;
        Ok(settings)
    }

    /// Lists, once, the keys of a Go server `config.yaml` that this gateway does not use.
    pub fn log_ignored_file_keys(&self) {
        if !self.ignored_file_keys.is_empty() {
            tracing::warn!(
                keys = %self.ignored_file_keys.join(", "),
                "config file keys this gateway does not use (ignored)"
            );
        }
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| {
            let env = SETTINGS.iter().find(|s| s.key == key).map_or("", |s| s.env);
            Err(ConfigError::Invalid { setting: key, env, reason })
        };
        let s = &self.session;
        if ![8_000, 12_000, 16_000, 24_000, 48_000].contains(&s.downlink_sample_rate) {
            return invalid(
                "session.downlink_sample_rate",
                format!("{} is not an Opus rate (8000, 12000, 16000, 24000, 48000)", s.downlink_sample_rate),
            );
        }
        if !(0.0..=1.0).contains(&s.vad_threshold) {
            return invalid("session.vad_threshold", format!("{} is not between 0 and 1", s.vad_threshold));
        }
        if s.max_connections == 0 {
            return invalid("session.max_connections", "must be at least 1".into());
        }
        if s.max_message_bytes < 1024 {
            return invalid("session.max_message_bytes", "must be at least 1024".into());
        }
        if s.hello_timeout_ms == 0 || s.idle_timeout_secs == 0 {
            return invalid("session.idle_timeout_secs", "timeouts must be positive".into());
        }
        if s.max_utterance_secs == 0 {
            return invalid("session.max_utterance_secs", "must be at least 1".into());
        }
        if !(1..=3).contains(&self.ota.protocol_version) {
            return invalid(
                "ota.protocol_version",
                format!("{} is not 1, 2 or 3", self.ota.protocol_version),
            );
        }
        if self.ota.firmware_version.is_some() != self.ota.firmware_url.is_some() {
            return invalid(
                "ota.firmware_url",
                "ota.firmware_version and ota.firmware_url go together".into(),
            );
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return invalid("public_url", format!("{url:?} must start with ws:// or wss://"));
        }
        if self.auth.tokens.iter().any(|t| t.contains(char::is_whitespace)) {
            return invalid("auth.tokens", "tokens must not contain spaces".into());
        }
        if self.brain.asr_url.is_some() != self.brain.llm_url.is_some() {
            return invalid(
                "brain.llm_url",
                "XIAOZHI_ASR_URL and XIAOZHI_LLM_URL go together (the brain needs both)".into(),
            );
        }
        for (key, urls, models, keys) in [
            ("brain.asr_url", &self.brain.asr_url, &self.brain.asr_model, &self.brain.asr_api_key),
            ("brain.llm_url", &self.brain.llm_url, &self.brain.llm_model, &self.brain.llm_api_key),
            ("brain.tts_url", &self.brain.tts_url, &self.brain.tts_model, &self.brain.tts_api_key),
        ] {
            if let Err(reason) = provider_list(urls.as_deref(), models, keys.as_deref()) {
                return invalid(key, reason);
            }
        }
        if self.brain.vision_max_bytes == 0 || self.brain.device_tool_timeout_secs == 0 {
            return invalid(
                "brain.vision_max_bytes",
                "vision_max_bytes and device_tool_timeout_secs must be positive".into(),
            );
        }
        if self.storage.upload_workers == 0 || self.storage.upload_max_attempts == 0 {
            return invalid(
                "storage.upload_workers",
                "at least one upload worker and one attempt are needed".into(),
            );
        }
        if self.storage.endpoint.is_some()
            && (self.storage.access_key.is_empty() || self.storage.secret_key.is_empty())
        {
            return invalid(
                "storage.access_key",
                "MINIO_ENDPOINT is set: MINIO_ACCESS_KEY and MINIO_SECRET_KEY are needed".into(),
            );
        }
        if self.limits.header_timeout_secs == 0 || self.limits.body_timeout_secs == 0 {
            return invalid("limits.header_timeout_secs", "HTTP timeouts must be positive".into());
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1".into());
        }
        if self.database.queue_capacity == 0 || self.database.queue_mb == 0 {
            return invalid(
                "database.queue_capacity",
                "the store queue needs room for at least one write".into(),
            );
        }
        if !["disable", "require", "verify-ca", "verify-full"].contains(&self.database.ssl_mode.as_str()) {
            return invalid(
                "database.ssl_mode",
                format!("{:?} is not disable, require, verify-ca or verify-full", self.database.ssl_mode),
            );
        }
        Ok(())
    }

    /// The configuration reference as a Markdown table.
    pub fn reference_markdown() -> String {
        let mut out =
            String::from("| environment | config file key | default | meaning |\n|---|---|---|---|\n");
        for s in SETTINGS {
            let default =
                if s.default.is_empty() { "(unset)".to_owned() } else { format!("`{}`", s.default) };
            out.push_str(&format!("| `{}` | `{}` | {} | {} |\n", s.env, s.key, default, s.meaning));
        }
        out
    }
}

/// One provider of a fallback list: base URL, model and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEntry {
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
}

/// Splits a brain stage's comma-separated URLs, models and keys into its ordered providers:
/// one model (or key) for all URLs, or exactly one per URL; an empty key entry sends none.
pub fn provider_list(
    urls: Option<&str>,
    models: &str,
    keys: Option<&str>,
) -> Result<Vec<ProviderEntry>, String> {
    let Some(urls) = urls else { return Ok(Vec::new()) };
    let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
    if urls.iter().any(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
        return Err(format!("{urls:?}: every URL must start with http:// or https://"));
    }
    let per_url = |list: &str, what: &str| -> Result<Vec<String>, String> {
        let items: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
        match items.len() {
            1 => Ok(vec![items[0].clone(); urls.len()]),
            n if n == urls.len() => Ok(items),
            n => Err(format!("{n} {what} for {} URLs: give one for all or one per URL", urls.len())),
        }
    };
    let models = per_url(models, "models")?;
    let keys = match keys {
        Some(k) => per_url(k, "API keys")?,
        None => vec![String::new(); urls.len()],
    };
    Ok(urls
        .iter()
        .zip(models)
        .zip(keys)
        .map(|((url, model), key)| ProviderEntry {
            url: (*url).to_owned(),
            model,
            api_key: (!key.is_empty()).then_some(key),
        })
        .collect())
}

/// Figment's errors name the key path; add the setting's environment name and file key.
fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            match SETTINGS.iter().find(|s| s.key.eq_ignore_ascii_case(&path)) {
                Some(doc) => format!("{} ({}): {}", doc.key, doc.env, e.kind),
                None => e.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn default_from_table(key: &str) -> &'static str {
    SETTINGS.iter().find(|s| s.key == key).map_or("", |s| s.default)
}

/// Environment values arrive parsed (`12345` becomes a number); secrets and names are strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    U(u64),
    I(i64),
    F(f64),
    B(bool),
}

impl From<Scalar> for String {
    fn from(v: Scalar) -> Self {
        match v {
            Scalar::S(s) => s,
            Scalar::U(n) => n.to_string(),
            Scalar::I(n) => n.to_string(),
            Scalar::F(n) => n.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Scalar::deserialize(d).map(String::from)
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<Scalar>::deserialize(d)?.map(String::from);
    Ok(s.filter(|s| !s.trim().is_empty()))
}

/// `.yaml`/`.yml`: the Go server's file; anything else is our TOML.
fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// The database kind, answering `mysql` with what to do instead.
fn database_kind<'de, D: Deserializer<'de>>(d: D) -> Result<DatabaseKind, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim().to_ascii_lowercase().as_str() {
        "sqlite" => Ok(DatabaseKind::Sqlite),
        "postgres" | "postgresql" | "pg" => Ok(DatabaseKind::Postgres),
        "mysql" | "mariadb" => Err(serde::de::Error::custom(MYSQL_HINT)),
        other => Err(serde::de::Error::custom(format!("{other:?} is not sqlite or postgres"))),
    }
}

/// A list given either as an array or as one comma-separated string.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Many(Vec<String>),
        One(String),
        Num(u64),
    }
    let items = match List::deserialize(d)? {
        List::Many(v) => v,
        List::One(s) => s.split(',').map(str::to_owned).collect(),
        List::Num(n) => vec![n.to_string()],
    };
    Ok(items.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in pairs {
                jail.set_env(k, v);
            }
            result = Some(Settings::load(None));
            Ok(())
        });
        result.expect("jail ran")
    }

    #[test]
    fn provider_lists_pair_urls_models_and_keys() {
        let one = provider_list(Some("https://a/v1"), "m", Some("k")).unwrap();
        assert_eq!(
            one,
            vec![ProviderEntry { url: "https://a/v1".into(), model: "m".into(), api_key: Some("k".into()) }]
        );
        let two = provider_list(Some("https://a/v1, http://b:8080/v1"), "m1,m2", Some("k1,")).unwrap();
        assert_eq!(
            (two[1].url.as_str(), two[1].model.as_str(), two[1].api_key.as_deref()),
            ("http://b:8080/v1", "m2", None)
        );
        assert_eq!(two[0].api_key.as_deref(), Some("k1"));
        let shared = provider_list(Some("https://a/v1,https://b/v1"), "m", None).unwrap();
        assert!(shared.iter().all(|p| p.model == "m" && p.api_key.is_none()));
        assert!(
            provider_list(Some("https://a/v1,https://b/v1"), "m1,m2,m3", None)
                .unwrap_err()
                .contains("3 models for 2 URLs")
        );
        assert!(provider_list(Some("a.example/v1"), "m", None).is_err());
        assert_eq!(provider_list(None, "m", None).unwrap(), vec![]);
        let err = load(&[
            ("XIAOZHI_ASR_URL", "https://a/v1"),
            ("XIAOZHI_LLM_URL", "https://a/v1,https://b/v1"),
            ("XIAOZHI_LLM_MODEL", "x,y,z"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("brain.llm_url") && err.contains("3 models for 2 URLs"), "{err}");
    }

    /// The value at a dotted key of the serialized settings, as the reference writes it.
    fn documented(settings: &Settings, key: &str) -> String {
        let mut v = serde_json::to_value(settings).unwrap();
        for part in key.split('.') {
            v = v.get(part).cloned().unwrap_or_else(|| panic!("{key}: no such field in Settings"));
        }
        match v {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s,
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        }
    }

    /// Every row of the reference is true of the code: its key is a real field, its default is
    /// the code's default, and its environment variable really sets that field.
    #[test]
    fn every_documented_setting_is_read_from_its_variable_into_its_key() {
        let defaults = Settings::default();
        for doc in SETTINGS {
            assert_eq!(
                documented(&defaults, doc.key),
                doc.default,
                "{} ({}): documented default",
                doc.env,
                doc.key
            );
        }
        // Pairs that validate only together are set for every case.
        let base = [
            ("XIAOZHI_ASR_URL", "https://base.example/v1"),
            ("XIAOZHI_LLM_URL", "https://base.example/v1"),
            ("XIAOZHI_FIRMWARE_VERSION", "9.9.9"),
            ("XIAOZHI_FIRMWARE_URL", "https://base.example/fw.bin"),
            ("MINIO_ENDPOINT", "base.example:9000"),
            ("MINIO_ACCESS_KEY", "base-access"),
            ("MINIO_SECRET_KEY", "base-secret"),
        ];
        let base_settings = load(&base).expect("the base environment is valid");
        let candidates = [
            "7",
            "2",
            "16000",
            "0.25",
            "true",
            "false",
            "other-value",
            "https://other.example/v1",
            "ws://other.example/x/",
            "127.0.0.1:9",
            "postgres",
            "json",
            "wav",
            "require",
            "aa:bb:cc:dd:ee:ff",
            "user",
        ];
        for doc in SETTINGS {
            let before = documented(&base_settings, doc.key);
            let changed = candidates.iter().any(|value| {
                let mut env: Vec<(&str, &str)> =
                    base.iter().copied().filter(|(k, _)| *k != doc.env).collect();
                env.push((doc.env, value));
                load(&env).is_ok_and(|s| documented(&s, doc.key) != before)
            });
            assert!(changed, "{} does not change {}", doc.env, doc.key);
        }
    }

    #[test]
    fn defaults_hold_without_anything() {
        let s = load(&[]).unwrap();
        assert_eq!(s, Settings::default());
        assert!(!s.auth.enabled());
        assert!(s.session.wake_words.contains(&"你好小智".to_owned()));
    }

    #[test]
    fn environment_overrides_and_lists_split() {
        let s = load(&[
            ("XIAOZHI_LISTEN", "127.0.0.1:9000"),
            ("XIAOZHI_AUTH_TOKENS", "abc, 12345 ,"),
            ("DB_PASSWORD", "12345"),
            ("DB_TYPE", "postgres"),
            ("XIAOZHI_PUBLIC_URL", ""),
        ])
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.auth.tokens, vec!["abc", "12345"]);
        assert!(s.auth.enabled());
        assert_eq!(s.database.password, "12345");
        assert_eq!(s.database.kind, DatabaseKind::Postgres);
        assert_eq!(s.public_url, None);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = load(&[("XIAOZHI_IDLE_TIMEOUT_SECS", "soon")]).unwrap_err().to_string();
        assert!(err.contains("XIAOZHI_IDLE_TIMEOUT_SECS"), "{err}");
        let err = load(&[("XIAOZHI_DOWNLINK_SAMPLE_RATE", "44100")]).unwrap_err().to_string();
        assert!(err.contains("XIAOZHI_DOWNLINK_SAMPLE_RATE") && err.contains("44100"), "{err}");
        let err = load(&[("XIAOZHI_PUBLIC_URL", "http://x")]).unwrap_err().to_string();
        assert!(err.contains("XIAOZHI_PUBLIC_URL"), "{err}");
    }

    #[test]
    fn file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "gw.toml",
                "listen = \"127.0.0.1:7000\"\n[session]\nidle_timeout_secs = 5\nvad_silence_ms = 300\n",
            )?;
            jail.set_env("XIAOZHI_VAD_SILENCE_MS", "400");
            let s = Settings::load(Some(Path::new("gw.toml"))).unwrap();
            assert_eq!(s.listen.port(), 7000);
            assert_eq!(s.session.idle_timeout_secs, 5);
            assert_eq!(s.session.vad_silence_ms, 400);
            assert!(matches!(
                Settings::load(Some(Path::new("missing.toml"))),
                Err(ConfigError::MissingFile(_))
            ));
            Ok(())
        });
    }

    #[test]
    fn starting_design_names_are_aliases_and_ours_win() {
        let s = load(&[
            ("MINIO_ENDPOINT", "minio:9000"),
            ("MINIO_ACCESS_KEY_ID", "ak"),
            ("MINIO_SECRET_ACCESS_KEY", "sk"),
            ("MINIO_BUCKET_NAME", "voice"),
        ])
        .unwrap();
        assert_eq!((s.storage.access_key.as_str(), s.storage.secret_key.as_str()), ("ak", "sk"));
        assert_eq!(s.storage.bucket, "voice");
        let s = load(&[
            ("MINIO_ENDPOINT", "minio:9000"),
            ("MINIO_ACCESS_KEY_ID", "alias"),
            ("MINIO_ACCESS_KEY", "ours"),
            ("MINIO_SECRET_KEY", "sk"),
        ])
        .unwrap();
        assert_eq!(s.storage.access_key, "ours");
    }

    #[test]
    fn mysql_is_answered_with_the_import_command() {
        let err = load(&[("DB_TYPE", "mysql")]).unwrap_err().to_string();
        assert!(err.contains("DB_TYPE") && err.contains(MYSQL_HINT), "{err}");
    }

    #[test]
    fn the_go_servers_yaml_maps_to_our_settings() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "config.yaml",
                "database:\n  type: \"postgres\"\n  host: \"pg\"\n  port: \"15432\"\n  username: \"xiaozhi\"\n  \
                 password: \"0123\"\n  database: \"xiaozhi_admin\"\n  ssl_mode: \"require\"\n\
                 minio:\n  endpoint: \"minio:9000\"\n  access_key_id: \"ak\"\n  secret_access_key: \"sk\"\n  \
                 use_ssl: \"true\"\n  bucket_audio: \"audio\"\n  region: \"cn\"\n\
                 conversation:\n  storage_type: \"redis\"\n  postgres:\n    enable_audio_storage: false\n    \
                 message_retention_days: 90\nmqtt:\n  broker: \"x\"\nwakeup_words:\n  - \"小智\"\n",
            )?;
            jail.set_env("DB_HOST", "from-env");
            let s = Settings::load(Some(Path::new("config.yaml"))).unwrap();
            assert_eq!(s.database.kind, DatabaseKind::Postgres);
            assert_eq!(s.database.host, "from-env", "the environment still wins");
            assert_eq!((s.database.port, s.database.user.as_str()), (15432, "xiaozhi"));
            assert_eq!(s.database.password, "0123", "a quoted password stays a string");
            assert_eq!(
                (s.database.name.as_str(), s.database.ssl_mode.as_str()),
                ("xiaozhi_admin", "require")
            );
            assert_eq!(s.storage.endpoint.as_deref(), Some("minio:9000"));
            assert_eq!((s.storage.access_key.as_str(), s.storage.secret_key.as_str()), ("ak", "sk"));
            assert!(s.storage.use_ssl);
            assert_eq!((s.storage.bucket.as_str(), s.storage.region.as_str()), ("audio", "cn"));
            assert_eq!(s.database.message_retention_days, 90);
            let ignored = s.ignored_file_keys.join("; ");
            assert!(ignored.contains("mqtt.broker") && ignored.contains("wakeup_words"), "{ignored}");
            assert!(
                ignored.contains("storage_type = redis") && ignored.contains("enable_audio_storage = false")
            );
            assert!(!ignored.contains("database.") && !ignored.contains("minio."), "{ignored}");
            Ok(())
        });
    }
}
