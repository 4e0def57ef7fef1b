//! Hot reload from disk: a watcher on the plugins directory that turns changes into lifecycle
//! operations. A package added is loaded, a package changed is reloaded (blue/green, see
//! [`Host::reload`]), a package removed is unloaded.
//!
//! Changes are debounced per package: the operation runs once no file of that package changed
//! for the debounce time (20 ms by default), so a `git checkout` of many files is one reload.
//! Editor temp files, `__pycache__`, `.git` and hidden entries of the plugins directory are
//! ignored. Operations run one at a time, in the order their packages settled; a package that
//! changes again while it reloads is reloaded again afterwards, so the last state on disk wins.
//!
//! inotify is used where it works; when it cannot watch (its watch limit is reached, or the
//! directory is on a filesystem without it) the watcher says so and polls instead.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use parking_lot::Mutex;
use plugd_manifest::Manifest;
use tokio::sync::Notify;

use crate::registry::PluginState;
use crate::supervision::Trigger;
use crate::{Host, HostError};

/// How the watcher runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WatchConfig {
    /// How long a package must stay unchanged before it is (re)loaded.
    pub debounce: Duration,
    /// Poll at this interval instead of using inotify (for filesystems without it).
    pub poll: Option<Duration>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            debounce: Duration::from_millis(20),
            poll: None,
        }
    }
}

/// How the watcher learns of changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// Kernel notifications (inotify).
    Notify,
    /// Polling, at this interval.
    Poll(Duration),
}

/// A running watcher; dropping it stops watching.
pub struct Watching {
    mode: WatchMode,
    _watcher: Box<dyn Send>,
    task: tokio::task::JoinHandle<()>,
}

impl Watching {
    /// How it watches.
    pub fn mode(&self) -> WatchMode {
        self.mode
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Packages that changed and when they last did; one entry per package directory, so it is
/// bounded by the plugins directory itself.
#[derive(Default)]
struct Pending {
    changed: Mutex<HashMap<OsString, Instant>>,
    wake: Notify,
}

impl Host {
    /// Watches the plugins directory and applies every change (see the module docs). Must be
    /// called inside a tokio runtime; stops when the returned value is dropped.
    pub fn watch(&self, config: WatchConfig) -> Result<Watching, HostError> {
        let root = self.inner.config.plugins_dir.clone();
        let pending = Arc::new(Pending::default());
        let (watcher, mode) = start_watcher(&root, &pending, config.poll)?;
        let host = self.clone();
        let task = tokio::spawn(apply_changes(host, root, pending, config.debounce));
        Ok(Watching {
            mode,
            _watcher: watcher,
            task,
        })
    }

    /// Applies what is on disk now for the package directory `entry` of the plugins directory:
    /// loads it, reloads it or unloads it. Errors are recorded on the plugin (its supervision
    /// record, its log, `plugd.plugin.reload_failed`), never returned: the running version keeps
    /// serving.
    pub(crate) async fn apply_entry(&self, entry: &OsStr) {
        let dir = self.inner.config.plugins_dir.join(entry);
        let known = self
            .inner
            .slots
            .read()
            .values()
            .find(|s| s.inner.lock().dir == dir)
            .map(|s| {
                let inner = s.inner.lock();
                let unloaded = inner.state() == PluginState::Stopped
                    && inner.phase().reason().is_some_and(operator_stopped);
                (s.name.clone(), inner.state(), unloaded)
            });
        // The operator uninstalled it: an edit does not reinstall it (`load NAME` does).
        if let Some((name, PluginState::Uninstalled, _)) = &known {
            tracing::info!(plugin = %name, "package changed, but the plugin is uninstalled: not loading it; hint: `plugd load {name}`");
            return;
        }
        // The operator unloaded it (or a dependency of it): an edit does not start it again.
        if let Some((name, _, true)) = &known
            && plugd_manifest::foreign::is_package(&dir)
        {
            tracing::info!(plugin = %name, "package changed, but the plugin was unloaded: not starting it; hint: `plugd load {name}`");
            return;
        }
        let known = known.map(|(name, _, _)| name);
        if !plugd_manifest::foreign::is_package(&dir) {
            if let Some(name) = known {
                tracing::info!(plugin = %name, dir = %dir.display(), "package removed: unloading");
                self.remove_package(name.as_str()).await;
            }
            return;
        }
        let read = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || Manifest::load(&dir))
                .await
                .ok()
        };
        let name = match (read, known) {
            // Renamed in its manifest: the old plugin goes, the new one comes.
            (Some(Ok(manifest)), Some(old)) if manifest.name != old => {
                tracing::info!(plugin = %old, new = %manifest.name, "package renamed: unloading the old name");
                self.remove_package(old.as_str()).await;
                manifest.name.to_string()
            }
            (Some(Ok(manifest)), _) => manifest.name.to_string(),
            // A broken manifest of a running plugin: the reload reports it and keeps it serving.
            (_, Some(old)) => old.to_string(),
            (Some(Err(e)), None) => {
                tracing::warn!(dir = %dir.display(), "package not loaded: {e}");
                if let Err(e) = self.rescan().await {
                    tracing::warn!("cannot rescan the plugins directory: {e}");
                }
                return;
            }
            (None, None) => return,
        };
        tracing::info!(plugin = %name, "package changed: reloading");
        // Failures are in the supervision record, the plugin's log and the event.
        let _ = self.swap_version(&name, Trigger::Watch).await;
    }
}

