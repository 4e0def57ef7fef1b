//! Where plugd keeps things: every configured path made absolute once, at startup, and the one
//! rule for the trust store (`--trust-dir`, else `STATE/trust`) shared by every command.
//!
//! Absolute paths matter because plugins do not run in plugd's working directory: a relative
//! data dir handed to a plugin running inside its staged package would point somewhere else.

use std::path::{Component, Path, PathBuf};

use anyhow::Context;

/// The state and trust directories every command agrees on.
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    /// `--state-dir` / `PLUGD_STATE_DIR`, absolute.
    pub state_dir: PathBuf,
    /// `--trust-dir` / `PLUGD_TRUST_DIR` if given, else `STATE/trust`; absolute.
    pub trust_dir: PathBuf,
}

impl Paths {
    /// Resolves the state dir and the trust dir against the current directory.
    pub(crate) fn resolve(state_dir: &Path, trust_dir: Option<&Path>) -> anyhow::Result<Paths> {
        let state_dir = absolute(state_dir)?;
        let trust_dir = match trust_dir {
            Some(dir) => absolute(dir)?,
            None => state_dir.join("trust"),
        };
        Ok(Paths {
            state_dir,
            trust_dir,
        })
    }
}

/// `path` made absolute against the current directory, with `.` and `..` components removed
/// lexically (symlinks are not resolved, and the path need not exist yet).
pub(crate) fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let joined = std::path::absolute(path)
        .with_context(|| format!("Cannot make `{}` an absolute path", path.display()))?;
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The first ancestor of `dir` (or `dir` itself) that other users cannot traverse (no `o+x`),
/// with its permission bits. Sandboxed plugins run as their own uid, so they cannot reach
/// anything below such a directory.
pub(crate) fn untraversable_ancestor(dir: &Path) -> Option<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    for ancestor in ancestors {
        // A part that does not exist yet is created by plugd with mode 0755.
        let Ok(meta) = std::fs::metadata(ancestor) else {
            return None;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            return Some((ancestor.to_owned(), mode));
        }
    }
    None
}

/// `STATE/serve.lock`, held by the one `plugd serve` (or `plugd dev`) of a state dir.
///
/// A POSIX record lock (`fcntl(F_SETLK)`), not `flock`: a `flock` belongs to the open file,
/// which every `fork` shares, so a sandbox supervisor forked a moment before the host was
/// killed would hold the state dir until it had closed its copy of the descriptor, and a
/// server restarted at once was refused. A record lock belongs to the process alone: it goes
/// when the host does, whatever its children are doing.
pub(crate) struct ServeLock {
    _file: std::fs::File,
}

/// The whole-file write lock of `fcntl(2)`.
fn whole_file(kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is plain data; zero is a valid value of every field.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

impl ServeLock {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("serve.lock")
    }

    /// Takes the lock; `Ok(None)` when another process holds it.
    pub(crate) fn acquire(state_dir: &Path) -> anyhow::Result<Option<ServeLock>> {
        use std::os::fd::AsRawFd;
        let path = ServeLock::path(state_dir);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("Cannot create `{}`", path.display()))?;
        let lock = whole_file(libc::F_WRLCK as libc::c_short);
        // SAFETY: fcntl on a descriptor we own with a valid `struct flock`.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
            return Ok(Some(ServeLock { _file: file }));
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EACCES | libc::EAGAIN) => Ok(None),
            _ => {
                Err(anyhow::Error::new(error).context(format!("Cannot lock `{}`", path.display())))
            }
        }
    }

    /// Whether a running server holds the lock of `state_dir`.
    pub(crate) fn held(state_dir: &Path) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(file) = std::fs::File::open(ServeLock::path(state_dir)) else {
            return false;
        };
        let mut lock = whole_file(libc::F_WRLCK as libc::c_short);
        // SAFETY: as in `acquire`; F_GETLK only fills `lock` in.
        let ret = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
        ret == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_and_clean() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute(Path::new(".plugd")).unwrap(), cwd.join(".plugd"));
        assert_eq!(
            absolute(Path::new("./a/../b/./c")).unwrap(),
            cwd.join("b/c")
        );
        assert_eq!(absolute(Path::new("/x/y/../z")).unwrap(), Path::new("/x/z"));
        let paths = Paths::resolve(Path::new("st"), None).unwrap();
        assert_eq!(paths.trust_dir, cwd.join("st/trust"));
        let paths = Paths::resolve(Path::new("st"), Some(Path::new("keys"))).unwrap();
        assert_eq!(paths.trust_dir, cwd.join("keys"));
    }

    #[test]
    fn finds_the_directory_others_cannot_enter() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        let private = open.join("private");
        std::fs::create_dir_all(private.join("state")).unwrap();
        for dir in [tmp.path(), open.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            untraversable_ancestor(&private.join("state/not-yet")),
            Some((private.clone(), 0o700))
        );
        assert_eq!(untraversable_ancestor(&open.join("missing/state")), None);
    }
    /// The lock goes with the process that took it, not with a forked child (a sandbox
    /// supervisor) that still has the descriptor, as a `flock` would.
    #[test]
    fn the_serve_lock_is_not_kept_by_a_forked_child() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!ServeLock::held(tmp.path()));
        let lock = ServeLock::acquire(tmp.path()).unwrap().expect("free");
        // SAFETY: the child only waits for a signal (async-signal-safe) and never returns.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            unsafe {
                libc::pause();
                libc::_exit(0);
            }
        }
        // Another process (the child) holds no lock; dropping ours frees the file although
        // the child still has the descriptor open.
        drop(lock);
        let held = ServeLock::held(tmp.path());
        let again = ServeLock::acquire(tmp.path()).unwrap();
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(!held, "a forked child kept the state dir locked");
        assert!(again.is_some());
    }
}
