//! Benchmarks of the wasm runtime: call latency (pooled, fresh, async) and start-up of many plugins.
//!
//! Run: `cargo run --release -p plugd-wasm --example bench` (numbers in `bench/wasm/README.md`).
//! `... --example bench -- cold` measures only starts on a cold compiled-code cache: distinct
//! components started one after another, then all at once (compiled in parallel).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugd_manifest::{ActionName, Manifest};
use plugd_runtime::{Instance, InstanceSpec, Invocation, NullHost};
use plugd_wasm::test_guest::TestGuest;
use plugd_wasm::{InstanceReuse, WasmConfig, WasmInstance, WasmRuntime};
use serde_json::value::RawValue;

/// A 100-byte JSON payload.
const PAYLOAD: &str = r#"{"id":12345,"name":"benchmark","tags":["a","b","c"],"nested":{"x":1.5,"y":-2},"ok":true,"pad":"xx"}"#;

fn spec(root: &Path, name: &str, wasm: &[u8]) -> InstanceSpec {
    let dir = root.join("packages").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.wasm"), wasm).unwrap();
    let toml = format!(
        "[plugin]\nname = \"{name}\"\nversion = \"0.1.0\"\nruntime = \"wasm\"\nentry = \"plugin.wasm\"\n"
    );
    let data_dir = root.join("data").join(name);
    std::fs::create_dir_all(&data_dir).unwrap();
    InstanceSpec {
        manifest: Arc::new(Manifest::from_toml_str(&toml).unwrap()),
        package_dir: dir,
        data_dir,
        params: serde_json::json!({}),
        python_env: None,
        http_socket: None,
    }
}

fn invocation() -> Invocation {
    Invocation {
        action: ActionName::new("echo").unwrap(),
        payload: RawValue::from_string(PAYLOAD.to_owned()).unwrap(),
        timeout: None,
        chain: Vec::new(),
    }
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{label:<34} n={:<7} p50={:>9.2?} p99={:>9.2?} mean={:>9.2?}",
        samples.len(),
        pct(0.50),
        pct(0.99),
        mean
    );
}

fn time_blocking(instance: &WasmInstance, n: usize) -> Vec<Duration> {
    let inv = invocation();
    for _ in 0..1_000 {
        instance.call_blocking(&inv).unwrap();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let out = instance.call_blocking(&inv).unwrap();
            let d = t.elapsed();
            assert_eq!(out.result.get().len(), PAYLOAD.len() + 10);
            d
        })
        .collect()
}

