//! `plugd lock DIR`: resolves a package's Python requirements (`[python] requirements` or
//! `requirements.txt`) with `uv` into `DIR/requirements.lock`, the file `plugd serve` installs
//! from (and that strict mode requires), so that signing the package covers exact versions and
//! hashes. The same code as the host's (`plugd_host::pyenv`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use plugd_host::PythonConfig;
use plugd_host::pyenv::{self, LOCK_FILE};
use plugd_manifest::Manifest;

use crate::paths::{Paths, absolute};

/// How `uv` is found and which index it uses: `plugd serve` and `plugd lock` alike.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct PythonArgs {
    /// The `uv` binary that installs plugins' Python dependencies (default: `uv` on `PATH`;
    /// `./dev` installs it with pip).
    #[arg(long, env = "PLUGD_UV", value_name = "PATH")]
    pub uv: Option<PathBuf>,
    /// The Python package index plugins' dependencies come from (default: PyPI).
    #[arg(long, env = "PLUGD_INDEX_URL", value_name = "URL")]
    pub index_url: Option<String>,
    /// A directory (or URL) of wheels to install plugins' dependencies from as well
    /// (repeatable).
    #[arg(long, value_name = "DIR")]
    pub find_links: Vec<PathBuf>,
    /// Use no package index, only `--find-links` (and uv's cache in `STATE/cache/uv`).
    #[arg(long)]
    pub no_index: bool,
}

impl PythonArgs {
    /// The host's configuration of the same (relative `--find-links` made absolute).
    pub(crate) fn config(&self) -> anyhow::Result<PythonConfig> {
        let find_links = self
            .find_links
            .iter()
            .map(|dir| {
                if dir.to_string_lossy().contains("://") {
                    Ok(dir.clone())
                } else {
                    absolute(dir)
                }
            })
            .collect::<anyhow::Result<_>>()?;
        let uv = self.uv.as_deref().map(absolute).transpose()?;
        Ok(PythonConfig {
            uv,
            index_url: self.index_url.clone(),
            find_links,
            no_index: self.no_index,
        })
    }
}

/// Writes `DIR/requirements.lock` and says what it pinned.
pub(crate) fn run(
    dir: PathBuf,
    python: &PythonArgs,
    paths: &Paths,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let dir = absolute(&dir)?;
    let manifest = Manifest::load(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let who = format!("Package `{}`", dir.display());
    let Some(requirements) = pyenv::package_requirements(&dir, &manifest.python.requirements)
        .map_err(|e| anyhow::anyhow!("{who}: {e}"))?
    else {
        anyhow::bail!(
            "{who} has no Python requirements to lock; hint: list them in `plugin.toml` (`[python] requirements = [\"numpy>=2\"]`) or in `requirements.txt`"
        );
    };
    // uv's cache lives in the state dir, unless that is inside the package (it would become
    // part of what is signed).
    let state_dir = if paths.state_dir.starts_with(&dir) {
        std::env::temp_dir().join("plugd-lock")
    } else {
        paths.state_dir.clone()
    };
    let lock = pyenv::lock_requirements(&state_dir, &python.config()?, &who, &requirements)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = dir.join(LOCK_FILE);
    let tmp = dir.join(format!(".{LOCK_FILE}.tmp"));
    std::fs::write(&tmp, &lock.text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("Cannot write `{}`", path.display()))?;
    if as_json {
        crate::output::print_json(&serde_json::json!({
            "lock": path.display().to_string(),
            "packages": lock.packages,
            "requirements": requirements.lines,
            "requirements_hash": format!("sha256:{}", lock.requirements_hash),
        }));
    } else {
        println!(
            "Pinned {} package{} (from {} requirement{}) into {}",
            lock.packages,
            if lock.packages == 1 { "" } else { "s" },
            requirements.lines.len(),
            if requirements.lines.len() == 1 {
                ""
            } else {
                "s"
            },
            path.display()
        );
        println!(
            "hint: sign the package again (`plugd sign {} --key KEY`) so its signature covers the lock",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
