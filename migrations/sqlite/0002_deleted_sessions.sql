-- Conversations deleted through the admin API (or by forgetting a device). A write that
-- arrives for one of them afterwards (a reply that finished after the deletion, a spilled
-- write replayed later) is dropped instead of bringing the conversation back. Only the
-- random session id is kept: nothing here identifies the device.
CREATE TABLE deleted_sessions (
    session_id BLOB PRIMARY KEY,
    deleted_at INTEGER NOT NULL
);
CREATE INDEX deleted_sessions_deleted_at ON deleted_sessions (deleted_at);
