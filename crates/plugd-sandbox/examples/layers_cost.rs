//! Measures the cost of the sandbox layers on `python3 -c pass`: prepare time and run time.
//!
//! `cargo run --release -p plugd-sandbox --example layers_cost [runs]` (as root for every layer).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plugd_sandbox::{Layer, Sandbox, SandboxPolicy, probe};

const PYTHON: &str = "/usr/bin/python3";

fn main() {
    let runs: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    println!("{}\n", probe());
    let dir = std::env::temp_dir().join(format!("plugd-layers-cost-{}", std::process::id()));
    let (package, data) = (dir.join("package"), dir.join("data"));
    std::fs::create_dir_all(&package).unwrap();
    std::fs::create_dir_all(&data).unwrap();

    let mut base = SandboxPolicy::new("layers-cost", &package, &data);
    base.read_paths = ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache"]
        .into_iter()
        .map(PathBuf::from)
        .collect();

    let mut configs: Vec<(String, Option<Vec<Layer>>)> = vec![
        ("no sandbox".into(), None),
        ("all layers disabled".into(), Some(Layer::ALL.to_vec())),
    ];
    for layer in Layer::ALL {
        let others = Layer::ALL.iter().copied().filter(|l| *l != layer).collect();
        configs.push((format!("only {layer}"), Some(others)));
    }
    // The namespaces together cost more than each alone (the fresh `/proc` of the PID
    // namespace is torn down with the mount namespace): show the pairs.
    for layer in [Layer::PidNamespace, Layer::MountNamespace] {
        configs.push((format!("all but {layer}"), Some(vec![layer])));
    }
    configs.push(("all layers".into(), Some(Vec::new())));

    // Round-robin over the configurations so that load from elsewhere spreads evenly; report
    // medians of wall time and the mean CPU time of the child (less sensitive to load).
    let mut samples: Vec<Vec<(Duration, Duration, Duration)>> = vec![Vec::new(); configs.len()];
    let mut drops: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
    for round in 0..=runs {
        for (i, (label, disabled)) in configs.iter().enumerate() {
            let sample = once(&base, disabled.as_deref(), &data, label);
            if round > 0 {
                drops[i].push(DROP.with(std::cell::Cell::get));
                samples[i].push(sample); // round 0 warms caches and the shared netns
            }
        }
    }
    let bare = median(&samples[0], |s| s.1);
    for (((label, _), s), d) in configs.iter().zip(&samples).zip(&mut drops) {
        d.sort_unstable();
        let run = median(s, |s| s.1);
        let cpu = s.iter().map(|s| s.2).sum::<Duration>() / runs;
        println!(
            "{label:<22} prepare {:>9.2?}  spawn+wait {run:>9.2?} ({:>+7.2}ms)  drop {:>9.2?}  child cpu {cpu:>9.2?}",
            median(s, |s| s.0),
            (run.as_secs_f64() - bare.as_secs_f64()) * 1e3,
            d[d.len() / 2],
        );
    }
    // The first cgroup move after an idle period pays an RCU grace period (rcu_sync) that back
    // to back runs do not: measure it separately, after a few idle seconds each time.
    let idle = Duration::from_secs(3);
    let mut first: Vec<(Duration, Duration, Duration)> = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(idle);
        first.push(once(&base, Some(&[]), &data, "after idle"));
    }
    let run = median(&first, |s| s.1);
    println!(
        "{:<22} prepare {:>9.2?}  spawn+wait {run:>9.2?} ({:>+7.2}ms)  (median of 5, each after {idle:?} idle)",
        "all, first after idle",
        median(&first, |s| s.0),
        (run.as_secs_f64() - bare.as_secs_f64()) * 1e3,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

thread_local! {
    static DROP: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// One run: `(prepare, spawn + wait + drop, child CPU time)`.
fn once(
    base: &SandboxPolicy,
    disabled: Option<&[Layer]>,
    data: &std::path::Path,
    label: &str,
) -> (Duration, Duration, Duration) {
    let cpu_before = children_cpu();
    let start = Instant::now();
    let prepared = disabled.map(|disabled| {
        let mut policy = base.clone();
        policy.disabled = disabled.to_vec();
        Sandbox::prepare(&policy).unwrap()
    });
    let prepare = start.elapsed();
    let start = Instant::now();
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", "pass"])
        .stdin(Stdio::null())
        .current_dir(data);
    if let Some(prepared) = &prepared {
        prepared.apply_to(&mut cmd);
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "{label}: {status}");
    let run = start.elapsed();
    let start = Instant::now();
    drop(prepared);
    DROP.with(|d| d.set(start.elapsed()));
    (prepare, run, children_cpu() - cpu_before)
}

fn children_cpu() -> Duration {
    // SAFETY: `usage` is a valid out-pointer.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn median(
    samples: &[(Duration, Duration, Duration)],
    key: impl Fn(&(Duration, Duration, Duration)) -> Duration,
) -> Duration {
    let mut values: Vec<Duration> = samples.iter().map(key).collect();
    values.sort_unstable();
    values[values.len() / 2]
}
