-- A random name for this database's event queue, made once. Processors tag the idempotence markers of batches
-- without a payload ID with it and the row ID: a queue in a new file (its row IDs starting again from 1) gets a new
-- name, so its batches never match markers of another queue's batches.
CREATE TABLE event_queue_origin (
    id TEXT NOT NULL PRIMARY KEY
);
