//! Peer benchmark: an echo plugin equivalent to plugd's test guest, called through Extism 1.x.
//!
//! The plugin is a WAT core module using Extism's kernel ABI (`extism:host/env`): it reads the
//! input 8 bytes at a time, writes `{"value":<input>}` to a kernel allocation and sets it as the
//! output, the same work plugd's guest does through the component model.
//!
//! Run: `cargo run --release` in `bench/extism` (numbers in `bench/wasm/README.md`).

use std::time::{Duration, Instant};

use extism::{Manifest, Plugin, Wasm};

/// The same 100-byte JSON payload as `crates/plugd-wasm/examples/bench.rs`.
const PAYLOAD: &str = r#"{"id":12345,"name":"benchmark","tags":["a","b","c"],"nested":{"x":1.5,"y":-2},"ok":true,"pad":"xx"}"#;

const ECHO_WAT: &str = r#"(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\22value\22:")
  (func (export "echo") (result i32)
    (local $len i64) (local $out i64) (local $i i64)
    (local.set $len (call $input_length))
    (local.set $out (call $alloc (i64.add (local.get $len) (i64.const 10))))
    ;; the 9-byte prefix
    (block $done (loop $next
      (br_if $done (i64.ge_u (local.get $i) (i64.const 9)))
      (call $store_u8 (i64.add (local.get $out) (local.get $i))
                      (i32.load8_u (i32.wrap_i64 (local.get $i))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $next)))
    ;; the input, 8 bytes at a time, then the tail byte by byte
    (local.set $i (i64.const 0))
    (block $done (loop $next
      (br_if $done (i64.gt_u (i64.add (local.get $i) (i64.const 8)) (local.get $len)))
      (call $store_u64 (i64.add (local.get $out) (i64.add (local.get $i) (i64.const 9)))
                       (call $input_load_u64 (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 8)))
      (br $next)))
    (block $done (loop $next
      (br_if $done (i64.ge_u (local.get $i) (local.get $len)))
      (call $store_u8 (i64.add (local.get $out) (i64.add (local.get $i) (i64.const 9)))
                      (call $input_load_u8 (local.get $i)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $next)))
    (call $store_u8 (i64.add (local.get $out) (i64.add (local.get $len) (i64.const 9))) (i32.const 125))
    (call $output_set (local.get $out) (i64.add (local.get $len) (i64.const 10)))
    (i32.const 0))
)"#;

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

fn main() {
    let wasm = wat::parse_str(ECHO_WAT).expect("the echo plugin parses");
    let manifest = Manifest::new([Wasm::data(wasm.clone())]);
    let mut plugin = Plugin::new(&manifest, [], false).expect("the plugin loads");
    let expected = format!(r#"{{"value":{PAYLOAD}}}"#);
    for _ in 0..1_000 {
        let out: String = plugin.call("echo", PAYLOAD).unwrap();
        assert_eq!(out, expected);
    }
    let samples = (0..200_000)
        .map(|_| {
            let t = Instant::now();
            let out: &str = plugin.call("echo", PAYLOAD).unwrap();
            let d = t.elapsed();
            assert_eq!(out.len(), PAYLOAD.len() + 10);
            d
        })
        .collect();
    report("extism Plugin::call, same plugin", samples);

    // A new plugin per call: extism's equivalent of a fresh instance (it compiles per `new`
    // unless a compiled plugin is reused, so use `CompiledPlugin` when available).
    let compiled =
        extism::CompiledPlugin::new(extism::PluginBuilder::new(&manifest)).expect("compiles");
    let samples = (0..5_000)
        .map(|_| {
            let t = Instant::now();
            let mut fresh = Plugin::new_from_compiled(&compiled).unwrap();
            let out: &str = fresh.call("echo", PAYLOAD).unwrap();
            let d = t.elapsed();
            assert_eq!(out.len(), PAYLOAD.len() + 10);
            d
        })
        .collect();
    report("extism new plugin per call", samples);
}
