//! The plan queries (`dependants`, `dependencies`, `wave_of`, `stop_order`) and runtime
//! failures (`fail`).

use expect_test::{Expect, expect};
use plugd_resolve::{Resolution, resolve};

use crate::input::parse;

/// Resolves `input`, then fails each plugin of `fail` in turn (as the host does when a
/// plugin fails to start) and shows what each call took out, the queries on every plugin
/// (planned ones in wave order, then failed ones), and the final plan.
fn check(input: &str, fail: &[&str], expect: Expect) {
    let mut resolution = resolve(parse(input));
    let mut out = String::new();
    for name in fail {
        let removed = resolution.fail(name, "Process exited with status 1");
        out += &format!("fail {name}: took out {}\n", names(&removed));
    }
    out += &queries(&resolution);
    out += &resolution.to_string();
    expect.assert_eq(&out);
}

fn queries(resolution: &Resolution) -> String {
    let mut out = String::new();
    let planned = resolution.waves().iter().flatten();
    for name in planned.chain(resolution.failed().keys()) {
        let name = name.as_str();
        out += &format!(
            "{name}: wave {:?}, dependencies {}, dependants {}\n",
            resolution.wave_of(name),
            names(&resolution.dependencies(name)),
            names(&resolution.dependants(name)),
        );
    }
    let stop: Vec<String> = resolution.stop_order().iter().map(|w| names(w)).collect();
    out += &format!("stop order: {}\n", stop.join(" "));
    out
}

fn names(names: &[plugd_manifest::PluginName]) -> String {
    let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    format!("[{}]", names.join(", "))
}

const DIAMOND: &str = "
    top 1.0.0 -> left ^1, right ^1
    left 1.0.0 -> base ^1
    right 1.0.0 -> base ^1
    base 1.0.0
    solo 1.0.0
    on-solo 1.0.0 -> solo ^1
";

#[test]
fn queries_on_a_diamond() {
    check(
        DIAMOND,
        &[],
        expect![[r#"
            base: wave Some(0), dependencies [], dependants [top, left, right]
            solo: wave Some(0), dependencies [], dependants [on-solo]
            left: wave Some(1), dependencies [base], dependants [top]
            on-solo: wave Some(1), dependencies [solo], dependants []
            right: wave Some(1), dependencies [base], dependants [top]
            top: wave Some(2), dependencies [left, right], dependants []
            stop order: [top] [left, on-solo, right] [base, solo]
            wave 0: base 1.0.0, solo 1.0.0
            wave 1: left 1.0.0, on-solo 1.0.0, right 1.0.0
            wave 2: top 1.0.0
        "#]],
    );
}

#[test]
fn fail_takes_out_dependants_in_stop_order() {
    check(
        DIAMOND,
        &["base"],
        expect![[r#"
            fail base: took out [top, left, right, base]
            solo: wave Some(0), dependencies [], dependants [on-solo]
            on-solo: wave Some(1), dependencies [solo], dependants []
            base: wave None, dependencies [], dependants []
            left: wave None, dependencies [], dependants []
            right: wave None, dependencies [], dependants []
            top: wave None, dependencies [], dependants []
            stop order: [on-solo] [solo]
            wave 0: solo 1.0.0
            wave 1: on-solo 1.0.0
            failed:
              base: Plugin `base 1.0.0` failed: Process exited with status 1
              left: Plugin `left 1.0.0` cannot load because its dependency `base` cannot load: Plugin `base 1.0.0` failed: Process exited with status 1
              right: Plugin `right 1.0.0` cannot load because its dependency `base` cannot load: Plugin `base 1.0.0` failed: Process exited with status 1
              top: Plugin `top 1.0.0` cannot load because its dependency `left` cannot load (`top` → `left` → `base`): Plugin `base 1.0.0` failed: Process exited with status 1
        "#]],
    );
}

#[test]
fn fail_a_leaf_takes_out_only_it() {
    check(
        DIAMOND,
        &["top", "on-solo"],
        expect![[r#"
        fail top: took out [top]
        fail on-solo: took out [on-solo]
        base: wave Some(0), dependencies [], dependants [left, right]
        solo: wave Some(0), dependencies [], dependants []
        left: wave Some(1), dependencies [base], dependants []
        right: wave Some(1), dependencies [base], dependants []
        on-solo: wave None, dependencies [], dependants []
        top: wave None, dependencies [], dependants []
        stop order: [left, right] [base, solo]
        wave 0: base 1.0.0, solo 1.0.0
        wave 1: left 1.0.0, right 1.0.0
        failed:
          on-solo: Plugin `on-solo 1.0.0` failed: Process exited with status 1
          top: Plugin `top 1.0.0` failed: Process exited with status 1
    "#]],
    );
}

#[test]
fn fail_in_the_middle_keeps_the_rest() {
    check(
        DIAMOND,
        &["left"],
        expect![[r#"
        fail left: took out [top, left]
        base: wave Some(0), dependencies [], dependants [right]
        solo: wave Some(0), dependencies [], dependants [on-solo]
        on-solo: wave Some(1), dependencies [solo], dependants []
        right: wave Some(1), dependencies [base], dependants []
        left: wave None, dependencies [], dependants []
        top: wave None, dependencies [], dependants []
        stop order: [on-solo, right] [base, solo]
        wave 0: base 1.0.0, solo 1.0.0
        wave 1: on-solo 1.0.0, right 1.0.0
        failed:
          left: Plugin `left 1.0.0` failed: Process exited with status 1
          top: Plugin `top 1.0.0` cannot load because its dependency `left` cannot load: Plugin `left 1.0.0` failed: Process exited with status 1
    "#]],
    );
}

#[test]
fn fail_twice_or_unknown_takes_out_nothing() {
    check(
        DIAMOND,
        &["solo", "solo", "on-solo", "nobody"],
        expect![[r#"
        fail solo: took out [on-solo, solo]
        fail solo: took out []
        fail on-solo: took out []
        fail nobody: took out []
        base: wave Some(0), dependencies [], dependants [top, left, right]
        left: wave Some(1), dependencies [base], dependants [top]
        right: wave Some(1), dependencies [base], dependants [top]
        top: wave Some(2), dependencies [left, right], dependants []
        on-solo: wave None, dependencies [], dependants []
        solo: wave None, dependencies [], dependants []
        stop order: [top] [left, right] [base]
        wave 0: base 1.0.0
        wave 1: left 1.0.0, right 1.0.0
        wave 2: top 1.0.0
        failed:
          on-solo: Plugin `on-solo 1.0.0` cannot load because its dependency `solo` cannot load: Plugin `solo 1.0.0` failed: Process exited with status 1
          solo: Plugin `solo 1.0.0` failed: Process exited with status 1
    "#]],
    );
}

#[test]
fn plugins_failed_at_resolution_cannot_fail_again() {
    check(
        "
        a 1.0.0 -> gone ^1
        b 1.0.0 -> a ^1
        c 1.0.0
        ",
        &["a", "b"],
        expect![[r#"
            fail a: took out []
            fail b: took out []
            c: wave Some(0), dependencies [], dependants []
            a: wave None, dependencies [], dependants []
            b: wave None, dependencies [], dependants []
            stop order: [c]
            wave 0: c 1.0.0
            failed:
              a: Plugin `a 1.0.0` needs `gone ^1`, but no plugin `gone` is installed; hint: add it to the plugins directory or remove the dependency
              b: Plugin `b 1.0.0` cannot load because its dependency `a` cannot load: Plugin `a 1.0.0` needs `gone ^1`, but no plugin `gone` is installed; hint: add it to the plugins directory or remove the dependency
        "#]],
    );
}
