//! A tiny test guest written in WAT and wrapped as a `plugd:plugin` component, built offline.
//!
//! Actions: `echo` (returns `{"value": <payload>}`), `fail` (guest error `boom`), `reject`
//! (`bad_payload`), `trap` (`unreachable`), `spin` (endless loop), `grow` (grows memory until
//! refused, then traps), `log` (logs through the host, then echoes), `ask` (forwards the payload
//! to the host's `request("kv.get", ...)`); anything else answers `unknown_action`.
//! `on-event` logs the topic. Also used by `bench/wasm`.

#![allow(dead_code)]

use std::fmt::Write;

/// The WIT of this repository, with the package version replaced by `version`.
pub fn wit(version: &str) -> String {
    let wit = include_str!("../../../../wit/plugd.wit");
    wit.replace("plugd:plugin@0.1.0", &format!("plugd:plugin@{version}"))
}

/// The test guest as a component targeting `plugd:plugin@{version}`.
pub fn component(version: &str) -> Vec<u8> {
    let wat = core_wat(version);
    let mut module = wat::parse_str(&wat).expect("the test guest's WAT parses");
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("plugd.wit", &wit(version))
        .expect("the WIT parses");
    let world = resolve
        .select_world(&[package], Some("plugin"))
        .expect("the world exists");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("metadata embeds");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("the module is accepted")
        .validate(true)
        .encode()
        .expect("the component encodes")
}

/// Static strings laid out from address 0; the return area is at 1024, the heap at 4096.
struct Data {
    next: u32,
    segments: String,
}

impl Data {
    fn lit(&mut self, text: &str) -> (u32, u32) {
        let at = self.next;
        let escaped: String = text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' => format!("\\{:02x}", b),
                _ => (b as char).to_string(),
            })
            .collect();
        writeln!(self.segments, "  (data (i32.const {at}) \"{escaped}\")").unwrap();
        self.next = (at + text.len() as u32 + 7) & !7;
        assert!(self.next < 1024, "static data overlaps the return area");
        (at, text.len() as u32)
    }
}

