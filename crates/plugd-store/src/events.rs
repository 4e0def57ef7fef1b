//! The event log: every published event in publish order, one cursor per subscribing plugin,
//! and the dead letters of handlers that kept failing.
//!
//! Delivery is cursor-based: a subscriber has handled every event up to its cursor (delivered,
//! skipped because its patterns do not match, or dead-lettered), so publishing writes one row
//! however many plugins subscribe, and a subscriber acknowledges a whole batch with one update.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Store;
use crate::error::{SqlResult, StoreError};
use crate::writer::Ctx;

/// An event to append to the log.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The topic (`image.imported`).
    pub topic: String,
    /// The payload as JSON text.
    pub payload: String,
    /// How many events led to this one (0 for an event an application published).
    pub hops: u8,
    /// The plugin that published it, `None` for the application.
    pub source: Option<String>,
    /// The one plugin it is for (a replayed dead letter), `None` for every subscriber.
    pub target: Option<String>,
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Its position in the log (increasing, never reused).
    pub seq: u64,
    /// The topic.
    pub topic: String,
    /// The payload as JSON text.
    pub payload: String,
    /// How many events led to this one.
    pub hops: u8,
    /// The plugin that published it, `None` for the application.
    pub source: Option<String>,
    /// The one plugin it is for, `None` for every subscriber.
    pub target: Option<String>,
    /// When it was published, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// An event a subscriber's handler kept failing on.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadEvent {
    /// The subscriber.
    pub plugin: String,
    /// The event.
    pub event: StoredEvent,
    /// How many times delivery was tried.
    pub attempts: u32,
    /// The last failure, as a sentence.
    pub error: String,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A subscriber's progress to record in one write: its new cursor and the events it gave up on
/// on the way.
#[derive(Clone, Debug, Default)]
pub struct Advance {
    /// Every event up to this `seq` is handled.
    pub cursor: u64,
    /// `(seq, attempts, error)` of events dead-lettered on the way.
    pub dead: Vec<(u64, u32, String)>,
}

const EVENT_COLUMNS: &str = "seq, topic, payload, hops, source, target, at_ms";

fn event_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.get(0)?,
        topic: row.get(1)?,
        payload: row.get(2)?,
        hops: row.get(3)?,
        source: row.get(4)?,
        target: row.get(5)?,
        at_ms: row.get(6)?,
    })
}

fn append(conn: &Connection, ctx: &Ctx, event: &NewEvent) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO events (topic, payload, hops, source, target, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .sql()?
    .execute(params![
        event.topic,
        event.payload,
        event.hops,
        event.source,
        event.target,
        ctx.now_ms
    ])
    .sql()?;
    Ok(conn.last_insert_rowid() as u64)
}

fn after(conn: &Connection, seq: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))
    .sql()?
    .query_map(params![seq as i64, limit], event_row)
    .sql()?
    .collect::<Result<_, _>>()
    .sql()
}

fn last_seq(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")
        .sql()?
        .query_row([], |row| row.get(0))
        .sql()
}

fn dead(
    conn: &Connection,
    plugin: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadEvent>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "SELECT e.seq, e.topic, e.payload, e.hops, e.source, e.target, e.at_ms,
                d.plugin, d.attempts, d.error, d.at_ms
         FROM event_dead d JOIN events e ON e.seq = d.seq
         WHERE ?1 IS NULL OR d.plugin = ?1
         ORDER BY d.at_ms DESC, d.seq DESC LIMIT ?2",
    )
    .sql()?
    .query_map(params![plugin, limit], |row| {
        Ok(DeadEvent {
            event: event_row(row)?,
            plugin: row.get(7)?,
            attempts: row.get(8)?,
            error: row.get(9)?,
            at_ms: row.get(10)?,
        })
    })
    .sql()?
    .collect::<Result<_, _>>()
    .sql()
}

/// The SQL condition selecting the events one subscriber gets, with its parameters: topics
/// matching one of `patterns` (exact, `prefix.*`, or `*`) and not meant for another plugin, or
/// meant for it.
fn subscription_filter(plugin: &str, patterns: &[String]) -> (String, Vec<String>) {
    let mut args = vec![plugin.to_owned()];
    let mut any = Vec::new();
    for pattern in patterns {
        if pattern == "*" {
            // Every topic but the host's own (`plugd.*`), which a plugin subscribes to by name.
            any.push("(topic < 'plugd.' OR topic >= 'plugd/')".to_owned());
        } else if let Some(prefix) = pattern.strip_suffix(".*") {
            // Topics that start with `prefix.` and go on: `prefix.` < topic < `prefix/`.
            args.push(format!("{prefix}."));
            args.push(format!("{prefix}/"));
            any.push(format!(
                "(topic > ?{} AND topic < ?{})",
                args.len() - 1,
                args.len()
            ));
        } else {
            args.push(pattern.clone());
            any.push(format!("topic = ?{}", args.len()));
        }
    }
    let matching = if any.is_empty() {
        "0".to_owned()
    } else {
        any.join(" OR ")
    };
    (
        format!("((target IS NULL AND ({matching})) OR target = ?1)"),
        args,
    )
}

