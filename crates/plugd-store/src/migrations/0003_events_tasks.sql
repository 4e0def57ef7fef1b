-- Schema version 3: durable events and background tasks. AUTOINCREMENT: a purge must never
-- let a new event or task reuse the id of one it removed (cursors and clients hold them).

-- Every published event, in publish order (`seq`). `target` is NULL for an event every
-- subscriber gets, or the one plugin a replayed dead letter goes to. Kept for the retention
-- period once every subscriber is past it.
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT NOT NULL,
    payload TEXT NOT NULL,
    hops    INTEGER NOT NULL,
    source  TEXT,
    target  TEXT,
    at_ms   INTEGER NOT NULL
);

-- Per subscribing plugin: every event with `seq` <= this was delivered or dead-lettered.
CREATE TABLE event_cursors (
    plugin TEXT PRIMARY KEY,
    seq    INTEGER NOT NULL
);

-- Events a subscriber's handler kept failing on, past their retry budget.
CREATE TABLE event_dead (
    plugin   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    error    TEXT NOT NULL,
    at_ms    INTEGER NOT NULL,
    PRIMARY KEY (plugin, seq)
);

-- Background tasks. `kind` 0: submitted; 1: an after-last hook run. `state`: queued, running,
-- succeeded, failed, cancelled. `not_before_ms`: a retry waits until then.
CREATE TABLE tasks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin         TEXT NOT NULL,
    task           TEXT NOT NULL,
    kind           INTEGER NOT NULL,
    payload        TEXT NOT NULL,
    key            TEXT,
    priority       INTEGER NOT NULL,
    state          TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    max_attempts   INTEGER NOT NULL,
    progress       REAL,
    message        TEXT,
    result         TEXT,
    error          TEXT,
    error_code     TEXT,
    stopped        INTEGER,
    submitted_ms   INTEGER NOT NULL,
    started_ms     INTEGER,
    finished_ms    INTEGER,
    not_before_ms  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_unfinished ON tasks (state) WHERE state IN ('queued', 'running');
CREATE INDEX tasks_plugin ON tasks (plugin, id);
CREATE INDEX tasks_finished ON tasks (finished_ms) WHERE finished_ms IS NOT NULL;
