//! Records of the cgroups a host created, so that its next incarnation can reap what a killed
//! one left behind, and only that (many hosts share one cgroup parent).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cgroup;

/// What [`reap_leftovers`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Cgroup directories removed.
    pub cgroups_removed: usize,
    /// SIGKILLs sent to tasks left in them (0 on cgroup v2, where `cgroup.kill` does it).
    pub processes_killed: usize,
    /// Records kept because the host that wrote them is still running.
    pub live_records: usize,
}

/// `pid starttime` of this process: a pid alone may have been reused by another process.
fn identity(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start = rest.split(' ').nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Writes `dir/<leaf>.cgroup` naming this host and the cgroup directories.
pub(crate) fn record(dir: &Path, leaf: &str, paths: &[PathBuf]) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    // This process's identity does not change: read once, not at every child's spawn.
    static ME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let me = ME
        .get_or_init(|| identity(std::process::id()))
        .as_deref()
        .ok_or_else(|| io::Error::other("no /proc/self/stat"))?;
    let mut text = format!("host {me}\n");
    for path in paths {
        text.push_str(&path.to_string_lossy());
        text.push('\n');
    }
    let file = dir.join(format!("{leaf}.cgroup"));
    fs::write(&file, text)?;
    Ok(file)
}

/// Only our own per-child cgroups may be touched, whatever a record says.
fn is_plugd_cgroup(path: &Path) -> bool {
    path.starts_with("/sys/fs/cgroup")
        && path.parent().and_then(Path::file_name) == Some("plugd".as_ref())
        && !path.as_os_str().to_string_lossy().contains("/../")
}

/// Kills the processes of, and removes, every cgroup recorded in `record_dir` (the policy's
/// [`crate::SandboxPolicy::record_dir`]) by a host that is no longer running — a previous
/// incarnation that was killed before it could clean up. Records of running hosts (this one
/// included) are left alone, so it is safe to call at any time; cgroups recorded by other
/// state dirs are never touched. A missing `record_dir` is an empty one.
pub fn reap_leftovers(record_dir: &Path) -> io::Result<ReapReport> {
    let mut report = ReapReport::default();
    let entries = match fs::read_dir(record_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let file = entry?.path();
        if file.extension() != Some("cgroup".as_ref()) {
            continue;
        }
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let mut lines = text.lines();
        let host = lines
            .next()
            .and_then(|l| l.strip_prefix("host "))
            .unwrap_or("");
        let pid = host.split(' ').next().and_then(|p| p.parse().ok());
        if pid.and_then(identity).is_some_and(|id| id == host) {
            report.live_records += 1;
            continue;
        }
        let dirs: Vec<PathBuf> = lines
            .map(PathBuf::from)
            .filter(|p| is_plugd_cgroup(p) && p.is_dir())
            .collect();
        report.processes_killed += cgroup::kill_all(&dirs);
        report.cgroups_removed += cgroup::remove_dirs(&dirs);
        if dirs.iter().all(|d| !d.exists()) {
            fs::remove_file(&file)?;
        }
    }
    Ok(report)
}
