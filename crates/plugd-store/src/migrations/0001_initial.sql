-- Schema version 1: params with history, kv with commits (undo/redo), uninstalled plugins.
-- Values are JSON text. Rowid tables (not WITHOUT ROWID): kv values can be up to 1 MiB.

CREATE TABLE params (
    plugin   TEXT NOT NULL,
    revision INTEGER NOT NULL,
    value    TEXT NOT NULL,
    source   TEXT NOT NULL,
    at_ms    INTEGER NOT NULL,
    PRIMARY KEY (plugin, revision)
);

CREATE TABLE kv (
    plugin TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (plugin, key)
);

-- Per plugin: bytes used (sum of key and JSON value lengths), the next commit id, and how
-- many commits are on the undo (`applied`) and redo (`undone`) stacks.
CREATE TABLE kv_meta (
    plugin      TEXT PRIMARY KEY,
    bytes       INTEGER NOT NULL,
    next_commit INTEGER NOT NULL,
    applied     INTEGER NOT NULL,
    undone      INTEGER NOT NULL
);

-- One row per commit still in the history. `undone` = 0: on the undo stack (applied);
-- 1: on the redo stack. Applied ids are always below undone ids.
CREATE TABLE kv_commits (
    plugin TEXT NOT NULL,
    id     INTEGER NOT NULL,
    undone INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    PRIMARY KEY (plugin, id)
);

-- The keys a commit touched, each with the value that flips the commit to its other side:
-- for an applied commit the value before it (its inverse), for an undone one the value it set.
-- NULL means "absent" (delete).
CREATE TABLE kv_commit_ops (
    plugin TEXT NOT NULL,
    id     INTEGER NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT,
    PRIMARY KEY (plugin, id, key)
);

CREATE TABLE uninstalled (
    plugin TEXT PRIMARY KEY,
    at_ms  INTEGER NOT NULL
);
