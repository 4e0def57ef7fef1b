//! Private Python environments for plugins' dependencies (`[python] requirements` or
//! `requirements.txt`), built with `uv` from a lock, keyed by the lock's hash under
//! `STATE/envs/<hash>`.

use std::path::{Path, PathBuf};

use plugd_manifest::{Manifest, PluginName};

use crate::Host;
use crate::registry::TrustLevel;

impl Host {
    /// The environment a staged package runs with: `None` when it needs no dependencies.
    pub(crate) async fn python_env(
        &self,
        name: &PluginName,
        package: &Path,
        manifest: &Manifest,
        trust: &TrustLevel,
    ) -> Result<Option<PathBuf>, String> {
        let _ = (package, trust);
        if manifest.python.requirements.is_empty() && !package.join("requirements.txt").is_file() {
            return Ok(None);
        }
        Err(format!(
            "Plugin `{name}` has Python dependencies, which this host cannot install yet"
        ))
    }
}
