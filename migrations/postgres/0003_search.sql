-- Search over what devices said, and the operator views (devices, statistics).
-- pg_trgm (in postgresql-contrib, a trusted extension: the database owner may create it)
-- indexes every three-character window of a message, so a Chinese phrase without spaces is
-- found as well as an English word. For CJK text the database's LC_CTYPE must be a UTF-8
-- locale (C.UTF-8, en_US.UTF-8...): under the plain C locale pg_trgm sees no letters in
-- Chinese and such searches scan instead (still correct, only slower).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX conversation_messages_content_trgm ON conversation_messages USING gin (content gin_trgm_ops);
-- Newest-first browsing and cursor pagination of all messages.
CREATE INDEX conversation_messages_created_id ON conversation_messages (created_at DESC, message_id DESC);
-- Devices newest-seen first.
CREATE INDEX devices_last_seen ON devices (last_seen DESC, device_id DESC);
-- Statistics per day: sessions by start, clips by creation (already indexed), per device.
CREATE INDEX conversation_sessions_started ON conversation_sessions (started_at);
CREATE INDEX audio_files_device_created ON audio_files (device_id, created_at);