/// Whether a stop reason is the operator's `unload` of the plugin or of a dependency of it.
fn operator_stopped(reason: &str) -> bool {
    reason == "unloaded"
        || (reason.starts_with("its dependency `") && reason.ends_with("` was unloaded"))
}

/// Starts inotify on `root` (or polling when asked, or when inotify cannot watch).
fn start_watcher(
    root: &Path,
    pending: &Arc<Pending>,
    poll: Option<Duration>,
) -> Result<(Box<dyn Send>, WatchMode), HostError> {
    let handler = {
        let root = root.to_owned();
        let pending = pending.clone();
        move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                let now = Instant::now();
                let mut changed = pending.changed.lock();
                let mut any = false;
                for entry in event.paths.iter().filter_map(|p| package_entry(&root, p)) {
                    changed.insert(entry, now);
                    any = true;
                }
                drop(changed);
                if any {
                    pending.wake.notify_one();
                }
            }
            Err(e) => tracing::warn!("watching the plugins directory: {e}"),
        }
    };
    let poll_with = |interval: Duration| -> Box<dyn Send> {
        Box::new(Poller::start(root.to_owned(), pending.clone(), interval))
    };
    if let Some(interval) = poll {
        return Ok((poll_with(interval), WatchMode::Poll(interval)));
    }
    let inotify = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(root, RecursiveMode::Recursive)?;
        Ok(w)
    });
    match inotify {
        Ok(watcher) => Ok((Box::new(watcher), WatchMode::Notify)),
        Err(e) => {
            let interval = Duration::from_millis(500);
            let hint = match e.kind {
                notify::ErrorKind::MaxFilesWatch => {
                    "; hint: raise `fs.inotify.max_user_watches` (sysctl)"
                }
                _ => "",
            };
            tracing::warn!(
                "cannot watch `{}` with inotify ({e}){hint}; polling every {interval:?} instead",
                root.display()
            );
            Ok((poll_with(interval), WatchMode::Poll(interval)))
        }
    }
}

/// The polling watcher: every `interval` it lists the plugins directory (following the
/// top-level entries, which may be links to packages elsewhere) and compares each file's size,
/// inode and modification time to nanoseconds with the previous listing. (notify's own poller
/// compares modification times to the second, so two saves within a second look like one; and
/// comparing contents would read every package in full at every tick.) Stops when dropped.
struct Poller {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// What a listing records of one path.
type Stamp = (u64, u64, i64, i64);

impl Poller {
    fn start(root: PathBuf, pending: Arc<Pending>, interval: Duration) -> Poller {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        // The first listing is taken before `watch` returns: a change right after it is seen.
        let mut before = list(&root);
        std::thread::Builder::new()
            .name("plugd-watch-poll".into())
            .spawn(move || {
                while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    let now = list(&root);
                    let changed: Vec<&PathBuf> = now
                        .iter()
                        .filter(|(path, stamp)| before.get(*path) != Some(stamp))
                        .map(|(path, _)| path)
                        .chain(before.keys().filter(|path| !now.contains_key(*path)))
                        .collect();
                    if !changed.is_empty() {
                        let at = Instant::now();
                        let mut pending_changes = pending.changed.lock();
                        for entry in changed.into_iter().filter_map(|p| package_entry(&root, p)) {
                            pending_changes.insert(entry, at);
                        }
                        drop(pending_changes);
                        pending.wake.notify_one();
                    }
                    before = now;
                }
            })
            .expect("spawning the polling thread");
        Poller { stop }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every path under `root` the watcher does not ignore, with its stamp.
fn list(root: &Path) -> HashMap<PathBuf, Stamp> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    let stamp = |m: &std::fs::Metadata| (m.len(), m.ino(), m.mtime(), m.mtime_nsec());
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    let mut dirs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if package_entry(root, &path).is_none() {
            continue;
        }
        // Top-level entries are followed: `plugd dev` links the package it serves.
        if let Ok(meta) = std::fs::metadata(&path) {
            out.insert(path.clone(), stamp(&meta));
            if meta.is_dir() {
                dirs.push(path);
            }
        }
    }
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if package_entry(root, &path).is_none() {
                continue;
            }
            if let Ok(meta) = entry.metadata() {
                out.insert(path.clone(), stamp(&meta));
                if meta.is_dir() {
                    dirs.push(path);
                }
            }
        }
    }
    out
}

