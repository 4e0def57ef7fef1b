-- Schema version 4: API tokens. Only the SHA-256 of each secret is kept; the secret is shown
-- once, when the token is created. `scopes` is space-separated (`admin`, `read`,
-- `call:hello/greet`, ...). `expires_at_ms` is NULL for a token that never expires.
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    hash          BLOB NOT NULL UNIQUE,
    name          TEXT NOT NULL UNIQUE,
    scopes        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER
);
