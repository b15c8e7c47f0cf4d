-- Search by meaning: one embedding per message and model, written by the background
-- embedding worker (never on a session's path). The vector is little-endian f32 bytes and the
-- similarity is computed by the gateway over the filtered candidates: pgvector is not
-- packaged for Debian 12. Where a deployment has it, a `vector(dims)` column with an HNSW
-- index would let the database rank instead (see docs/OPERATIONS.md).
-- dims = 0 marks a message the provider refused for good (never retried, never matched).
CREATE TABLE message_embeddings (
    message_id UUID PRIMARY KEY REFERENCES conversation_messages (message_id) ON DELETE CASCADE,
    model      TEXT NOT NULL,
    dims       INTEGER NOT NULL,
    vector     BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
