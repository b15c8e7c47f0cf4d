-- Conversation store, SQLite (the embedded default). Same tables and columns as PostgreSQL;
-- UUIDs are 16-byte BLOBs, timestamps INTEGER microseconds since the Unix epoch (UTC), JSON TEXT.

CREATE TABLE devices (
    device_id        TEXT PRIMARY KEY,
    client_id        TEXT,
    board            TEXT,
    firmware_version TEXT,
    first_seen       INTEGER NOT NULL,
    last_seen        INTEGER NOT NULL,
    activated        BOOLEAN NOT NULL DEFAULT FALSE,
    settings         TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE conversation_sessions (
    session_id BLOB PRIMARY KEY,
    device_id  TEXT NOT NULL,
    agent_id   TEXT,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    metadata   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX conversation_sessions_device ON conversation_sessions (device_id, started_at DESC, session_id DESC);

CREATE TABLE conversation_messages (
    message_id    BLOB PRIMARY KEY,
    session_id    BLOB NOT NULL REFERENCES conversation_sessions (session_id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL,
    sequence_num  INTEGER NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content       TEXT NOT NULL DEFAULT '',
    multi_content TEXT,
    tool_calls    TEXT,
    tool_call_id  TEXT,
    audio_file_id BLOB REFERENCES audio_files (file_id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED,
    interrupted   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    INTEGER NOT NULL,
    CONSTRAINT conversation_messages_session_seq UNIQUE (session_id, sequence_num)
);
CREATE INDEX conversation_messages_device ON conversation_messages (device_id, created_at DESC, sequence_num DESC);
CREATE INDEX conversation_messages_created ON conversation_messages (created_at);

CREATE TABLE audio_files (
    file_id         BLOB PRIMARY KEY,
    session_id      BLOB NOT NULL REFERENCES conversation_sessions (session_id) ON DELETE CASCADE,
    message_id      BLOB NOT NULL REFERENCES conversation_messages (message_id) ON DELETE CASCADE,
    device_id       TEXT NOT NULL,
    bucket_name     TEXT NOT NULL,
    object_key      TEXT NOT NULL UNIQUE,
    file_type       TEXT NOT NULL,
    file_size       INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL,
    sample_rate     INTEGER NOT NULL,
    channels        INTEGER NOT NULL,
    source_type     TEXT NOT NULL CHECK (source_type IN ('user', 'tts', 'asr', 'image')),
    transcription   TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}',
    checksum        TEXT NOT NULL,
    upload_status   TEXT NOT NULL DEFAULT 'pending' CHECK (upload_status IN ('pending', 'uploaded', 'failed')),
    upload_attempts INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL,
    uploaded_at     INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX audio_files_message ON audio_files (message_id);
CREATE INDEX audio_files_pending ON audio_files (next_attempt_at) WHERE upload_status = 'pending';
CREATE INDEX audio_files_created ON audio_files (created_at);

CREATE TABLE audio_staging (
    file_id BLOB PRIMARY KEY REFERENCES audio_files (file_id) ON DELETE CASCADE,
    data    BLOB NOT NULL
);

CREATE TABLE object_deletions (
    object_key  TEXT PRIMARY KEY,
    bucket_name TEXT NOT NULL,
    queued_at   INTEGER NOT NULL
);

CREATE TABLE system_prompts (
    prompt_id  BLOB PRIMARY KEY,
    device_id  TEXT NOT NULL,
    prompt     TEXT NOT NULL,
    is_active  BOOLEAN NOT NULL DEFAULT TRUE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX system_prompts_one_active ON system_prompts (device_id) WHERE is_active;
