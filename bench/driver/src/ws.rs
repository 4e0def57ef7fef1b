//! `ws-echo URL...`: WebSocket echo round trips (issue 13), one connection per URL, measured
//! one after the other in the same run: through plugd's proxy and straight to the app.

use std::time::Instant;

use anyhow::Context;

/// Sends `n` text messages on one connection to each URL (after `warmup`), one at a time, and
/// prints the round-trip percentiles of each as a table row and a JSON line.
pub(crate) fn run(urls: &[String], n: usize, warmup: usize, size: usize) -> anyhow::Result<()> {
    let message = "x".repeat(size);
    println!("WebSocket echo round trip, {n} messages of {size} bytes, one at a time");
    println!(
        "{:<60} {:>10} {:>10} {:>10}",
        "url", "p50 µs", "p90 µs", "p99 µs"
    );
    for url in urls {
        let (mut ws, _) = tungstenite::connect(url.as_str())
            .with_context(|| format!("Cannot connect to {url}"))?;
        let mut samples = Vec::with_capacity(n);
        for i in 0..warmup + n {
            let began = Instant::now();
            ws.send(tungstenite::Message::text(message.clone()))?;
            loop {
                match ws.read()? {
                    tungstenite::Message::Text(_) | tungstenite::Message::Binary(_) => break,
                    _ => continue,
                }
            }
            if i >= warmup {
                samples.push(began.elapsed().as_nanos() as u64);
            }
        }
        let _ = ws.close(None);
        samples.sort_unstable();
        let at = |q: f64| {
            samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0
        };
        let (p50, p90, p99) = (at(0.5), at(0.9), at(0.99));
        println!("{url:<60} {p50:>10.1} {p90:>10.1} {p99:>10.1}");
        println!(
            "{}",
            serde_json::json!({"bench": "ws-echo", "url": url, "n": n, "p50_us": p50, "p90_us": p90, "p99_us": p99})
        );
    }
    Ok(())
}
