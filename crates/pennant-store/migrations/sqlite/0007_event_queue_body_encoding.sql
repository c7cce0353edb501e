-- How a queued batch's body is stored: 'json' (the decompressed JSON array, as rows written before this column)
-- or 'lz4' (that array LZ4-compressed, its length prepended). Compressing shrinks what each queue commit writes
-- to the WAL several times over, and on SQLite those bytes are written while the one write lock is held.
ALTER TABLE event_queue ADD COLUMN body_encoding TEXT NOT NULL DEFAULT 'json';
