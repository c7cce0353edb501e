-- The embedded event queue: analytics batches the front door acknowledged and the processors have not yet
-- acknowledged. AUTOINCREMENT so that IDs are never reused after rows are deleted.
CREATE TABLE event_queue (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    project_key    TEXT    NOT NULL,
    env_key        TEXT    NOT NULL,
    payload_id     TEXT,
    received_at    INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    body           BLOB    NOT NULL
);
