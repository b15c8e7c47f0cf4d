-- Search by meaning: one embedding per message and model, written by the background
-- embedding worker (never on a session's path). The vector is little-endian f32 bytes and the
-- similarity is computed by the gateway over the filtered candidates.
-- dims = 0 marks a message the provider refused for good (never retried, never matched).
CREATE TABLE message_embeddings (
    message_id BLOB PRIMARY KEY REFERENCES conversation_messages (message_id) ON DELETE CASCADE,
    model      TEXT NOT NULL,
    dims       INTEGER NOT NULL,
    vector     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
