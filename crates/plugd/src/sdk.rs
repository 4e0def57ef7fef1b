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
        "compat/__init__.py",
        include_str!("../../../sdk/python/src/plugd/compat/__init__.py"),
    ),
    (
        "compat/__main__.py",
        include_str!("../../../sdk/python/src/plugd/compat/__main__.py"),
    ),
    (
        "compat/_common.py",
        include_str!("../../../sdk/python/src/plugd/compat/_common.py"),
    ),
    (
        "compat/classic.py",
        include_str!("../../../sdk/python/src/plugd/compat/classic.py"),
    ),
    (
        "compat/panoptic.py",
        include_str!("../../../sdk/python/src/plugd/compat/panoptic.py"),
    ),
    (
        "compat/xcore.py",
        include_str!("../../../sdk/python/src/plugd/compat/xcore.py"),
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
    let compat = pkg.join("compat");
    std::fs::create_dir_all(&compat)
        .with_context(|| format!("Cannot create `{}`", compat.display()))?;
    for (name, text) in FILES {
        let path = pkg.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(*text) {
            std::fs::write(&path, text)
                .with_context(|| format!("Cannot write `{}`", path.display()))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    precompile(&root);
    for dir in [state_dir, &state_dir.join("sdk"), &root, &pkg, &compat] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(root.canonicalize()?)
}

/// Compiles the SDK's bytecode (`__pycache__`) with the `python3` plugins run (the first on
/// their `PATH`). A confined plugin runs as its own uid and cannot write there, so without this
/// every Python plugin would compile the SDK from source at every start (~10 ms each for the
/// compatibility runner). Up-to-date files are skipped; a missing `python3` or a failure only
/// costs that time, so it is logged, not fatal.
fn precompile(root: &Path) {
    let outcome = std::process::Command::new("python3")
        .args(["-m", "compileall", "-q"])
        .arg(root)
        .env("PATH", plugd_process::CHILD_PATH)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output();
    match outcome {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            "compiling the Python SDK's bytecode failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => tracing::warn!("cannot compile the Python SDK's bytecode: `python3`: {e}"),
    }
}

#[cfg(test)]
mod tests {
    /// Every module of the SDK's source tree is shipped: a file added there and forgotten here
    /// would be missing only in installed hosts.
    #[test]
    fn every_sdk_module_is_shipped() {
        let src =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sdk/python/src/plugd");
        let mut on_disk = Vec::new();
        for sub in ["", "compat"] {
            for entry in std::fs::read_dir(src.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                if path.is_file() && (name.ends_with(".py") || name == "py.typed") {
                    on_disk.push(if sub.is_empty() {
                        name
                    } else {
                        format!("{sub}/{name}")
                    });
                }
            }
        }
        on_disk.sort();
        let mut shipped: Vec<String> = super::FILES.iter().map(|(n, _)| (*n).to_owned()).collect();
        shipped.sort();
        assert_eq!(shipped, on_disk);
    }
}
