//! `ws-echo URL...`: WebSocket echo round trips (issue 13), one connection per URL, interleaved
//! in the same run (one message on each connection in turn, the order alternating), so the
//! machine's drift between seconds hits every URL alike: through plugd's proxy and straight to
//! the app.

use std::net::TcpStream;
use std::time::Instant;

use anyhow::Context;
use tungstenite::WebSocket;
use tungstenite::stream::MaybeTlsStream;

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// One message to `ws` and its echo; the round trip in nanoseconds.
fn round_trip(ws: &mut Ws, message: &str) -> anyhow::Result<u64> {
    let began = Instant::now();
    ws.send(tungstenite::Message::text(message.to_owned()))?;
    loop {
        match ws.read()? {
            tungstenite::Message::Text(_) | tungstenite::Message::Binary(_) => break,
            _ => continue,
        }
    }
    Ok(began.elapsed().as_nanos() as u64)
}

/// Sends `n` text messages on one connection to each URL (after `warmup`), one at a time and
/// the URLs in turn, and prints the round-trip percentiles of each as a table row and a JSON
/// line.
pub(crate) fn run(urls: &[String], n: usize, warmup: usize, size: usize) -> anyhow::Result<()> {
    let message = "x".repeat(size);
    println!(
        "WebSocket echo round trip, {n} messages of {size} bytes per URL, one at a time, URLs interleaved"
    );
    println!(
        "{:<60} {:>10} {:>10} {:>10}",
        "url", "p50 µs", "p90 µs", "p99 µs"
    );
    let mut sockets = Vec::with_capacity(urls.len());
    for url in urls {
        let (ws, _) = tungstenite::connect(url.as_str())
            .with_context(|| format!("Cannot connect to {url}"))?;
        sockets.push(ws);
    }
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(n); urls.len()];
    for i in 0..warmup + n {
        // Odd rounds go last to first: neither URL always follows the other.
        let order: Vec<usize> = if i % 2 == 0 {
            (0..urls.len()).collect()
        } else {
            (0..urls.len()).rev().collect()
        };
        for k in order {
            let took = round_trip(&mut sockets[k], &message)
                .with_context(|| format!("The echo from {} failed", urls[k]))?;
            if i >= warmup {
                samples[k].push(took);
            }
        }
    }
    for ws in &mut sockets {
        let _ = ws.close(None);
    }
    for (url, mut samples) in urls.iter().zip(samples) {
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

/// `tcp-relay --listen ADDR --to ADDR|unix:PATH`: the raw limit of a relay, for the WebSocket
/// figure: every accepted TCP connection is joined to a new connection to `to` (TCP with
/// `TCP_NODELAY`, or a Unix socket such as a plugin's HTTP socket) and bytes are copied both ways
/// with `copy_bidirectional` on a multi-thread tokio runtime, as plugd's proxy does after an
/// upgrade, without HTTP, auth or hyper.
pub(crate) async fn relay(listen: std::net::SocketAddr, to: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("Cannot listen on {listen}"))?;
    println!("tcp-relay: {} -> {to}", listener.local_addr()?);
    let to = std::sync::Arc::new(to);
    loop {
        let (mut client, _) = listener.accept().await?;
        let to = to.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            if let Some(path) = to.strip_prefix("unix:") {
                let Ok(mut upstream) = tokio::net::UnixStream::connect(path).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            } else {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(to.as_str()).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}
