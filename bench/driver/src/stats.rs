//! Latency samples into percentiles, and CPU time of this process and of a child.

use std::time::Duration;

/// What one benchmark case measured.
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    /// Stable name for the JSON line.
    pub key: &'static str,
    /// Human label for the table.
    pub name: &'static str,
    pub in_flight: usize,
    pub calls: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
    pub calls_per_sec: f64,
    /// CPU time of this process (the host side) per call.
    pub self_cpu_us: f64,
    /// CPU time of the child per call.
    pub child_cpu_us: f64,
}

impl Summary {
    /// Sorts `samples_ns` and summarises them; `wall` is the whole measured run.
    pub(crate) fn new(
        (key, name): (&'static str, &'static str),
        in_flight: usize,
        mut samples_ns: Vec<u64>,
        wall: Duration,
        cpu: CpuDelta,
    ) -> Summary {
        samples_ns.sort_unstable();
        let n = samples_ns.len().max(1);
        let at = |q: f64| {
            samples_ns
                .get(((n as f64 * q) as usize).min(n - 1))
                .copied()
                .unwrap_or(0) as f64
                / 1e3
        };
        let calls = samples_ns.len();
        Summary {
            key,
            name,
            in_flight,
            calls,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            mean_us: samples_ns.iter().sum::<u64>() as f64 / n as f64 / 1e3,
            max_us: samples_ns.last().copied().unwrap_or(0) as f64 / 1e3,
            calls_per_sec: calls as f64 / wall.as_secs_f64(),
            self_cpu_us: cpu.self_cpu.as_secs_f64() * 1e6 / n as f64,
            child_cpu_us: cpu.child_cpu.as_secs_f64() * 1e6 / n as f64,
        }
    }

    pub(crate) fn header() -> String {
        format!(
            "{:<34} {:>4} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
            "case",
            "infl",
            "calls",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "mean µs",
            "calls/s",
            "self cpu",
            "child cpu"
        )
    }

    pub(crate) fn row(&self) -> String {
        format!(
            "{:<34} {:>4} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.0} {:>9.1} {:>9.1}",
            self.name,
            self.in_flight,
            self.calls,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.mean_us,
            self.calls_per_sec,
            self.self_cpu_us,
            self.child_cpu_us
        )
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 10.0).round() / 10.0;
        serde_json::json!({
            "case": self.key,
            "in_flight": self.in_flight,
            "calls": self.calls,
            "p50_us": r(self.p50_us),
            "p90_us": r(self.p90_us),
            "p99_us": r(self.p99_us),
            "mean_us": r(self.mean_us),
            "max_us": r(self.max_us),
            "calls_per_sec": self.calls_per_sec.round(),
            "self_cpu_us_per_call": r(self.self_cpu_us),
            "child_cpu_us_per_call": r(self.child_cpu_us),
        })
    }
}

/// CPU time spent between two [`CpuClock`] readings.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuDelta {
    pub self_cpu: Duration,
    pub child_cpu: Duration,
}

/// Reads the CPU time (user + system) of this process and of one child.
pub(crate) struct CpuClock {
    child: Option<u32>,
    start: (Duration, Duration),
}

impl CpuClock {
    pub(crate) fn start(child: Option<u32>) -> CpuClock {
        CpuClock {
            child,
            start: (self_cpu(), child.map(proc_cpu).unwrap_or_default()),
        }
    }

    pub(crate) fn stop(&self) -> CpuDelta {
        CpuDelta {
            self_cpu: self_cpu().saturating_sub(self.start.0),
            child_cpu: self
                .child
                .map(proc_cpu)
                .unwrap_or_default()
                .saturating_sub(self.start.1),
        }
    }
}

fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and keeps no pointer to it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// User + system time of `pid` from `/proc/PID/stat` (clock-tick resolution, usually 10 ms).
fn proc_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}
