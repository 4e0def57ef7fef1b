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
}