async fn start(runtime: &WasmRuntime, spec: InstanceSpec) -> Arc<WasmInstance> {
    runtime.start_wasm(spec, Arc::new(NullHost)).await.unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("cold") {
        cold_starts().await;
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let wasm = TestGuest::new("0.1.0").component();
    println!(
        "guest component: {} bytes; payload {} bytes",
        wasm.len(),
        PAYLOAD.len()
    );

    // Call latency.
    let pooled_rt = WasmRuntime::new(WasmConfig::new(root.path().join("cache"))).unwrap();
    let pooled = start(&pooled_rt, spec(root.path(), "pooled", &wasm)).await;
    let mut fresh_cfg = WasmConfig::new(root.path().join("cache"));
    fresh_cfg.instance_reuse = InstanceReuse::Fresh;
    let fresh_rt = WasmRuntime::new(fresh_cfg).unwrap();
    let fresh = start(&fresh_rt, spec(root.path(), "fresh", &wasm)).await;
    let (p, f) = {
        let (pooled, fresh) = (pooled.clone(), fresh.clone());
        tokio::task::spawn_blocking(move || {
            (
                time_blocking(&pooled, 200_000),
                time_blocking(&fresh, 50_000),
            )
        })
        .await
        .unwrap()
    };
    report("call_blocking, pooled instance", p);
    report("call_blocking, fresh instance", f);
    let dyn_pooled: Arc<dyn Instance> = pooled.clone();
    let mut samples = Vec::new();
    for i in 0..21_000 {
        let t = Instant::now();
        dyn_pooled.call(invocation()).await.unwrap();
        if i >= 1_000 {
            samples.push(t.elapsed());
        }
    }
    report("Instance::call (async), pooled", samples);
    drop((pooled, fresh, dyn_pooled, pooled_rt, fresh_rt));

    // Start-up of 1,000 copies with a warm cache.
    for distinct in [false, true] {
        let dir = root.path().join(if distinct {
            "many-distinct"
        } else {
            "many-same"
        });
        let cache = dir.join("cache");
        let specs: Vec<InstanceSpec> = (0..1_000)
            .map(|i| {
                let bytes = if distinct {
                    distinct_copy(&wasm, i)
                } else {
                    wasm.clone()
                };
                spec(&dir, &format!("p{i:04}"), &bytes)
            })
            .collect();
        {
            // Warm the cache.
            let warm = WasmRuntime::new(WasmConfig::new(&cache)).unwrap();
            let t = Instant::now();
            let mut held = Vec::new();
            for s in &specs {
                held.push(start(&warm, s.clone()).await);
                if !distinct {
                    break;
                }
            }
            println!(
                "  warming the cache ({}): {:.2?}",
                if distinct {
                    "1,000 compiles"
                } else {
                    "1 compile"
                },
                t.elapsed()
            );
        }
        let t = Instant::now();
        let runtime = WasmRuntime::new(WasmConfig::new(&cache)).unwrap();
        let mut instances = Vec::with_capacity(specs.len());
        for s in specs {
            instances.push(start(&runtime, s).await);
        }
        let took = t.elapsed();
        let stats = runtime.cache_stats();
        println!(
            "start 1,000 plugins, warm cache, {:<22} {took:>9.2?}  (compiled {}, loaded {}, shared {})",
            if distinct {
                "distinct components:"
            } else {
                "identical components:"
            },
            stats.compiled,
            stats.loaded,
            stats.shared
        );
    }
}

/// `wasm` with a custom section that makes its digest, and so its cache entry, distinct.
fn distinct_copy(wasm: &[u8], i: usize) -> Vec<u8> {
    let mut bytes = wasm.to_vec();
    let name = format!("copy{i:04}");
    bytes.push(0);
    bytes.push((name.len() + 1) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

/// Starts on a cold cache: `n` distinct copies of a component, one after another and then all
/// at once, each time in a fresh runtime with an empty cache.
async fn cold_starts() {
    let root = tempfile::tempdir().unwrap();
    let js = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/plugins/hello-js-wasm/plugin.wasm");
    let mut cases = vec![("WAT test guest", TestGuest::new("0.1.0").component(), 64)];
    match std::fs::read(&js) {
        Ok(bytes) => cases.push(("hello-js-wasm (12 MB)", bytes, 4)),
        Err(_) => println!(
            "(no `hello-js-wasm/plugin.wasm`; run `examples/plugins/build.sh` to include it)"
        ),
    }
    for (label, wasm, n) in cases {
        let mut took = Vec::new();
        for concurrent in [false, true] {
            let dir = root
                .path()
                .join(format!("{label}-{concurrent}").replace(' ', "_"));
            let specs: Vec<InstanceSpec> = (0..n)
                .map(|i| spec(&dir, &format!("p{i:04}"), &distinct_copy(&wasm, i)))
                .collect();
            let runtime = WasmRuntime::new(WasmConfig::new(dir.join("cache"))).unwrap();
            let t = Instant::now();
            let instances = if concurrent {
                futures::future::join_all(specs.into_iter().map(|s| start(&runtime, s))).await
            } else {
                let mut held = Vec::new();
                for s in specs {
                    held.push(start(&runtime, s).await);
                }
                held
            };
            took.push(t.elapsed());
            assert_eq!(runtime.cache_stats().compiled, n as u64);
            drop(instances);
        }
        println!(
            "cold cache, {n} distinct {label:<22} one by one {:>9.2?}, all at once {:>9.2?} ({:.2}x, {} cores)",
            took[0],
            took[1],
            took[0].as_secs_f64() / took[1].as_secs_f64(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
}
