-- Search over what devices said, and the operator views (devices, statistics).
-- FTS5 with the trigram tokenizer indexes every three-character window of a message, so a
-- Chinese phrase without spaces is found as well as an English word. The index is
-- contentless (the text stays in conversation_messages only) and keyed by a stable integer
-- id per message (message_search_ids): the implicit rowid of conversation_messages may be
-- renumbered by VACUUM, this id never is. Triggers keep it in step with every insert,
-- update and delete (including the cascades from deleting a conversation).
CREATE TABLE message_search_ids (
    id         INTEGER PRIMARY KEY,
    message_id BLOB NOT NULL UNIQUE
);
CREATE VIRTUAL TABLE message_search USING fts5(
    content, content = '', contentless_delete = 1, tokenize = 'trigram'
);

CREATE TRIGGER conversation_messages_search_insert AFTER INSERT ON conversation_messages BEGIN
    INSERT INTO message_search_ids (message_id) VALUES (new.message_id);
    INSERT INTO message_search (rowid, content) VALUES (last_insert_rowid(), new.content);
END;
CREATE TRIGGER conversation_messages_search_delete AFTER DELETE ON conversation_messages BEGIN
    DELETE FROM message_search
        WHERE rowid = (SELECT id FROM message_search_ids WHERE message_id = old.message_id);
    DELETE FROM message_search_ids WHERE message_id = old.message_id;
END;
CREATE TRIGGER conversation_messages_search_update AFTER UPDATE OF content ON conversation_messages BEGIN
    DELETE FROM message_search
        WHERE rowid = (SELECT id FROM message_search_ids WHERE message_id = old.message_id);
    INSERT INTO message_search (rowid, content)
        SELECT id, new.content FROM message_search_ids WHERE message_id = new.message_id;
END;

INSERT INTO message_search_ids (message_id) SELECT message_id FROM conversation_messages;
INSERT INTO message_search (rowid, content)
    SELECT k.id, m.content FROM message_search_ids k JOIN conversation_messages m ON m.message_id = k.message_id;

-- Newest-first browsing and cursor pagination of all messages.
CREATE INDEX conversation_messages_created_id ON conversation_messages (created_at DESC, message_id DESC);
-- Devices newest-seen first.
CREATE INDEX devices_last_seen ON devices (last_seen DESC, device_id DESC);
-- Statistics per day: sessions by start, clips by creation (already indexed), per device.
CREATE INDEX conversation_sessions_started ON conversation_sessions (started_at);
CREATE INDEX audio_files_device_created ON audio_files (device_id, created_at);
