-- Insights: flag-evaluation counts per minute, hour and day; each flag's last evaluation per environment; the
-- contexts index with full-text search (tsvector + GIN); custom events for export; and the markers of processed
-- event batches that make processing idempotent. Counts are keyed by bucket start (Unix ms); variation -1 means
-- the SDK reported no variation (flag not found, or an error).
--
-- The minute and hour tables are partitioned by range of bucket: one partition per UTC day for minutes
-- (insights_eval_minute_d<day number>), one per 7 days for hours (insights_eval_hour_w<week number>). Partitions
-- are created ahead by the maintenance job and on demand by the writer; retention drops whole partitions.
CREATE TABLE insights_eval_minute (
    project     TEXT    NOT NULL,
    env         TEXT    NOT NULL,
    flag        TEXT    NOT NULL,
    bucket      BIGINT  NOT NULL,
    variation   BIGINT  NOT NULL,
    count       BIGINT  NOT NULL,
    PRIMARY KEY (project, env, flag, bucket, variation)
) PARTITION BY RANGE (bucket);

CREATE TABLE insights_eval_hour (
    project     TEXT    NOT NULL,
    env         TEXT    NOT NULL,
    flag        TEXT    NOT NULL,
    bucket      BIGINT  NOT NULL,
    variation   BIGINT  NOT NULL,
    count       BIGINT  NOT NULL,
    PRIMARY KEY (project, env, flag, bucket, variation)
) PARTITION BY RANGE (bucket);
CREATE INDEX insights_eval_hour_env ON insights_eval_hour (project, env, bucket);

CREATE TABLE insights_eval_day (
    project     TEXT    NOT NULL,
    env         TEXT    NOT NULL,
    flag        TEXT    NOT NULL,
    bucket      BIGINT  NOT NULL,
    variation   BIGINT  NOT NULL,
    count       BIGINT  NOT NULL,
    PRIMARY KEY (project, env, flag, bucket, variation)
);
CREATE INDEX insights_eval_day_bucket ON insights_eval_day (bucket);

CREATE TABLE insights_flag_seen (
    project     TEXT    NOT NULL,
    env         TEXT    NOT NULL,
    flag        TEXT    NOT NULL,
    last_seen   BIGINT  NOT NULL,
    PRIMARY KEY (project, env, flag)
);

CREATE TABLE insights_contexts (
    id          BIGSERIAL PRIMARY KEY,
    project     TEXT    NOT NULL,
    env         TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    name        TEXT,
    attributes  TEXT    NOT NULL,   -- JSON object, without kind, key, name and _meta
    redacted    TEXT    NOT NULL,   -- JSON array of the attribute references the SDK redacted
    search_text TEXT    NOT NULL,   -- key, name and attribute values, lower-cased, punctuation as spaces
    search_tsv  tsvector GENERATED ALWAYS AS (to_tsvector('simple', search_text)) STORED,
    first_seen  BIGINT  NOT NULL,
    last_seen   BIGINT  NOT NULL,
    UNIQUE (project, env, kind, key)
);
CREATE INDEX insights_contexts_seen ON insights_contexts (project, env, last_seen, id);
CREATE INDEX insights_contexts_search ON insights_contexts USING GIN (search_tsv);

CREATE TABLE insights_custom_events (
    id           BIGSERIAL PRIMARY KEY,
    project      TEXT    NOT NULL,
    env          TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    ts           BIGINT  NOT NULL,   -- the event's creationDate
    context_keys TEXT    NOT NULL,   -- JSON object kind → key
    data         TEXT,               -- JSON
    metric_value DOUBLE PRECISION,
    received_at  BIGINT  NOT NULL
);
CREATE INDEX insights_custom_events_ts ON insights_custom_events (project, env, ts, id);
CREATE INDEX insights_custom_events_received ON insights_custom_events (received_at);

CREATE TABLE insights_processed (
    marker       TEXT    NOT NULL PRIMARY KEY,
    processed_at BIGINT  NOT NULL
);
CREATE INDEX insights_processed_at ON insights_processed (processed_at);
