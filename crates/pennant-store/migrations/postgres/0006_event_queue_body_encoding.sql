-- How a queued batch's body is stored: 'json' (the decompressed JSON array, as rows written before this column)
-- or 'lz4' (that array LZ4-compressed, its length prepended).
ALTER TABLE event_queue ADD COLUMN body_encoding TEXT NOT NULL DEFAULT 'json';
