//! Golden load plans: `tests/ui/NAME.txt` (packages, see `input.rs`) is resolved and the
//! plan, as `Resolution` displays it, must equal `tests/ui/NAME.plan`. `UPDATE_EXPECT=1`
//! rewrites the plans.

use std::path::{Path, PathBuf};

use expect_test::{ExpectFile, expect_file};
use plugd_resolve::{Resolution, resolve};

use crate::input::parse;

/// Resolves `input` and compares the plan with `expect`. Also checks that the plan is the
/// same for the input in reverse and rotated order, and that it is consistent.
fn check(input: &str, expect: ExpectFile) {
    let candidates = parse(input);
    let resolution = resolve(candidates.clone());
    let plan = resolution.to_string();
    for shuffled in [reversed(&candidates), rotated(&candidates)] {
        assert_eq!(
            resolve(shuffled).to_string(),
            plan,
            "the plan depends on input order"
        );
    }
    assert_consistent(&resolution, &candidates);
    expect.assert_eq(&plan);
}

fn reversed<T: Clone>(items: &[T]) -> Vec<T> {
    items.iter().rev().cloned().collect()
}

fn rotated<T: Clone>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    let mid = items.len() / 2;
    items.rotate_left(mid);
    items
}

/// Every name is planned or failed, never both; every dependency of a planned plugin is
/// planned in an earlier wave, one of them in the wave just before.
fn assert_consistent(resolution: &Resolution, candidates: &[plugd_resolve::Candidate]) {
    for c in candidates {
        let planned = resolution.wave_of(c.name.as_str()).is_some();
        let failed = resolution.failed().contains_key(&c.name);
        assert!(
            planned != failed,
            "`{}` must be either planned or failed",
            c.name
        );
    }
    for (n, wave) in resolution.waves().iter().enumerate() {
        assert!(!wave.is_empty(), "wave {n} is empty");
        for name in wave {
            let deps = resolution.dependencies(name.as_str());
            let waves: Vec<usize> = deps
                .iter()
                .map(|d| resolution.wave_of(d.as_str()).expect("dependency planned"))
                .collect();
            assert!(
                waves.iter().all(|&w| w < n),
                "`{name}` loads before a dependency"
            );
            assert_eq!(
                waves.iter().max().map(|w| w + 1).unwrap_or(0),
                n,
                "`{name}` loads late"
            );
        }
    }
}

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

fn check_case(name: &str) {
    let dir = ui_dir();
    let input = std::fs::read_to_string(dir.join(format!("{name}.txt"))).expect("read case");
    check(&input, expect_file![dir.join(format!("{name}.plan"))]);
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                check_case(stringify!($name));
            }
        )*
    };
}

cases! {
    empty,
    single,
    chain,
    diamond,
    missing,
    conflict,
    conflict_too_new,
    conflict_two_requirers,
    cycle_of_two,
    cycle_of_three,
    cycles_sharing_a_plugin,
    self_dependency,
    duplicate,
    duplicate_three_times,
    propagation_two_levels,
    independent_unaffected,
    own_problem_first,
    prerelease,
}

/// Every file in `tests/ui` belongs to a listed case, so no golden file goes unchecked.
#[test]
fn every_case_is_listed() {
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(ui_dir()).expect("read tests/ui") {
        let path = entry.expect("read tests/ui").path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if !CASES.contains(&stem) {
            unlisted.push(path.display().to_string());
        }
    }
    assert_eq!(unlisted, Vec::<String>::new(), "add these to `cases!`");
}
