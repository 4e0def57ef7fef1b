//! Pure dependency resolution: installed plugin packages in, a load plan in waves out.
//!
//! [`resolve`] takes every package found in the plugins directory and returns a
//! [`Resolution`]: the plugins that can load, grouped into waves (a plugin's dependencies are
//! all in earlier waves, so a whole wave may start concurrently), and for every plugin that
//! cannot load, one [`ResolveError`] naming everything involved. A failure takes down only the
//! plugins that depend on the failed one; the result does not depend on input order.
//!
//! Exactly one version of each plugin may be installed, so there is no version choice to make:
//! resolution checks requirements against the installed versions (with semver's rules,
//! pre-releases included) instead of searching for a solution.
#![warn(missing_docs)]

mod error;
mod graph;
mod resolve;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use plugd_manifest::{Manifest, PluginName, Version, VersionReq};

pub use crate::error::{Package, Requirement, ResolveError};
pub use crate::resolve::resolve;

/// One installed package, as resolution sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Plugin name.
    pub name: PluginName,
    /// Plugin version.
    pub version: Version,
    /// Other plugins this one needs, with semver requirements.
    pub dependencies: BTreeMap<PluginName, VersionReq>,
    /// The package directory, for messages.
    pub source: PathBuf,
}

impl Candidate {
    /// The candidate for the package in `source` described by `manifest`.
    pub fn from_manifest(manifest: &Manifest, source: impl Into<PathBuf>) -> Self {
        Candidate {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            dependencies: manifest.dependencies.clone(),
            source: source.into(),
        }
    }
}

/// The load plan: which plugins load, in which order, and why the others cannot.
///
/// Every candidate is either planned (in exactly one wave) or failed (with one reason);
/// a name installed twice fails once, under that name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    waves: Vec<Vec<PluginName>>,
    failed: BTreeMap<PluginName, ResolveError>,
    /// Every planned plugin with its wave.
    planned: BTreeMap<PluginName, Planned>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Planned {
    candidate: Candidate,
    wave: usize,
}

impl Resolution {
    /// The load order. Wave 0 holds the plugins without dependencies; every dependency of a
    /// plugin in wave `n` is in a wave before `n`, and at least one is in wave `n - 1`.
    /// Plugins of one wave may start concurrently. Sorted by name inside a wave; no wave is
    /// empty.
    pub fn waves(&self) -> &[Vec<PluginName>] {
        &self.waves
    }

    /// Every plugin that cannot load, with its reason.
    pub fn failed(&self) -> &BTreeMap<PluginName, ResolveError> {
        &self.failed
    }

    /// The planned candidate called `name`, if it is in the plan.
    pub fn plugin(&self, name: &str) -> Option<&Candidate> {
        self.planned.get(name).map(|p| &p.candidate)
    }

    /// The wave `name` loads in, if it is in the plan.
    pub fn wave_of(&self, name: &str) -> Option<usize> {
        self.planned.get(name).map(|p| p.wave)
    }

    /// The stop order: the waves reversed, so every plugin stops before its dependencies.
    pub fn stop_order(&self) -> Vec<Vec<PluginName>> {
        self.waves.iter().rev().cloned().collect()
    }

    /// The direct dependencies of `name`, sorted; empty if `name` is not in the plan.
    pub fn dependencies(&self, name: &str) -> Vec<PluginName> {
        self.planned
            .get(name)
            .map(|p| p.candidate.dependencies.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every planned plugin that depends on `name`, directly or not, in stop order (later
    /// waves first, by name inside a wave), so stopping them in this order never stops a
    /// plugin before one that depends on it. Empty if `name` is not in the plan.
    pub fn dependants(&self, name: &str) -> Vec<PluginName> {
        let Some(wave) = self.wave_of(name) else {
            return Vec::new();
        };
        // Dependencies are always in earlier waves, so one pass in wave order finds every
        // transitive dependant.
        let mut found: BTreeSet<&str> = BTreeSet::from([name]);
        let mut dependants = Vec::new();
        for plugin in self.waves.iter().skip(wave + 1).flatten() {
            let deps = &self.planned[plugin].candidate.dependencies;
            if deps.keys().any(|d| found.contains(d.as_str())) {
                found.insert(plugin.as_str());
                dependants.push(plugin);
            }
        }
        let mut dependants: Vec<PluginName> = dependants.into_iter().cloned().collect();
        dependants.sort_by_key(|p| std::cmp::Reverse(self.planned[p].wave));
        dependants
    }

    /// Takes `name` and its transitive dependants out of the plan because `name` failed after
    /// resolution (typically at start); `reason` is the host's description of the failure.
    ///
    /// `name` fails with [`ResolveError::Runtime`], each dependant with
    /// [`ResolveError::DependencyFailed`]. Returns what was taken out in stop order: the
    /// dependants as [`dependants`](Self::dependants) lists them, then `name`. Returns nothing
    /// if `name` is not in the plan.
    pub fn fail(&mut self, name: &str, reason: impl Into<String>) -> Vec<PluginName> {
        let Some(planned) = self.planned.get(name) else {
            return Vec::new();
        };
        let root = planned.candidate.name.clone();
        let mut removed = self.dependants(name);
        self.failed.insert(
            root.clone(),
            ResolveError::Runtime {
                plugin: root.clone(),
                version: planned.candidate.version.clone(),
                reason: reason.into(),
            },
        );
        self.planned.remove(name);
        // Dependencies first, so each dependant's chain extends one already recorded.
        for dependant in removed.iter().rev() {
            let Some(planned) = self.planned.remove(dependant) else {
                continue;
            };
            // Always `Some`: a dependant depends on `name` or on another dependant.
            if let Some(error) = resolve::dependency_failed(&planned.candidate, &self.failed) {
                self.failed.insert(dependant.clone(), error);
            }
        }
        for wave in &mut self.waves {
            wave.retain(|p| self.planned.contains_key(p));
        }
        // A wave can only empty out if every later wave does too, so no index shifts.
        self.waves.retain(|wave| !wave.is_empty());
        removed.push(root);
        removed
    }
}

/// The plan as text: one line per wave (`wave N: name version, ...`), then the failures.
impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.waves.is_empty() {
            writeln!(f, "nothing to load")?;
        }
        for (n, wave) in self.waves.iter().enumerate() {
            write!(f, "wave {n}:")?;
            for (i, name) in wave.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{name} {}", self.planned[name].candidate.version)?;
            }
            writeln!(f)?;
        }
        if !self.failed.is_empty() {
            writeln!(f, "failed:")?;
            for (name, error) in &self.failed {
                writeln!(f, "  {name}: {error}")?;
            }
        }
        Ok(())
    }
}
