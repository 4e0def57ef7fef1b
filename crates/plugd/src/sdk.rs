//! The Python SDK shipped inside the binary: `plugd serve` writes it under the state dir and puts
//! it on every child's `PYTHONPATH`, so Python plugins work without `pip install` and always get
//! the SDK that matches this host's protocol.

use std::path::{Path, PathBuf};

use anyhow::Context;

const FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../../sdk/python/src/plugd/__init__.py"),
    ),
    (
        "_asgi.py",
        include_str!("../../../sdk/python/src/plugd/_asgi.py"),
    ),
    (
        "_plugin.py",
        include_str!("../../../sdk/python/src/plugd/_plugin.py"),
    ),
    (
        "_types.py",
        include_str!("../../../sdk/python/src/plugd/_types.py"),
    ),
    (
        "_validate.py",
        include_str!("../../../sdk/python/src/plugd/_validate.py"),
    ),
    (
        "_version.py",
        include_str!("../../../sdk/python/src/plugd/_version.py"),
    ),
    (
        "client.py",
        include_str!("../../../sdk/python/src/plugd/client.py"),
    ),
    (
        "script.py",
        include_str!("../../../sdk/python/src/plugd/script.py"),
    ),
    (
        "py.typed",
        include_str!("../../../sdk/python/src/plugd/py.typed"),
    ),
];

/// Writes the SDK to `STATE/sdk/python/plugd` (world-readable, so sandboxed plugins running as
/// their own uid can import it) and returns the directory to put on `PYTHONPATH`.
pub(crate) fn install(state_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let root = state_dir.join("sdk/python");
    let pkg = root.join("plugd");
    std::fs::create_dir_all(&pkg).with_context(|| format!("Cannot create `{}`", pkg.display()))?;
    for (name, text) in FILES {
        let path = pkg.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(*text) {
            std::fs::write(&path, text)
                .with_context(|| format!("Cannot write `{}`", path.display()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    for dir in [state_dir, &state_dir.join("sdk"), &root, &pkg] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(root.canonicalize()?)
}
