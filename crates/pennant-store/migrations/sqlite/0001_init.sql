-- Documents: projects, environments, flags, segments, context kinds and webhooks share one shape. `scope` is
-- the parent path ('' for projects, 'proj' for environments, flags and context kinds, 'proj/env' for segments).
CREATE TABLE resources (
    kind        TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    tags        TEXT    NOT NULL,   -- ",a,b," so that a tag filter is a LIKE
    archived    INTEGER NOT NULL DEFAULT 0,
    data        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, scope, key)
);

-- SDK-facing credentials of environments. A rotated key stays valid until expires_at.
CREATE TABLE credentials (
    credential  TEXT    NOT NULL PRIMARY KEY,
    kind        TEXT    NOT NULL,   -- sdk | mobile | client
    project_key TEXT    NOT NULL,
    env_key     TEXT    NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX credentials_env ON credentials (project_key, env_key);

CREATE TABLE changelog (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    ts            INTEGER NOT NULL,
    actor_kind    TEXT    NOT NULL,
    actor_id      TEXT    NOT NULL,
    actor_name    TEXT    NOT NULL,
    resource_kind TEXT    NOT NULL,
    scope         TEXT    NOT NULL,
    resource_key  TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    comment       TEXT    NOT NULL,
    before_json   TEXT,
    after_json    TEXT,
    diff_json     TEXT    NOT NULL,
    search_text   TEXT    NOT NULL
);
CREATE INDEX changelog_resource ON changelog (resource_kind, scope, resource_key, id);
CREATE INDEX changelog_ts ON changelog (ts);

-- Changes for the streaming service: one row per environment whose SDK payload a write changed.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_key TEXT    NOT NULL,
    env_key     TEXT    NOT NULL,
    kind        TEXT    NOT NULL,   -- flag | segment
    key         TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE members (
    id            TEXT    NOT NULL PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash  TEXT    NOT NULL PRIMARY KEY,
    member_id   TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    role        TEXT    NOT NULL,
    projects    TEXT    NOT NULL,   -- JSON array; empty = all projects
    owner_id    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    last_used   INTEGER
);

CREATE TABLE webhook_deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id   TEXT    NOT NULL,
    changelog_id INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    status       TEXT    NOT NULL,   -- pending | delivered | failed
    response     INTEGER,
    error        TEXT    NOT NULL,
    next_at      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_at);

CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
