-- The embedded event queue: analytics batches the front door acknowledged and the processors have not yet
-- acknowledged.
CREATE TABLE event_queue (
    id             BIGSERIAL PRIMARY KEY,
    project_key    TEXT    NOT NULL,
    env_key        TEXT    NOT NULL,
    payload_id     TEXT,
    received_at    BIGINT  NOT NULL,
    schema_version INTEGER NOT NULL,
    body           BYTEA   NOT NULL
);
