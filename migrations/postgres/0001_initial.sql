-- Conversation store, PostgreSQL. Table and column names follow the starting design, with its
-- defects corrected: (session_id, sequence_num) is unique, messages and clips point at each
-- other, clips carry their upload state, and clip bytes are staged in the same transaction.

CREATE TABLE devices (
    device_id        TEXT PRIMARY KEY,
    client_id        TEXT,
    board            TEXT,
    firmware_version TEXT,
    first_seen       TIMESTAMPTZ NOT NULL,
    last_seen        TIMESTAMPTZ NOT NULL,
    activated        BOOLEAN NOT NULL DEFAULT FALSE,
    settings         JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE conversation_sessions (
    session_id UUID PRIMARY KEY,
    device_id  TEXT NOT NULL,
    agent_id   TEXT,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at   TIMESTAMPTZ,
    status     TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    metadata   JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX conversation_sessions_device ON conversation_sessions (device_id, started_at DESC, session_id DESC);

CREATE TABLE conversation_messages (
    message_id    UUID PRIMARY KEY,
    session_id    UUID NOT NULL REFERENCES conversation_sessions (session_id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL,
    sequence_num  INTEGER NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content       TEXT NOT NULL DEFAULT '',
    multi_content JSONB,
    tool_calls    JSONB,
    tool_call_id  TEXT,
    audio_file_id UUID,
    interrupted   BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL,
    CONSTRAINT conversation_messages_session_seq UNIQUE (session_id, sequence_num)
);
CREATE INDEX conversation_messages_device ON conversation_messages (device_id, created_at DESC, sequence_num DESC);
CREATE INDEX conversation_messages_created ON conversation_messages (created_at);

CREATE TABLE audio_files (
    file_id         UUID PRIMARY KEY,
    session_id      UUID NOT NULL REFERENCES conversation_sessions (session_id) ON DELETE CASCADE,
    message_id      UUID NOT NULL REFERENCES conversation_messages (message_id) ON DELETE CASCADE,
    device_id       TEXT NOT NULL,
    bucket_name     TEXT NOT NULL,
    object_key      TEXT NOT NULL UNIQUE,
    file_type       TEXT NOT NULL,
    file_size       BIGINT NOT NULL,
    duration_ms     INTEGER NOT NULL,
    sample_rate     INTEGER NOT NULL,
    channels        SMALLINT NOT NULL,
    source_type     TEXT NOT NULL CHECK (source_type IN ('user', 'tts', 'asr', 'image')),
    transcription   TEXT,
    metadata        JSONB NOT NULL DEFAULT '{}',
    checksum        TEXT NOT NULL,
    upload_status   TEXT NOT NULL DEFAULT 'pending' CHECK (upload_status IN ('pending', 'uploaded', 'failed')),
    upload_attempts INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    uploaded_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX audio_files_message ON audio_files (message_id);
CREATE INDEX audio_files_pending ON audio_files (next_attempt_at) WHERE upload_status = 'pending';
CREATE INDEX audio_files_created ON audio_files (created_at);

ALTER TABLE conversation_messages ADD CONSTRAINT conversation_messages_audio_file
    FOREIGN KEY (audio_file_id) REFERENCES audio_files (file_id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;

-- The upload outbox: clip bytes until they are in object storage.
CREATE TABLE audio_staging (
    file_id UUID PRIMARY KEY REFERENCES audio_files (file_id) ON DELETE CASCADE,
    data    BYTEA NOT NULL
);

-- Objects whose rows are gone but which may still exist in object storage.
CREATE TABLE object_deletions (
    object_key  TEXT PRIMARY KEY,
    bucket_name TEXT NOT NULL,
    queued_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE system_prompts (
    prompt_id  UUID PRIMARY KEY,
    device_id  TEXT NOT NULL,
    prompt     TEXT NOT NULL,
    is_active  BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX system_prompts_one_active ON system_prompts (device_id) WHERE is_active;