/// Waits for packages to settle and applies them one at a time.
async fn apply_changes(host: Host, root: PathBuf, pending: Arc<Pending>, debounce: Duration) {
    loop {
        let wake = pending.wake.notified();
        let now = Instant::now();
        let (ready, next) = {
            let mut changed = pending.changed.lock();
            let ready: Vec<OsString> = changed
                .iter()
                .filter(|(_, at)| now.duration_since(**at) >= debounce)
                .map(|(entry, _)| entry.clone())
                .collect();
            for entry in &ready {
                changed.remove(entry);
            }
            let next = changed
                .values()
                .map(|at| {
                    at.checked_add(debounce)
                        .unwrap_or(*at + Duration::from_secs(3600))
                })
                .min();
            (ready, next)
        };
        let mut ready = ready;
        ready.sort();
        for entry in ready {
            tracing::debug!(entry = %root.join(&entry).display(), "package settled");
            host.apply_entry(&entry).await;
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = wake => {}
                }
            }
            None => wake.await,
        }
    }
}

/// The package directory (an entry of the plugins directory) a changed path belongs to, unless
/// the path is one the watcher ignores.
fn package_entry(root: &Path, path: &Path) -> Option<OsString> {
    let relative = path.strip_prefix(root).ok()?;
    let mut components = relative.components();
    let Some(Component::Normal(entry)) = components.next() else {
        return None;
    };
    if entry.as_encoded_bytes().starts_with(b".") {
        return None;
    }
    let mut rest = components.peekable();
    while let Some(component) = rest.next() {
        let Component::Normal(part) = component else {
            continue;
        };
        let last = rest.peek().is_none();
        if ignored_dir(part) || (last && ignored_file(part)) {
            return None;
        }
    }
    Some(entry.to_owned())
}

/// Directories whose changes never make a new version.
fn ignored_dir(name: &OsStr) -> bool {
    matches!(
        name.to_str(),
        Some(
            ".git"
                | ".hg"
                | ".svn"
                | "__pycache__"
                | ".pytest_cache"
                | ".mypy_cache"
                | ".ruff_cache"
                | ".plugd"
                | ".idea"
                | ".vscode"
        )
    )
}

/// Editor and tool temp files.
fn ignored_file(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    name.ends_with('~')
        || name.starts_with(".#")
        || (name.starts_with('#') && name.ends_with('#'))
        || [
            ".swp",
            ".swo",
            ".swx",
            ".tmp",
            ".part",
            ".pyc",
            ".crdownload",
        ]
        .iter()
        .any(|ext| name.ends_with(ext))
        || matches!(name, "4913" | ".DS_Store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_map_to_their_package_and_noise_is_ignored() {
        let root = Path::new("/p");
        let entry = |path: &str| package_entry(root, Path::new(path));
        assert_eq!(entry("/p/hello/main.py"), Some("hello".into()));
        assert_eq!(entry("/p/hello/plugin.toml"), Some("hello".into()));
        assert_eq!(entry("/p/hello"), Some("hello".into()));
        assert_eq!(entry("/p/hello/lib/deep/x.py"), Some("hello".into()));
        for noise in [
            "/p",
            "/q/hello/main.py",
            "/p/.git/index",
            "/p/hello/.git/HEAD",
            "/p/hello/__pycache__/main.cpython-311.pyc",
            "/p/hello/main.py~",
            "/p/hello/.main.py.swp",
            "/p/hello/.#main.py",
            "/p/hello/#main.py#",
            "/p/hello/4913",
            "/p/hello/x.pyc",
        ] {
            assert_eq!(entry(noise), None, "{noise}");
        }
        // Only the last component is judged as a file name.
        assert_eq!(entry("/p/hello/backup~/x.py"), Some("hello".into()));
    }
}
