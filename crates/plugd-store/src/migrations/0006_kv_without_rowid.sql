-- Schema version 6: `kv_meta`, `kv_commits` and `kv_commit_ops` become WITHOUT ROWID tables,
-- stored in their primary key's b-tree alone. As rowid tables each had a second b-tree (the
-- primary key's index), and a kv commit inserts into and deletes from the history tables: a
-- `kv.set` wrote 7.3 WAL pages, now 4.6 (`plugd-bench services`, bench/README.md "A leaner kv
-- commit"). `kv` keeps its rowid: its values can be 1 MiB, and a WITHOUT ROWID b-tree keeps
-- only about 1 KB of a row on its page before it spills to overflow pages.
CREATE TABLE kv_meta_v6 (
    plugin      TEXT PRIMARY KEY,
    bytes       INTEGER NOT NULL,
    next_commit INTEGER NOT NULL,
    applied     INTEGER NOT NULL,
    undone      INTEGER NOT NULL,
    history     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO kv_meta_v6 (plugin, bytes, next_commit, applied, undone, history)
    SELECT plugin, bytes, next_commit, applied, undone, history FROM kv_meta;
DROP TABLE kv_meta;
ALTER TABLE kv_meta_v6 RENAME TO kv_meta;

CREATE TABLE kv_commits_v6 (
    plugin TEXT NOT NULL,
    id     INTEGER NOT NULL,
    undone INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    bytes  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (plugin, id)
) WITHOUT ROWID;
INSERT INTO kv_commits_v6 (plugin, id, undone, at_ms, bytes)
    SELECT plugin, id, undone, at_ms, bytes FROM kv_commits;
DROP TABLE kv_commits;
ALTER TABLE kv_commits_v6 RENAME TO kv_commits;

CREATE TABLE kv_commit_ops_v6 (
    plugin TEXT NOT NULL,
    id     INTEGER NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT,
    PRIMARY KEY (plugin, id, key)
) WITHOUT ROWID;
INSERT INTO kv_commit_ops_v6 (plugin, id, key, value)
    SELECT plugin, id, key, value FROM kv_commit_ops;
DROP TABLE kv_commit_ops;
ALTER TABLE kv_commit_ops_v6 RENAME TO kv_commit_ops;
