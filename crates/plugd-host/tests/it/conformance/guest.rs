//! The conformance suite's wasm plugin: a core module in WAT, wrapped offline as a
//! `plugd:plugin@0.1.0` component. Its twin is `conformance/plugin.py`: both implement
//! [`super::ACTIONS`] with the same semantics.

use std::fmt::Write;

/// The plugin as component bytes.
pub fn component() -> Vec<u8> {
    let mut module = wat::parse_str(core_wat()).expect("the guest's WAT parses");
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("plugd.wit", include_str!("../../../../../wit/plugd.wit"))
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

/// Static strings laid out from address 0; the return areas are at 1024 and 1088, the heap
/// starts at 4096 and is reset after every export returns.
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
                b'"' | b'\\' | 0x80.. => format!("\\{b:02x}"),
                _ => (b as char).to_string(),
            })
            .collect();
        writeln!(self.segments, "  (data (i32.const {at}) \"{escaped}\")").unwrap();
        self.next = (at + text.len() as u32 + 7) & !7;
        assert!(self.next < 1024, "static data overlaps the return area");
        (at, text.len() as u32)
    }
}

fn core_wat() -> String {
    let mut d = Data {
        next: 0,
        segments: String::new(),
    };
    let actions: Vec<String> = super::ACTIONS
        .iter()
        .map(|(name, description)| {
            serde_json::json!({"name": name, "description": description}).to_string()
        })
        .collect();
    let describe = d.lit(&format!(r#"{{"actions":[{}]}}"#, actions.join(",")));
    let value_prefix = d.lit(r#"{"value":""#);
    let [echo, fail, reject, crash, spin, grow, log, ask] = [
        "echo", "fail", "reject", "crash", "spin", "grow", "log", "ask",
    ]
    .map(|a| d.lit(a));
    let boom = d.lit(super::FAIL_CODE);
    let boom_msg = d.lit(super::FAIL_MESSAGE);
    let bad = d.lit("bad_payload");
    let bad_msg = d.lit("the payload is never good enough");
    let unknown = d.lit("unknown_action");
    let unknown_msg = d.lit("no such action");
    let hello = d.lit(super::LOG_LINE);
    let kv_get = d.lit("kv.get");
    let is = |(at, len): (u32, u32)| {
        format!("(call $eq (local.get $a) (local.get $al) (i32.const {at}) (i32.const {len}))")
    };
    let lit = |(at, len): (u32, u32)| format!("(i32.const {at}) (i32.const {len})");
    let host = "plugd:plugin/host@0.1.0";
    let guest = "plugd:plugin/guest@0.1.0";
    let segments = d.segments;
    let (describe_at, describe_len) = describe;
    let prefix_at = value_prefix.0;
    let (is_echo, is_fail, is_reject, is_crash) = (is(echo), is(fail), is(reject), is(crash));
    let (is_spin, is_grow, is_log, is_ask) = (is(spin), is(grow), is(log), is(ask));
    let (boom, boom_msg, bad, bad_msg) = (lit(boom), lit(boom_msg), lit(bad), lit(bad_msg));
    let (unknown, unknown_msg, hello, kv_get) =
        (lit(unknown), lit(unknown_msg), lit(hello), lit(kv_get));
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
  ;; `{{"value":<json>}}` around the JSON text at $p.
  (func $wrap (param $p i32) (param $l i32) (result i32)
    (local $out i32)
    (local.set $out (call $alloc (i32.add (local.get $l) (i32.const 10))))
    (memory.copy (local.get $out) (i32.const {prefix_at}) (i32.const 9))
    (memory.copy (i32.add (local.get $out) (i32.const 9)) (local.get $p) (local.get $l))
    (i32.store8 (i32.add (local.get $out) (i32.add (local.get $l) (i32.const 9))) (i32.const 125))
    (call $ok (local.get $out) (i32.add (local.get $l) (i32.const 10))))
  ;; `{{"value":"<text>"}}` around the text at $p, escaping `"` and `\` (enough for the host's
  ;; messages, which hold no control characters).
  (func $wrap_str (param $p i32) (param $l i32) (result i32)
    (local $out i32) (local $i i32) (local $o i32) (local $b i32)
    (local.set $out (call $alloc (i32.add (i32.mul (local.get $l) (i32.const 2)) (i32.const 12))))
    (memory.copy (local.get $out) (i32.const {prefix_at}) (i32.const 10))
    (local.set $o (i32.add (local.get $out) (i32.const 10)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $l)))
        (local.set $b (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (if (i32.or (i32.eq (local.get $b) (i32.const 34)) (i32.eq (local.get $b) (i32.const 92)))
          (then
            (i32.store8 (local.get $o) (i32.const 92))
            (local.set $o (i32.add (local.get $o) (i32.const 1)))))
        (i32.store8 (local.get $o) (local.get $b))
        (local.set $o (i32.add (local.get $o) (i32.const 1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store8 (local.get $o) (i32.const 34))
    (i32.store8 (i32.add (local.get $o) (i32.const 1)) (i32.const 125))
    (call $ok (local.get $out) (i32.sub (i32.add (local.get $o) (i32.const 2)) (local.get $out))))
  (func (export "{guest}#describe") (result i32)
    (i32.store (i32.const 1024) (i32.const {describe_at}))
    (i32.store (i32.const 1028) (i32.const {describe_len}))
    (i32.const 1024))
  (func (export "cabi_post_{guest}#describe") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "{guest}#call") (param $a i32) (param $al i32) (param $p i32) (param $pl i32) (result i32)
    (if {is_echo} (then (return (call $wrap (local.get $p) (local.get $pl)))))
    (if {is_fail} (then (return (call $err {boom} {boom_msg}))))
    (if {is_reject} (then (return (call $err {bad} {bad_msg}))))
    (if {is_crash} (then unreachable))
    (if {is_spin} (then (loop $forever (br $forever)) unreachable))
    (if {is_grow} (then
      (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      unreachable))
    (if {is_log} (then
      (call $log (i32.const 1) {hello})
      (return (call $wrap (local.get $p) (local.get $pl)))))
    (if {is_ask} (then
      (call $request {kv_get} (local.get $p) (local.get $pl) (i32.const 1088))
      (if (i32.eqz (i32.load8_u (i32.const 1088)))
        (then (return (call $wrap (i32.load (i32.const 1092)) (i32.load (i32.const 1096))))))
      (return (call $wrap_str (i32.load (i32.const 1100)) (i32.load (i32.const 1104))))))
    (call $err {unknown} {unknown_msg}))
  (func (export "cabi_post_{guest}#call") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "{guest}#on-event") (param i32 i32 i32 i32)
    (call $log (i32.const 1) (local.get 0) (local.get 1))
    (global.set $heap (i32.const 4096)))
)
"#
    )
}