fn core_wat(version: &str) -> String {
    let mut d = Data {
        next: 0,
        segments: String::new(),
    };
    let describe = d.lit(
        r#"{"actions":[{"name":"echo","description":"Returns the payload"},{"name":"fail","description":"Always fails"},{"name":"trap","description":"Traps"}]}"#,
    );
    let prefix = d.lit(r#"{"value":"#);
    let actions = [
        "echo", "fail", "reject", "trap", "spin", "grow", "log", "ask",
    ]
    .map(|a| d.lit(a));
    let boom = d.lit("boom");
    let boom_msg = d.lit("it failed on purpose");
    let bad = d.lit("bad_payload");
    let bad_msg = d.lit("the payload is never good enough");
    let unknown = d.lit("unknown_action");
    let unknown_msg = d.lit("no such action");
    let hello = d.lit("hello from wasm");
    let kv_get = d.lit("kv.get");
    let [echo, fail, reject, trap, spin, grow, log, ask] = actions;
    let is = |(at, len): (u32, u32)| {
        format!("(call $eq (local.get $a) (local.get $al) (i32.const {at}) (i32.const {len}))")
    };
    let host = format!("plugd:plugin/host@{version}");
    let guest = format!("plugd:plugin/guest@{version}");
    let segments = d.segments;
    format!(
        r#"(module
  (import "{host}" "log" (func $log (param i32 i32 i32)))
  (import "{host}" "request" (func $request (param i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
{segments}
  (func $eq (param $a i32) (param $al i32) (param $b i32) (param $bl i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $al) (local.get $bl)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $al)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))
  (func $alloc (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u
                (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                (i32.const 16)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $ptr))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (call $alloc (local.get 3)))
  (func $ok (param $ptr i32) (param $len i32) (result i32)
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1028) (local.get $ptr))
    (i32.store (i32.const 1032) (local.get $len))
    (i32.const 1024))
  (func $err (param $cp i32) (param $cl i32) (param $mp i32) (param $ml i32) (result i32)
    (i32.store8 (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (local.get $cp))
    (i32.store (i32.const 1032) (local.get $cl))
    (i32.store (i32.const 1036) (local.get $mp))
    (i32.store (i32.const 1040) (local.get $ml))
    (i32.const 1024))
  (func $wrap (param $p i32) (param $l i32) (result i32)
    (local $out i32)
    (local.set $out (call $alloc (i32.add (local.get $l) (i32.const 10))))
    (memory.copy (local.get $out) (i32.const {prefix_at}) (i32.const 9))
    (memory.copy (i32.add (local.get $out) (i32.const 9)) (local.get $p) (local.get $l))
    (i32.store8 (i32.add (local.get $out) (i32.add (local.get $l) (i32.const 9))) (i32.const 125))
    (call $ok (local.get $out) (i32.add (local.get $l) (i32.const 10))))
  (func (export "{guest}#describe") (result i32)
    (i32.store (i32.const 1024) (i32.const {describe_at}))
    (i32.store (i32.const 1028) (i32.const {describe_len}))
    (i32.const 1024))
  (func (export "cabi_post_{guest}#describe") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "{guest}#call") (param $a i32) (param $al i32) (param $p i32) (param $pl i32) (result i32)
    (if {is_echo} (then (return (call $wrap (local.get $p) (local.get $pl)))))
    (if {is_fail} (then (return (call $err (i32.const {boom_at}) (i32.const {boom_len}) (i32.const {boom_msg_at}) (i32.const {boom_msg_len})))))
    (if {is_reject} (then (return (call $err (i32.const {bad_at}) (i32.const {bad_len}) (i32.const {bad_msg_at}) (i32.const {bad_msg_len})))))
    (if {is_trap} (then unreachable))
    (if {is_spin} (then (loop $forever (br $forever)) unreachable))
    (if {is_grow} (then
      (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      unreachable))
    (if {is_log} (then
      (call $log (i32.const 1) (i32.const {hello_at}) (i32.const {hello_len}))
      (return (call $wrap (local.get $p) (local.get $pl)))))
    (if {is_ask} (then
      (call $request (i32.const {kv_at}) (i32.const {kv_len}) (local.get $p) (local.get $pl) (i32.const 1088))
      (if (i32.eqz (i32.load8_u (i32.const 1088)))
        (then (return (call $wrap (i32.load (i32.const 1092)) (i32.load (i32.const 1096))))))
      (return (call $err (i32.load (i32.const 1092)) (i32.load (i32.const 1096))
                         (i32.load (i32.const 1100)) (i32.load (i32.const 1104))))))
    (call $err (i32.const {unknown_at}) (i32.const {unknown_len}) (i32.const {unknown_msg_at}) (i32.const {unknown_msg_len})))
  (func (export "cabi_post_{guest}#call") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "{guest}#on-event") (param i32 i32 i32 i32)
    (call $log (i32.const 1) (local.get 0) (local.get 1))
    (global.set $heap (i32.const 4096)))
)
"#,
        prefix_at = prefix.0,
        describe_at = describe.0,
        describe_len = describe.1,
        is_echo = is(echo),
        is_fail = is(fail),
        is_reject = is(reject),
        is_trap = is(trap),
        is_spin = is(spin),
        is_grow = is(grow),
        is_log = is(log),
        is_ask = is(ask),
        boom_at = boom.0,
        boom_len = boom.1,
        boom_msg_at = boom_msg.0,
        boom_msg_len = boom_msg.1,
        bad_at = bad.0,
        bad_len = bad.1,
        bad_msg_at = bad_msg.0,
        bad_msg_len = bad_msg.1,
        hello_at = hello.0,
        hello_len = hello.1,
        kv_at = kv_get.0,
        kv_len = kv_get.1,
        unknown_at = unknown.0,
        unknown_len = unknown.1,
        unknown_msg_at = unknown_msg.0,
        unknown_msg_len = unknown_msg.1,
    )
}
