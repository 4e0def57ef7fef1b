//! Measures the cost of the sandbox layers on `python3 -c pass`: prepare time and run time.
//!
//! `cargo run --release -p plugd-sandbox --example layers_cost [runs]` (as root for every layer).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugd_sandbox::{Layer, Sandbox, SandboxPolicy, probe};

const PYTHON: &str = "/usr/bin/python3";

fn main() {
    let runs: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    println!("{}\n", probe());
    let dir = std::env::temp_dir().join(format!("plugd-layers-cost-{}", std::process::id()));
    let (package, data) = (dir.join("package"), dir.join("data"));
    std::fs::create_dir_all(&package).unwrap();
    std::fs::create_dir_all(&data).unwrap();

    let mut base = SandboxPolicy::new("layers-cost", &package, &data);
    base.read_paths = ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"].into_iter().map(PathBuf::from).collect();

    let bare = time(runs, || {
        let status = Command::new(PYTHON).args(["-c", "pass"]).stdin(Stdio::null()).status().unwrap();
        assert!(status.success());
        Duration::ZERO
    });
    println!("{:<28} run {:>8.2?}", "no sandbox", bare.1);

    let mut configs: Vec<(String, Vec<Layer>)> = vec![("all layers disabled".into(), Layer::ALL.to_vec())];
    for layer in Layer::ALL {
        let others = Layer::ALL.iter().copied().filter(|l| *l != layer).collect();
        configs.push((format!("only {layer}"), others));
    }
    configs.push(("all layers".into(), Vec::new()));

    for (label, disabled) in configs {
        let mut policy = base.clone();
        policy.disabled = disabled;
        let (prepare, run) = time(runs, || {
            let start = Instant::now();
            let prepared = Sandbox::prepare(&policy).unwrap();
            let prepare = start.elapsed();
            let mut cmd = Command::new(PYTHON);
            cmd.args(["-c", "pass"]).stdin(Stdio::null()).current_dir(&data);
            prepared.apply_to(&mut cmd);
            let status = cmd.status().unwrap();
            assert!(status.success(), "{label}: {status}");
            prepare
        });
        println!("{label:<28} run {run:>8.2?}  (+{:>8.2?})  prepare {prepare:>8.2?}", run.saturating_sub(bare.1));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Mean of the value `f` returns and mean wall time of a call (prepare and drop included in
/// the second only through `f`'s own timing).
fn time(runs: u32, mut f: impl FnMut() -> Duration) -> (Duration, Duration) {
    f(); // warm up: page cache, the shared network namespace
    let mut inner = Duration::ZERO;
    let start = Instant::now();
    for _ in 0..runs {
        inner += f();
    }
    let total = start.elapsed();
    (inner / runs, (total - inner) / runs)
}
