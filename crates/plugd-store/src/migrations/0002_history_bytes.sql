-- Schema version 2: the bytes each commit keeps for undo/redo (`kv_commits.bytes`: its keys
-- plus the JSON values it stores) and their sum per plugin (`kv_meta.history`), so the history
-- is held within the plugin's quota: past it, the oldest commits are dropped. Commits written by
-- version 1 count as 0 bytes until they leave the history.
ALTER TABLE kv_commits ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE kv_meta ADD COLUMN history INTEGER NOT NULL DEFAULT 0;