impl Store {
    /// The events after `seq` that `plugin` gets with its subscription `patterns` (see
    /// [`Store::events_after`]), at most `limit`, and the `seq` up to which the answer is
    /// complete: every event up to it that the plugin gets is in the list, so a subscriber that
    /// handled them all may move its cursor there even past events it does not get.
    pub async fn events_for(
        &self,
        plugin: &str,
        patterns: &[String],
        seq: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64), StoreError> {
        let (filter, mut args) = subscription_filter(plugin, patterns);
        self.read(move |conn| {
            // One snapshot for both statements (a single writer commits in `seq` order, so a
            // snapshot holds every event up to its newest).
            let tx = conn.unchecked_transaction().sql()?;
            let upto = last_seq(&tx)?;
            let n = args.len();
            args.push(seq.to_string());
            args.push(upto.to_string());
            args.push(limit.to_string());
            let events: Vec<StoredEvent> = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events
                     WHERE seq > CAST(?{} AS INTEGER) AND seq <= CAST(?{} AS INTEGER) AND {filter}
                     ORDER BY seq LIMIT CAST(?{} AS INTEGER)",
                    n + 1,
                    n + 2,
                    n + 3
                ))
                .sql()?
                .query_map(rusqlite::params_from_iter(args.iter()), event_row)
                .sql()?
                .collect::<Result<_, _>>()
                .sql()?;
            tx.finish().sql()?;
            let complete = if events.len() >= limit {
                events.last().map_or(seq, |e| e.seq)
            } else {
                upto.max(seq)
            };
            Ok((events, complete))
        })
        .await
    }

    /// How many events after `seq` `plugin` gets with `patterns` (its backlog).
    pub async fn events_pending(
        &self,
        plugin: &str,
        patterns: &[String],
        seq: u64,
    ) -> Result<u64, StoreError> {
        let (filter, mut args) = subscription_filter(plugin, patterns);
        self.read(move |conn| {
            let n = args.len();
            args.push(seq.to_string());
            conn.prepare_cached(&format!(
                "SELECT COUNT(*) FROM events WHERE seq > CAST(?{} AS INTEGER) AND {filter}",
                n + 1
            ))
            .sql()?
            .query_row(rusqlite::params_from_iter(args.iter()), |row| row.get(0))
            .sql()
        })
        .await
    }

    /// Appends an event to the log and returns its `seq` once committed.
    pub async fn event_append(&self, event: NewEvent) -> Result<u64, StoreError> {
        self.write_point(move |conn, ctx| append(conn, ctx, &event))
            .await
    }

    /// Up to `limit` events after `seq`, in order.
    pub async fn events_after(
        &self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| after(conn, seq, limit)).await
    }

    /// The `seq` of the newest event (0 when the log is empty).
    pub async fn event_last_seq(&self) -> Result<u64, StoreError> {
        self.read(last_seq).await
    }

    /// Every subscriber's cursor.
    pub async fn event_cursors(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT plugin, seq FROM event_cursors ORDER BY plugin")
                .sql()?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .sql()?
                .collect::<Result<_, _>>()
                .sql()
        })
        .await
    }

    /// The plugin's cursor; when it has none, creates it at the newest event (a new subscriber
    /// gets what is published from now on) and returns that.
    pub async fn event_subscribe(&self, plugin: &str) -> Result<u64, StoreError> {
        let plugin = plugin.to_owned();
        self.write(move |conn, _| {
            let found: Option<u64> = conn
                .prepare_cached("SELECT seq FROM event_cursors WHERE plugin = ?1")
                .sql()?
                .query_row([&plugin], |row| row.get(0))
                .optional()
                .sql()?;
            if let Some(seq) = found {
                return Ok(seq);
            }
            let seq = last_seq(conn)?;
            conn.prepare_cached("INSERT INTO event_cursors (plugin, seq) VALUES (?1, ?2)")
                .sql()?
                .execute(params![plugin, seq as i64])
                .sql()?;
            Ok(seq)
        })
        .await
    }

    /// Removes the plugin's cursor: it receives nothing until it subscribes again.
    pub async fn event_unsubscribe(&self, plugin: &str) -> Result<(), StoreError> {
        let plugin = plugin.to_owned();
        self.write(move |conn, _| {
            conn.prepare_cached("DELETE FROM event_cursors WHERE plugin = ?1")
                .sql()?
                .execute([&plugin])
                .sql()?;
            Ok(())
        })
        .await
    }

    /// Records a subscriber's progress in one write: its new cursor (never moved backwards)
    /// and the events it dead-lettered on the way.
    pub async fn event_advance(&self, plugin: &str, advance: Advance) -> Result<(), StoreError> {
        let plugin = plugin.to_owned();
        self.write_point(move |conn, ctx| {
            for (seq, attempts, error) in &advance.dead {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO event_dead (plugin, seq, attempts, error, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .sql()?
                .execute(params![plugin, *seq as i64, attempts, error, ctx.now_ms])
                .sql()?;
            }
            conn.prepare_cached(
                "INSERT INTO event_cursors (plugin, seq) VALUES (?1, ?2)
                 ON CONFLICT (plugin) DO UPDATE SET seq = MAX(seq, excluded.seq)",
            )
            .sql()?
            .execute(params![plugin, advance.cursor as i64])
            .sql()?;
            Ok(())
        })
        .await
    }

    /// Dead letters, newest first, of one plugin or of all.
    pub async fn dead_events(
        &self,
        plugin: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadEvent>, StoreError> {
        let plugin = plugin.map(str::to_owned);
        self.read(move |conn| dead(conn, plugin.as_deref(), limit))
            .await
    }

    /// Replays a dead letter: removes it and appends a copy of the event for that plugin only
    /// (delivered after what is already waiting for it). Returns the new `seq`, or `None` when
    /// there is no such dead letter.
    pub async fn event_replay(&self, plugin: &str, seq: u64) -> Result<Option<u64>, StoreError> {
        let plugin = plugin.to_owned();
        self.write(move |conn, ctx| {
            let removed = conn
                .prepare_cached("DELETE FROM event_dead WHERE plugin = ?1 AND seq = ?2")
                .sql()?
                .execute(params![plugin, seq as i64])
                .sql()?;
            if removed == 0 {
                return Ok(None);
            }
            let event = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?1"
                ))
                .sql()?
                .query_row([seq as i64], event_row)
                .optional()
                .sql()?;
            let Some(event) = event else { return Ok(None) };
            let copy = NewEvent {
                topic: event.topic,
                payload: event.payload,
                hops: event.hops,
                source: event.source,
                target: Some(plugin.clone()),
            };
            append(conn, ctx, &copy).map(Some)
        })
        .await
    }

    /// Deletes what is older than `before_ms` and no longer needed: events every subscriber is
    /// past (and no dead letter refers to), dead letters, and finished tasks. Returns how many
    /// rows went (events, dead letters, tasks).
    pub async fn purge(&self, before_ms: u64) -> Result<(u64, u64, u64), StoreError> {
        self.write(move |conn, _| {
            let before = before_ms as i64;
            let dead = conn
                .prepare_cached("DELETE FROM event_dead WHERE at_ms < ?1")
                .sql()?
                .execute([before])
                .sql()? as u64;
            let events = conn
                .prepare_cached(
                    "DELETE FROM events WHERE at_ms < ?1
                       AND seq <= (SELECT COALESCE(MIN(seq), (SELECT MAX(seq) FROM events)) FROM event_cursors)
                       AND seq NOT IN (SELECT seq FROM event_dead)",
                )
                .sql()?
                .execute([before])
                .sql()? as u64;
            let tasks = conn
                .prepare_cached(
                    "DELETE FROM tasks WHERE finished_ms IS NOT NULL AND finished_ms < ?1
                       AND state IN ('succeeded', 'failed', 'cancelled')",
                )
                .sql()?
                .execute([before])
                .sql()? as u64;
            Ok((events, dead, tasks))
        })
        .await
    }

    /// Deletes the plugin's event cursor, dead letters and tasks (uninstall).
    pub async fn forget_plugin_work(&self, plugin: &str) -> Result<(), StoreError> {
        let plugin = plugin.to_owned();
        self.write(move |conn, _| {
            for sql in [
                "DELETE FROM event_cursors WHERE plugin = ?1",
                "DELETE FROM event_dead WHERE plugin = ?1",
                "DELETE FROM tasks WHERE plugin = ?1",
            ] {
                conn.prepare_cached(sql).sql()?.execute([&plugin]).sql()?;
            }
            Ok(())
        })
        .await
    }
}
