-- Schema version 5: the script manager. A script is an id with immutable, content-addressed
-- versions (`digest` = sha256 of source and metadata); `current` is the version a run uses by
-- default. `meta` is the version's JSON metadata (name, tags, permissions, limits,
-- dependencies); `lock` its uv lock, NULL without dependencies. Runs are kept after the script
-- is removed (the record of what ran) until the retention purge; `script_id` is NULL for a file
-- run. Templates are scripts with `{{ variable }}` placeholders and typed variables (`vars`, JSON).
CREATE TABLE scripts (
    id            TEXT PRIMARY KEY,
    current       INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE script_versions (
    script_id     TEXT NOT NULL,
    version       INTEGER NOT NULL,
    digest        TEXT NOT NULL,
    source        TEXT NOT NULL,
    meta          TEXT NOT NULL,
    lock          TEXT,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (script_id, version),
    UNIQUE (script_id, digest)
);
CREATE TABLE script_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    script_id     TEXT,
    version       INTEGER,
    digest        TEXT NOT NULL,
    label         TEXT NOT NULL,
    args          TEXT NOT NULL,
    who           TEXT NOT NULL,
    state         TEXT NOT NULL,
    queued_at_ms  INTEGER NOT NULL,
    started_at_ms INTEGER,
    ended_at_ms   INTEGER,
    exit_code     INTEGER,
    reason        TEXT,
    peak_rss      INTEGER,
    cpu_ms        INTEGER,
    output        TEXT NOT NULL DEFAULT '',
    output_bytes  INTEGER NOT NULL DEFAULT 0,
    result        TEXT
);
CREATE INDEX script_runs_by_script ON script_runs (script_id, id);
CREATE INDEX script_runs_by_end ON script_runs (ended_at_ms);
CREATE TABLE templates (
    name          TEXT PRIMARY KEY,
    description   TEXT NOT NULL,
    source        TEXT NOT NULL,
    vars          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
