//! `StoreError`: everything the store can refuse or fail with, and its stable `code`.

/// Why a store operation failed. Messages follow the project's style (a capital, names in
/// backticks, a hint where the fix is known); [`StoreError::code`] is the machine-readable part.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A kv key was the empty string.
    #[error("Key is empty; hint: use a key of at least one byte")]
    EmptyKey,
    /// A kv key contained a NUL byte (`key` is escaped for display).
    #[error("Key `{key}` contains a NUL byte; hint: remove the NUL byte from the key")]
    KeyHasNul {
        /// The key, escaped and shortened for display.
        key: String,
    },
    /// A kv key was longer than [`KvLimits::max_key`](crate::KvLimits::max_key) bytes.
    #[error("Key `{key}` is {len} bytes, over the limit of {max} bytes; hint: use a shorter key")]
    KeyTooLong {
        /// The key, escaped and shortened for display.
        key: String,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A value's serialised JSON was longer than [`KvLimits::max_value`](crate::KvLimits::max_value).
    #[error(
        "Value of key `{key}` is {len} bytes of JSON, over the limit of {max} bytes; hint: split it over several keys or keep large data in the plugin's data dir"
    )]
    ValueTooLarge {
        /// The key, escaped and shortened for display.
        key: String,
        /// The serialised length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A key appeared more than once among one commit's puts and deletes.
    #[error(
        "Key `{key}` appears more than once in one commit; hint: put or delete each key at most once per commit"
    )]
    DuplicateKey {
        /// The key, escaped and shortened for display.
        key: String,
    },
    /// A commit had neither puts nor deletes.
    #[error("Commit has no puts and no deletes; hint: put or delete at least one key")]
    EmptyCommit,
    /// The commit would take the plugin's kv usage over its quota; nothing was written.
    #[error(
        "Plugin `{plugin}` would use {used} bytes of kv storage, over its quota of {quota} bytes; hint: delete keys or raise `limits.storage` in its manifest"
    )]
    QuotaExceeded {
        /// The plugin.
        plugin: String,
        /// The usage the commit would have led to, in bytes (keys plus JSON values).
        used: u64,
        /// The quota in bytes.
        quota: u64,
    },
    /// A compare-and-set expectation did not hold; nothing was written.
    #[error(
        "Key `{key}` does not hold the expected value; hint: read it again and retry the commit"
    )]
    Conflict {
        /// The first key whose expectation failed, escaped and shortened for display.
        key: String,
    },
    /// A token with this name exists already; nothing was written.
    #[error(
        "A token named `{name}` exists already; hint: pick another `--name`, or revoke the old one with `plugd token revoke {name}`"
    )]
    TokenNameTaken {
        /// The name.
        name: String,
    },
    /// A script with this id exists already; nothing was written.
    #[error(
        "Script `{id}` exists already; hint: `plugd script edit {id} FILE` adds a version, or pick another `--id`"
    )]
    ScriptExists {
        /// The script id.
        id: String,
    },
    /// No script has this id.
    #[error("No script `{id}`; hint: `plugd script list` shows the registered ones")]
    ScriptNotFound {
        /// The script id.
        id: String,
    },
    /// The script has no such version.
    #[error("Script `{id}` has no version {version}; hint: `plugd script versions {id}`")]
    ScriptVersionNotFound {
        /// The script id.
        id: String,
        /// The version asked for.
        version: u64,
    },
    /// A template with this name exists already; nothing was written.
    #[error(
        "Template `{name}` exists already; hint: pass `--replace` to overwrite it, or pick another name"
    )]
    TemplateExists {
        /// The template name.
        name: String,
    },
    /// The write queue stayed full for the whole send deadline; nothing was written.
    #[error("The store is busy: its write queue stayed full for {waited_ms} ms; hint: retry later")]
    Busy {
        /// How long the request waited for room.
        waited_ms: u64,
    },
    /// The writer thread is gone (the store is shutting down, or it panicked).
    #[error("The store's writer has stopped; hint: restart plugd")]
    Closed,
    /// The database file has a schema newer than this build knows.
    #[error(
        "Store `{path}` has schema version {found}, newer than this plugd knows ({known}); hint: run a newer plugd or use another state dir"
    )]
    SchemaTooNew {
        /// The database file.
        path: String,
        /// The version found in the file.
        found: u32,
        /// The newest version this build knows.
        known: u32,
    },
    /// The database could not be opened or prepared.
    #[error("Cannot open store `{path}`: {reason}")]
    Open {
        /// The database file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// SQLite reported an error (disk full, I/O error, ...).
    #[error("Store database error: {0}")]
    Sqlite(String),
    /// A stored value could not be read back as JSON.
    #[error("Stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The stable error code, from the project's status table: `bad_request` (a malformed key,
    /// value or commit), `limit_exceeded` (quota), `conflict` (a failed `expect`), `overloaded`
    /// (write queue full) or `internal`.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::EmptyKey
            | StoreError::KeyHasNul { .. }
            | StoreError::KeyTooLong { .. }
            | StoreError::ValueTooLarge { .. }
            | StoreError::DuplicateKey { .. }
            | StoreError::EmptyCommit => "bad_request",
            StoreError::QuotaExceeded { .. } => "limit_exceeded",
            StoreError::Conflict { .. }
            | StoreError::TokenNameTaken { .. }
            | StoreError::ScriptExists { .. }
            | StoreError::TemplateExists { .. } => "conflict",
            StoreError::ScriptNotFound { .. } | StoreError::ScriptVersionNotFound { .. } => {
                "not_found"
            }
            StoreError::Busy { .. } => "overloaded",
            StoreError::Closed
            | StoreError::SchemaTooNew { .. }
            | StoreError::Open { .. }
            | StoreError::Sqlite(_)
            | StoreError::Corrupt(_) => "internal",
        }
    }
}

/// A key as it appears in messages: control characters escaped, at most 64 characters.
pub(crate) fn shown_key(key: &str) -> String {
    const MAX_CHARS: usize = 64;
    let escaped: String = key.escape_debug().collect();
    if escaped.chars().count() <= MAX_CHARS {
        escaped
    } else {
        let mut short: String = escaped.chars().take(MAX_CHARS).collect();
        short.push('…');
        short
    }
}

/// Turns SQLite's errors into [`StoreError::Sqlite`] without making `rusqlite` part of the
/// public API (a `From` impl would be).
pub(crate) trait SqlResult<T> {
    fn sql(self) -> Result<T, StoreError>;
}

impl<T> SqlResult<T> for Result<T, rusqlite::Error> {
    fn sql(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Sqlite(e.to_string()))
    }
}
