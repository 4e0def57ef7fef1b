//! Store benchmark: durable kv commits per second from 64 concurrent writers (group commit) and
//! sequential commit latency, next to a bare SQLite insert loop in the same run, for both
//! durability modes; plus kv_get latency under that write load, from the read pool and through
//! the writer.
//!
//! `cargo run --release -p plugd-store --example store_bench -- [-n COMMITS] [--writers 64] [--dir DIR]`

use std::time::{Duration, Instant};

use plugd_store::{Commit, Durability, KvLimits, Store, StoreConfig};
use rusqlite::Connection;
use serde_json::json;

struct Args {
    commits: usize,
    writers: usize,
    dir: std::path::PathBuf,
}

fn args() -> Args {
    let mut args = Args {
        commits: 20_000,
        writers: 64,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| panic!("`{flag}` needs a value"));
        match flag.as_str() {
            "-n" => args.commits = value.parse().expect("a number of commits"),
            "--writers" => args.writers = value.parse().expect("a number of writers"),
            "--dir" => args.dir = value.into(),
            other => panic!("unknown flag `{other}`; hint: -n, --writers, --dir"),
        }
    }
    args
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn fmt_lat(mut lat: Vec<Duration>) -> String {
    lat.sort();
    format!(
        "p50 {:>7.1} µs  p99 {:>7.1} µs",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6
    )
}

/// 100 bytes of JSON.
fn payload(i: usize) -> serde_json::Value {
    json!({"i": i, "pad": "x".repeat(80)})
}

/// The baseline: rusqlite on its own, one autocommit INSERT per durable write, same pragmas.
fn bare_sqlite(path: &std::path::Path, durability: Durability, n: usize) -> (f64, Vec<Duration>) {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    let sync = if durability == Durability::Full {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.pragma_update(None, "synchronous", sync).unwrap();
    conn.execute_batch("CREATE TABLE kv (plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (plugin, key))")
        .unwrap();
    let mut insert = conn
        .prepare("INSERT OR REPLACE INTO kv (plugin, key, value) VALUES ('p', ?1, ?2)")
        .unwrap();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        insert
            .execute((format!("k{i}"), payload(i).to_string()))
            .unwrap();
        lat.push(t.elapsed());
    }
    (n as f64 / start.elapsed().as_secs_f64(), lat)
}

fn commit(key: String, i: usize) -> Commit {
    Commit {
        puts: vec![(key, payload(i))],
        ..Commit::default()
    }
}

async fn sequential(store: &Store, n: usize) -> (f64, Vec<Duration>) {
    let limits = KvLimits::default();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        store
            .kv_commit("seq", commit(format!("k{i}"), i), &limits)
            .await
            .unwrap();
        lat.push(t.elapsed());
    }
    (n as f64 / start.elapsed().as_secs_f64(), lat)
}

/// `writers` tasks share `n` commits (each to its own plugin, as the host would see 64 calls of
/// several plugins, or of one); a reader samples kv_get latency meanwhile.
async fn concurrent(store: &Store, n: usize, writers: usize) -> (f64, f64, Vec<Duration>) {
    let batches_before = store.batches();
    store
        .kv_commit("r", commit("hot".into(), 0), &KvLimits::default())
        .await
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                store.kv_get("r", "hot").await.unwrap().unwrap();
                lat.push(t.elapsed());
            }
            lat
        })
    };
    let per = n / writers;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.spawn(async move {
            let limits = KvLimits::default();
            for i in 0..per {
                let plugin = format!("w{}", w % 8);
                store
                    .kv_commit(&plugin, commit(format!("{w}-{i}"), i), &limits)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let elapsed = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let lat = reader.await.unwrap();
    let batches = (store.batches() - batches_before).max(1);
    let total = per * writers;
    (
        total as f64 / elapsed.as_secs_f64(),
        total as f64 / batches as f64,
        lat,
    )
}

#[tokio::main]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir_in(&args.dir).unwrap();
    println!(
        "plugd-store bench: {} commits, {} writers, 100-byte values, dir {}",
        args.commits,
        args.writers,
        args.dir.display()
    );
    for durability in [Durability::Process, Durability::Full] {
        let name = format!("{durability:?}").to_lowercase();
        let seq_n = args.commits / 4;
        let (rate, lat) = bare_sqlite(
            &dir.path().join(format!("bare-{name}.db")),
            durability,
            seq_n,
        );
        println!(
            "[{name}] bare SQLite insert loop (1 row/txn) {rate:>9.0}/s  {}",
            fmt_lat(lat)
        );

        for readers in [4, 0] {
            let config = StoreConfig {
                durability,
                ..StoreConfig::new(dir.path().join(format!("store-{name}-{readers}.db")))
            };
            let store = Store::open_with_readers(config, readers).await.unwrap();
            let how = if readers > 0 {
                "read pool"
            } else {
                "reads via writer"
            };
            if readers > 0 {
                let (rate, lat) = sequential(&store, seq_n).await;
                println!(
                    "[{name}] store kv_commit, 1 in flight        {rate:>9.0}/s  {}",
                    fmt_lat(lat)
                );
            }
            let (rate, per_batch, reads) = concurrent(&store, args.commits, args.writers).await;
            println!(
                "[{name}] store kv_commit, {} in flight        {rate:>9.0}/s  ({per_batch:.1} commits/txn); kv_get meanwhile ({how}): {}",
                args.writers,
                fmt_lat(reads)
            );
        }
    }
}
