//! A test guest written in WAT and wrapped offline as a `plugd:plugin` component (0.1 or 0.2),
//! shared by this crate's tests, its bench, and the host's conformance suite. Behind the
//! `test-guest` feature.
//!
//! Actions (by name, whatever `describe` announces): `echo` (returns `{"value": <payload>}`),
//! `fail` (the configured guest error), `reject` (`bad_payload`), `trap` and `crash`
//! (`unreachable`), `spin` (endless loop), `grow` (grows memory until refused, then traps),
//! `log` (logs the configured line, then echoes), `ask` (forwards the payload to
//! `request("kv.get", ...)`: its answer as `{"value": <answer>}`, or its error message as
//! `{"value": "<message>"}`), `emit` (publishes the payload as `test.emitted`, then echoes; in
//! 0.2 a refusal is returned as `{"value": "<reason>"}`); 0.2 only: `client` (error `not_found`
//! with status 404), `forbidden` (error `denied` with status 403); `host.METHOD` (any method:
//! asks the host `METHOD` with the payload as params, answered like `ask`). Anything else answers
//! `unknown_action`. `on-event` logs the topic; then, for a topic ending in `.broken`, it traps
//! (the delivery fails, every time), and for one ending in `.flaky` it traps while it can advance
//! its counter (see below): the first two deliveries fail, the later ones succeed.
//!
//! A *counter* lives in the `kv` service (state must survive a trap, which discards the
//! instance): advancing it is a `kv.commit` compare-and-set from absent to 1, else from 1 to 2;
//! it cannot advance past 2, nor without `kv` granted. `on-event` uses the key `flaky.event`,
//! `run-task` the key `flaky.task`.
//!
//! With [`TestGuest::lifecycle`] (0.2) it also exports `lifecycle` (`on-start` logs `on-start`,
//! or fails with `not_ready` when [`TestGuest::on_start_fails`]; `on-stop` logs `on-stop`;
//! `on-params-changed` logs the params, and rejects `{"reject":true}` with `bad_params`, 400)
//! and `tasks`: `run-task` of `echo` returns `{"value": <payload>}`; `progress` reports progress
//! 0.5 with the message `halfway` (the `host.progress` import), then echoes; `flaky` fails with
//! the retryable code `retry` while it can advance its counter (its first two runs), then
//! echoes; `spin` loops forever (for cancel and timeout); any other task fails with
//! `unknown_task`.

use std::fmt::Write;

/// What the test guest announces and says. [`TestGuest::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct TestGuest {
    /// The `plugd:plugin` version it targets; `0.2.*` uses the 0.2 ABI, anything else 0.1's
    /// (other versions only make sense for refusal tests).
    pub version: String,
    /// `(name, description)` announced by `describe`.
    pub actions: Vec<(String, String)>,
    /// Code of the error `fail` returns.
    pub fail_code: String,
    /// Message of the error `fail` returns.
    pub fail_message: String,
    /// The line `log` logs.
    pub log_line: String,
    /// Whether it exports `lifecycle` and `tasks` (0.2 only).
    pub lifecycle: bool,
    /// Whether `on-start` fails.
    pub on_start_fails: bool,
}

impl TestGuest {
    /// The defaults for `version`: announces `echo`, `fail`, `trap`; `fail` is `boom` / "it
    /// failed on purpose"; `log` logs "hello from wasm"; no lifecycle.
    pub fn new(version: &str) -> TestGuest {
        TestGuest {
            version: version.to_owned(),
            actions: [
                ("echo", "Returns the payload"),
                ("fail", "Always fails"),
                ("trap", "Traps"),
            ]
            .map(|(n, d)| (n.to_owned(), d.to_owned()))
            .to_vec(),
            fail_code: "boom".to_owned(),
            fail_message: "it failed on purpose".to_owned(),
            log_line: "hello from wasm".to_owned(),
            lifecycle: false,
            on_start_fails: false,
        }
    }

    fn v02(&self) -> bool {
        self.version.starts_with("0.2.")
    }

    /// The WIT it is built against: this repository's, with the package version set.
    pub fn wit(&self) -> String {
        let (wit, from) = if self.v02() {
            (include_str!("../../../wit/plugd-0.2.wit"), "0.2.0")
        } else {
            (include_str!("../../../wit/plugd.wit"), "0.1.0")
        };
        wit.replace(
            &format!("plugd:plugin@{from}"),
            &format!("plugd:plugin@{}", self.version),
        )
    }

