//! [`ResolveError`]: why one plugin cannot be part of the load plan, as a user-facing message.

use std::fmt;
use std::path::PathBuf;

use plugd_manifest::{PluginName, Version, VersionReq};
use semver::Op;

/// Why a plugin cannot load. Each failed plugin gets exactly one of these.
///
/// The `Display` form is a complete user-facing sentence naming every plugin and version
/// involved, with a hint where the fix is known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// A dependency is not installed at all.
    Missing {
        /// The plugin that cannot load.
        plugin: PluginName,
        /// Its version.
        version: Version,
        /// The dependency that is not installed.
        dependency: PluginName,
        /// What `plugin` requires of it.
        req: VersionReq,
    },
    /// A dependency is installed, but its version does not satisfy the requirement.
    Conflict {
        /// The plugin that cannot load.
        plugin: PluginName,
        /// Its version.
        version: Version,
        /// The dependency whose version does not fit.
        dependency: PluginName,
        /// What `plugin` requires of it.
        req: VersionReq,
        /// The installed version of `dependency`.
        installed: Version,
        /// What the other plugins that depend on `dependency` require, sorted by plugin name;
        /// satisfied or not.
        others: Vec<Requirement>,
    },
    /// The plugin is on a dependency cycle (a plugin depending on itself is a cycle of one).
    Cycle {
        /// A concrete cycle through the failed plugin, starting at its smallest name; the
        /// first plugin depends on the second, ..., the last depends on the first.
        cycle: Vec<PluginName>,
    },
    /// Several packages carry the same plugin name; all of them fail.
    Duplicate {
        /// The plugin name.
        name: PluginName,
        /// Every package with that name, sorted by directory.
        copies: Vec<Package>,
    },
    /// A dependency, direct or transitive, cannot load.
    DependencyFailed {
        /// The plugin that cannot load.
        plugin: PluginName,
        /// Its version.
        version: Version,
        /// The chain of dependencies from `plugin` (excluded) to the plugin that failed for a
        /// reason of its own (included): `path[0]` is a direct dependency of `plugin`.
        path: Vec<PluginName>,
        /// Why the last plugin of `path` cannot load; never `DependencyFailed`.
        cause: Box<ResolveError>,
    },
    /// The host reported that the plugin failed after resolution (at start or while running),
    /// see [`Resolution::fail`](crate::Resolution::fail).
    Runtime {
        /// The plugin that failed.
        plugin: PluginName,
        /// Its version.
        version: Version,
        /// The host's description of the failure.
        reason: String,
    },
}

/// One plugin's requirement on another, for [`ResolveError::Conflict`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The requiring plugin.
    pub plugin: PluginName,
    /// Its version.
    pub version: Version,
    /// What it requires.
    pub req: VersionReq,
}

/// One of several packages with the same name, for [`ResolveError::Duplicate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// The package directory.
    pub source: PathBuf,
    /// The version it declares.
    pub version: Version,
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Missing {
                plugin,
                version,
                dependency,
                req,
            } => write!(
                f,
                "Plugin `{plugin} {version}` needs `{dependency} {req}`, but no plugin \
                 `{dependency}` is installed; hint: add it to the plugins directory or remove \
                 the dependency"
            ),
            ResolveError::Conflict {
                plugin,
                version,
                dependency,
                req,
                installed,
                others,
            } => {
                write!(
                    f,
                    "Plugin `{plugin} {version}` needs `{dependency} {req}`, but \
                     `{dependency} {installed}` is installed"
                )?;
                if !others.is_empty() {
                    f.write_str(" (also required: ")?;
                    for (i, other) in others.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        let Requirement {
                            plugin,
                            version,
                            req,
                        } = other;
                        write!(f, "`{plugin} {version}` wants `{dependency} {req}`")?;
                    }
                    f.write_str(")")?;
                }
                f.write_str("; hint: ")?;
                conflict_hint(f, dependency, req, installed)
            }
            ResolveError::Cycle { cycle } => {
                f.write_str("Dependency cycle: ")?;
                for name in cycle {
                    write!(f, "`{name}` → ")?;
                }
                if let Some(first) = cycle.first() {
                    write!(f, "`{first}`")?;
                }
                match cycle.as_slice() {
                    [only] => write!(f, "; hint: remove the dependency of `{only}` on itself"),
                    _ => f.write_str("; hint: remove one of these dependencies"),
                }
            }
            ResolveError::Duplicate { name, copies } => {
                let times = match copies.len() {
                    2 => "twice".to_owned(),
                    n => format!("{n} times"),
                };
                write!(f, "Plugin `{name}` is installed {times}: ")?;
                for (i, copy) in copies.iter().enumerate() {
                    if i + 1 == copies.len() && i > 0 {
                        f.write_str(" and ")?;
                    } else if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{}` ({})", copy.source.display(), copy.version)?;
                }
                let which = if copies.len() == 2 {
                    "one"
                } else {
                    "all but one"
                };
                write!(f, "; hint: remove {which}")
            }
            ResolveError::DependencyFailed {
                plugin,
                version,
                path,
                cause,
            } => {
                let direct = path.first().map(PluginName::as_str).unwrap_or_default();
                write!(
                    f,
                    "Plugin `{plugin} {version}` cannot load because its dependency `{direct}` \
                     cannot load"
                )?;
                if path.len() > 1 {
                    write!(f, " (`{plugin}`")?;
                    for name in path {
                        write!(f, " → `{name}`")?;
                    }
                    f.write_str(")")?;
                }
                write!(f, ": {cause}")
            }
            ResolveError::Runtime {
                plugin,
                version,
                reason,
            } => {
                write!(f, "Plugin `{plugin} {version}` failed: {reason}")
            }
        }
    }
}

/// The hint for a version conflict: a pre-release needs an explicit pre-release requirement;
/// otherwise say whether the installed version is too old or too new.
fn conflict_hint(
    f: &mut fmt::Formatter<'_>,
    dependency: &PluginName,
    req: &VersionReq,
    installed: &Version,
) -> fmt::Result {
    let release = Version::new(installed.major, installed.minor, installed.patch);
    if !installed.pre.is_empty() && req.matches(&release) {
        return write!(
            f,
            "`{installed}` is a pre-release, which only requirements naming a pre-release of \
             `{release}` accept (such as `^{installed}`): require it explicitly or install a \
             release of `{dependency}`"
        );
    }
    if too_old(req, installed) {
        write!(f, "upgrade `{dependency}` or relax the requirement")
    } else {
        write!(
            f,
            "install an older `{dependency}` or relax the requirement"
        )
    }
}

/// Whether `installed` lies below a lower bound of `req`.
fn too_old(req: &VersionReq, installed: &Version) -> bool {
    req.comparators.iter().any(|c| {
        let mut base = Version::new(c.major, c.minor.unwrap_or(0), c.patch.unwrap_or(0));
        base.pre = c.pre.clone();
        match (c.op, c.minor, c.patch) {
            // `>1` means `>=2.0.0` and `>1.2` means `>=1.3.0`.
            (Op::Greater, None, _) => *installed < Version::new(c.major.saturating_add(1), 0, 0),
            (Op::Greater, Some(minor), None) => {
                *installed < Version::new(c.major, minor.saturating_add(1), 0)
            }
            (Op::Greater, ..) => *installed <= base,
            (Op::Less | Op::LessEq, ..) => false,
            _ => *installed < base,
        }
    })
}
