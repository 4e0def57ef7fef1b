//! [`ManifestError`]: why a manifest could not be read, each a user-facing sentence.

use std::io;
use std::path::{Path, PathBuf};

use crate::ManifestFormat;

/// Why a manifest could not be read or is not valid.
///
/// Every variant displays as one line that starts with a capital, names things in backticks and
/// ends with `; hint: ...` where the fix is known. Errors from [`Manifest::load`] name the file.
///
/// [`Manifest::load`]: crate::Manifest::load
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The directory has no manifest plugd reads.
    #[error(
        "No `plugin.toml` or `plugin.json` in `{}` (nor a foreign `plugin.yaml`, `manifest.json` or `__init__.py` with `plugin_class`); hint: run `plugd new` to create a plugin there",
        dir.display()
    )]
    NotFound {
        /// The directory that was searched.
        dir: PathBuf,
    },
    /// The manifest file exists but could not be read.
    #[error("Cannot read `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The text is not valid TOML, JSON or YAML.
    #[error(
        "Invalid {}{} at line {line}, column {column}: {message}",
        format_name(*format),
        in_path(path.as_deref())
    )]
    Syntax {
        /// Which syntax.
        format: ManifestFormat,
        /// The file, when read from disk.
        path: Option<PathBuf>,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What the TOML or JSON parser said.
        message: String,
    },
    /// The text parses but breaks a rule of the manifest format.
    #[error(
        "{message}{}{}",
        path.as_deref().map(|p| format!(" (in `{}`)", p.display())).unwrap_or_default(),
        hint.as_deref().map(|h| format!("; hint: {h}")).unwrap_or_default()
    )]
    Invalid {
        /// The file, when read from disk.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
        /// How to fix it, when known.
        hint: Option<String>,
    },
}

impl ManifestError {
    /// The manifest file this error is about, when it was read from disk.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ManifestError::NotFound { .. } => None,
            ManifestError::Read { path, .. } => Some(path),
            ManifestError::Syntax { path, .. } | ManifestError::Invalid { path, .. } => {
                path.as_deref()
            }
        }
    }

    /// Records the file a parse error came from.
    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        if let ManifestError::Syntax { path, .. } | ManifestError::Invalid { path, .. } = &mut self
        {
            *path = Some(file.to_owned());
        }
        self
    }
}

fn format_name(format: ManifestFormat) -> &'static str {
    match format {
        ManifestFormat::Toml => "TOML",
        ManifestFormat::Json => "JSON",
        ManifestFormat::Yaml => "YAML",
        ManifestFormat::Python => "Python",
    }
}

fn in_path(path: Option<&Path>) -> String {
    path.map(|p| format!(" in `{}`", p.display()))
        .unwrap_or_default()
}