    /// The guest as component bytes.
    pub fn component(&self) -> Vec<u8> {
        let mut module = wat::parse_str(self.core_wat()).expect("the test guest's WAT parses");
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve
            .push_str("plugd.wit", &self.wit())
            .expect("the WIT parses");
        let world = if self.lifecycle {
            "plugin-full"
        } else {
            "plugin"
        };
        let world = resolve
            .select_world(&[package], Some(world))
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

    fn core_wat(&self) -> String {
        let v02 = self.v02();
        let mut d = Data {
            next: 2048,
            segments: String::new(),
        };
        let actions: Vec<String> = self
            .actions
            .iter()
            .map(|(name, description)| {
                serde_json::json!({"name": name, "description": description}).to_string()
            })
            .collect();
        let describe = d.lit(&format!(r#"{{"actions":[{}]}}"#, actions.join(",")));
        let prefix_at = d.lit(r#"{"value":""#).0;
        let names = [
            "echo",
            "fail",
            "reject",
            "trap",
            "crash",
            "spin",
            "grow",
            "log",
            "ask",
            "emit",
            "client",
            "forbidden",
        ];
        let [
            echo,
            fail,
            reject,
            trap,
            crash,
            spin,
            grow,
            log,
            ask,
            emit,
            client,
            forbidden,
        ] = names.map(|a| d.lit(a));
        let lit = |(at, len): (u32, u32)| format!("(i32.const {at}) (i32.const {len})");
        let boom = lit(d.lit(&self.fail_code));
        let boom_msg = lit(d.lit(&self.fail_message));
        let bad = lit(d.lit("bad_payload"));
        let bad_msg = lit(d.lit("the payload is never good enough"));
        let unknown = lit(d.lit("unknown_action"));
        let unknown_msg = lit(d.lit("no such action"));
        let hello = lit(d.lit(&self.log_line));
        let kv_get = lit(d.lit("kv.get"));
        let host_prefix = lit(d.lit("host."));
        let emitted = lit(d.lit("test.emitted"));
        let not_found = lit(d.lit("not_found"));
        let not_found_msg = lit(d.lit("no such thing"));
        let denied = lit(d.lit("denied"));
        let denied_msg = lit(d.lit("not yours"));
        let on_start = lit(d.lit("on-start"));
        let on_stop = lit(d.lit("on-stop"));
        let not_ready = lit(d.lit("not_ready"));
        let not_ready_msg = lit(d.lit("on-start refused"));
        let reject_params = d.lit(r#"{"reject":true}"#);
        let bad_params = lit(d.lit("bad_params"));
        let bad_params_msg = lit(d.lit("params rejected"));
        let unknown_task = lit(d.lit("unknown_task"));
        let unknown_task_msg = lit(d.lit("no such task"));
        let [progress, flaky] = ["progress", "flaky"].map(|t| d.lit(t));
        let halfway = lit(d.lit("halfway"));
        let retry = lit(d.lit("retry"));
        let retry_msg = lit(d.lit("not yet"));
        let kv_commit = lit(d.lit("kv.commit"));
        let flaky_suffix = lit(d.lit(".flaky"));
        let broken_suffix = lit(d.lit(".broken"));
        // The two compare-and-set steps of a counter (see the module docs).
        let mut steps = |key: &str| {
            let first = d.lit(&format!(
                r#"{{"puts":{{"{key}":1}},"expect":{{"{key}":null}}}}"#
            ));
            let second = d.lit(&format!(
                r#"{{"puts":{{"{key}":2}},"expect":{{"{key}":1}}}}"#
            ));
            format!("{} {}", lit(first), lit(second))
        };
        let event_counter = steps("flaky.event");
        let task_counter = steps("flaky.task");
        let is = |(at, len): (u32, u32)| {
            format!("(call $eq (local.get $a) (local.get $al) (i32.const {at}) (i32.const {len}))")
        };
        let version = &self.version;
        let host = format!("plugd:plugin/host@{version}");
        let guest = format!("plugd:plugin/guest@{version}");
        let lifecycle_if = format!("plugd:plugin/lifecycle@{version}");
        let tasks_if = format!("plugd:plugin/tasks@{version}");
        let none = "(i32.const -1)";
        let (emit_import, emit_body) = if v02 {
            (
                // `progress` (0.1 has it too) is only called by `run-task`, which is 0.2's.
                format!(
                    r#"(import "{host}" "emit" (func $emit (param i32 i32 i32 i32 i32)))
  (import "{host}" "progress" (func $progress (param i32 f64 i32 i32 i32)))"#
                ),
                format!(
                    "(call $emit {emitted} (local.get $p) (local.get $pl) (i32.const 1120))
      (if (i32.load8_u (i32.const 1120))
        (then (return (call $wrap_str (i32.load (i32.const 1124)) (i32.load (i32.const 1128))))))"
                ),
            )
        } else {
            (
                format!(r#"(import "{host}" "emit" (func $emit (param i32 i32 i32 i32)))"#),
                format!("(call $emit {emitted} (local.get $p) (local.get $pl))"),
            )
        };
        let status_actions = if v02 {
            format!(
                "(if {} (then (return (call $err {not_found} {not_found_msg} (i32.const 404)))))
    (if {} (then (return (call $err {denied} {denied_msg} (i32.const 403)))))",
                is(client),
                is(forbidden)
            )
        } else {
            String::new()
        };
        // The error record: 0.1 is `{code, message}`, 0.2 adds `status: option<u16>` at +20.
        let store_status = if v02 {
            "(if (i32.lt_s (local.get $status) (i32.const 0))
      (then (i32.store8 (i32.const 1044) (i32.const 0)))
      (else
        (i32.store8 (i32.const 1044) (i32.const 1))
        (i32.store16 (i32.const 1046) (local.get $status))))"
        } else {
            ""
        };
        let lifecycle_exports = if self.lifecycle {
            let on_start_body = if self.on_start_fails {
                format!("(return (call $err {not_ready} {not_ready_msg} {none}))")
            } else {
                "(i32.store8 (i32.const 1024) (i32.const 0)) (i32.const 1024)".to_owned()
            };
            format!(
                r#"  (func (export "{lifecycle_if}#on-start") (result i32)
    (call $log (i32.const 1) {on_start})
    {on_start_body})
  (func (export "cabi_post_{lifecycle_if}#on-start") (param i32)
    (global.set $heap (i32.const 16384)))
  (func (export "{lifecycle_if}#on-stop")
    (call $log (i32.const 1) {on_stop}))
  (func (export "{lifecycle_if}#on-params-changed") (param $a i32) (param $al i32) (result i32)
    (call $log (i32.const 1) (local.get $a) (local.get $al))
    (if {is_reject_params}
      (then (return (call $err {bad_params} {bad_params_msg} (i32.const 400)))))
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.const 1024))
  (func (export "cabi_post_{lifecycle_if}#on-params-changed") (param i32)
    (global.set $heap (i32.const 16384)))
  (func (export "{tasks_if}#run-task") (param $a i32) (param $al i32) (param $p i32) (param $pl i32) (result i32)
    (if {is_echo} (then (return (call $wrap (local.get $p) (local.get $pl)))))
    (if {is_progress} (then
      (call $progress (i32.const 1) (f64.const 0.5) (i32.const 1) {halfway})
      (return (call $wrap (local.get $p) (local.get $pl)))))
    (if {is_flaky} (then
      (if (call $advance {task_counter})
        (then (return (call $err {retry} {retry_msg} {none}))))
      (return (call $wrap (local.get $p) (local.get $pl)))))
    (if {is_spin} (then (loop $forever (br $forever)) unreachable))
    (call $err {unknown_task} {unknown_task_msg} {none}))
  (func (export "cabi_post_{tasks_if}#run-task") (param i32)
    (global.set $heap (i32.const 16384)))
"#,
                is_reject_params = is(reject_params),
                is_echo = is(echo),
                is_progress = is(progress),
                is_flaky = is(flaky),
                is_spin = is(spin),
            )
        } else {
            String::new()
        };
        let segments = d.segments;
        let (describe_at, describe_len) = describe;
        format!(
            r#"(module
  (import "{host}" "log" (func $log (param i32 i32 i32)))
  (import "{host}" "request" (func $request (param i32 i32 i32 i32 i32)))
  {emit_import}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 16384))
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
  ;; Whether the text at $a ends with the text at $b.
  (func $ends (param $a i32) (param $al i32) (param $b i32) (param $bl i32) (result i32)
    (if (i32.lt_u (local.get $al) (local.get $bl)) (then (return (i32.const 0))))
    (call $eq (i32.add (local.get $a) (i32.sub (local.get $al) (local.get $bl))) (local.get $bl)
      (local.get $b) (local.get $bl)))
  ;; Advances a counter (`kv.commit` params of its two steps at $s1 and $s2): 1 when a step
  ;; took, 0 when it is at its end or `kv` is refused.
  (func $advance (param $s1 i32) (param $l1 i32) (param $s2 i32) (param $l2 i32) (result i32)
    (call $request {kv_commit} (local.get $s1) (local.get $l1) (i32.const 1088))
    (if (i32.eqz (i32.load8_u (i32.const 1088))) (then (return (i32.const 1))))
    (call $request {kv_commit} (local.get $s2) (local.get $l2) (i32.const 1088))
    (i32.eqz (i32.load8_u (i32.const 1088))))
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
  ;; The error case of `result<_, error>`; `$status` < 0 is `none` (0.2 only).
  (func $err (param $cp i32) (param $cl i32) (param $mp i32) (param $ml i32) (param $status i32) (result i32)
    (i32.store8 (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (local.get $cp))
    (i32.store (i32.const 1032) (local.get $cl))
    (i32.store (i32.const 1036) (local.get $mp))
    (i32.store (i32.const 1040) (local.get $ml))
    {store_status}
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
    (global.set $heap (i32.const 16384)))
  (func (export "{guest}#call") (param $a i32) (param $al i32) (param $p i32) (param $pl i32) (result i32)
    (if {is_echo} (then (return (call $wrap (local.get $p) (local.get $pl)))))
    (if {is_fail} (then (return (call $err {boom} {boom_msg} {none}))))
    (if {is_reject} (then (return (call $err {bad} {bad_msg} {none}))))
    (if (i32.or {is_trap} {is_crash}) (then unreachable))
    (if {is_spin} (then (loop $forever (br $forever)) unreachable))
    (if {is_grow} (then
      (loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
      unreachable))
    (if {is_log} (then
      (call $log (i32.const 1) {hello})
      (return (call $wrap (local.get $p) (local.get $pl)))))
    ;; `host.METHOD`: asks the host `METHOD` with the payload as params; answers its result.
    (if (i32.and (i32.gt_u (local.get $al) (i32.const 5))
                 (call $eq (local.get $a) (i32.const 5) {host_prefix}))
      (then
        (call $request (i32.add (local.get $a) (i32.const 5)) (i32.sub (local.get $al) (i32.const 5))
          (local.get $p) (local.get $pl) (i32.const 1088))
        (if (i32.eqz (i32.load8_u (i32.const 1088)))
          (then (return (call $wrap (i32.load (i32.const 1092)) (i32.load (i32.const 1096))))))
        (return (call $wrap_str (i32.load (i32.const 1100)) (i32.load (i32.const 1104))))))
    (if {is_ask} (then
      (call $request {kv_get} (local.get $p) (local.get $pl) (i32.const 1088))
      (if (i32.eqz (i32.load8_u (i32.const 1088)))
        (then (return (call $wrap (i32.load (i32.const 1092)) (i32.load (i32.const 1096))))))
      (return (call $wrap_str (i32.load (i32.const 1100)) (i32.load (i32.const 1104))))))
    (if {is_emit} (then
      {emit_body}
      (return (call $wrap (local.get $p) (local.get $pl)))))
    {status_actions}
    (call $err {unknown} {unknown_msg} {none}))
  (func (export "cabi_post_{guest}#call") (param i32)
    (global.set $heap (i32.const 16384)))
  (func (export "{guest}#on-event") (param $t i32) (param $tl i32) (param i32 i32)
    (call $log (i32.const 1) (local.get $t) (local.get $tl))
    (if (call $ends (local.get $t) (local.get $tl) {broken_suffix}) (then unreachable))
    (if (call $ends (local.get $t) (local.get $tl) {flaky_suffix})
      (then (if (call $advance {event_counter}) (then unreachable))))
    (global.set $heap (i32.const 16384)))
{lifecycle_exports})
"#,
            is_echo = is(echo),
            is_fail = is(fail),
            is_reject = is(reject),
            is_trap = is(trap),
            is_crash = is(crash),
            is_spin = is(spin),
            is_grow = is(grow),
            is_log = is(log),
            is_ask = is(ask),
            is_emit = is(emit),
        )
    }
}

/// Static strings laid out from address 2048; the return areas are at 1024, 1088 and 1120, the
/// heap starts at 16384 and is reset after every export returns.
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
        assert!(self.next < 16384, "static data overlaps the heap");
        (at, text.len() as u32)
    }
}
