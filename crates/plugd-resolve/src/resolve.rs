//! [`resolve`]: the resolution algorithm.
//!
//! 1. Names installed more than once fail as duplicates.
//! 2. The remaining packages form a graph (an edge per dependency on an installed name,
//!    whatever the version); Tarjan's algorithm finds its strongly connected components,
//!    dependencies first. Every member of a cyclic component fails with a cycle through it.
//! 3. Each other plugin, dependencies first, fails for its own first problem (a missing
//!    dependency or a version conflict, in dependency-name order), else because its first
//!    failed dependency fails, else loads one wave after its latest dependency.

use std::collections::BTreeMap;

use plugd_manifest::PluginName;

use crate::graph::{shortest_cycle, strongly_connected};
use crate::{Candidate, Package, Planned, Requirement, Resolution, ResolveError};

/// Resolves the installed packages into a load plan. Deterministic: the result does not
/// depend on the order of `candidates`.
pub fn resolve(candidates: Vec<Candidate>) -> Resolution {
    let mut failed = BTreeMap::new();
    let mut by_name: BTreeMap<PluginName, Vec<Candidate>> = BTreeMap::new();
    for candidate in candidates {
        by_name
            .entry(candidate.name.clone())
            .or_default()
            .push(candidate);
    }
    // `unique` is in name order, so node indices are too.
    let mut unique = Vec::new();
    for (name, mut group) in by_name {
        if group.len() == 1 {
            unique.extend(group);
        } else {
            group.sort_by(|a, b| (&a.source, &a.version).cmp(&(&b.source, &b.version)));
            let copies = group
                .into_iter()
                .map(|c| Package {
                    source: c.source,
                    version: c.version,
                })
                .collect();
            failed.insert(name.clone(), ResolveError::Duplicate { name, copies });
        }
    }

    let index: BTreeMap<&PluginName, usize> = unique
        .iter()
        .enumerate()
        .map(|(i, c)| (&c.name, i))
        .collect();
    // Dependencies are in name order, so every adjacency list is sorted.
    let adj: Vec<Vec<usize>> = unique
        .iter()
        .map(|c| {
            c.dependencies
                .keys()
                .filter_map(|d| index.get(d).copied())
                .collect()
        })
        .collect();
    let mut requirers: BTreeMap<&PluginName, Vec<Requirement>> = BTreeMap::new();
    for c in &unique {
        for (dep, req) in &c.dependencies {
            requirers.entry(dep).or_default().push(Requirement {
                plugin: c.name.clone(),
                version: c.version.clone(),
                req: req.clone(),
            });
        }
    }

    let mut wave: Vec<Option<usize>> = vec![None; unique.len()];
    for component in strongly_connected(&adj) {
        let first = component[0];
        if component.len() > 1 || adj[first].contains(&first) {
            for &member in &component {
                let inside = |v: usize| component.binary_search(&v).is_ok();
                let mut cycle = shortest_cycle(&adj, member, inside).unwrap_or_default();
                let smallest = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
                cycle.rotate_left(smallest);
                let cycle = cycle.into_iter().map(|v| unique[v].name.clone()).collect();
                failed.insert(unique[member].name.clone(), ResolveError::Cycle { cycle });
            }
            continue;
        }
        let c = &unique[first];
        let problem = own_problem(c, &unique, &index, &requirers, &failed)
            .or_else(|| dependency_failed(c, &failed));
        match problem {
            Some(error) => {
                failed.insert(c.name.clone(), error);
            }
            None => {
                // Every dependency is planned: the others made `problem` `Some`.
                wave[first] = Some(
                    adj[first]
                        .iter()
                        .filter_map(|&d| wave[d])
                        .max()
                        .map_or(0, |w| w + 1),
                );
            }
        }
    }

    let mut waves: Vec<Vec<PluginName>> = Vec::new();
    let mut planned = BTreeMap::new();
    for (candidate, wave) in unique.into_iter().zip(wave) {
        let Some(wave) = wave else { continue };
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(candidate.name.clone());
        planned.insert(candidate.name.clone(), Planned { candidate, wave });
    }
    Resolution {
        waves,
        failed,
        planned,
    }
}

/// The first problem `c` has on its own: a dependency that is not installed, or installed
/// in a version that does not satisfy the requirement. A name in `duplicates` counts as
/// installed (only duplicates fail without a node in `index`).
fn own_problem(
    c: &Candidate,
    unique: &[Candidate],
    index: &BTreeMap<&PluginName, usize>,
    requirers: &BTreeMap<&PluginName, Vec<Requirement>>,
    duplicates: &BTreeMap<PluginName, ResolveError>,
) -> Option<ResolveError> {
    for (dep, req) in &c.dependencies {
        let Some(&d) = index.get(dep) else {
            if duplicates.contains_key(dep) {
                // Installed, but failed as a duplicate: `dependency_failed` reports it.
                continue;
            }
            return Some(ResolveError::Missing {
                plugin: c.name.clone(),
                version: c.version.clone(),
                dependency: dep.clone(),
                req: req.clone(),
            });
        };
        let installed = &unique[d].version;
        if !req.matches(installed) {
            let others = requirers[dep]
                .iter()
                .filter(|r| r.plugin != c.name)
                .cloned()
                .collect();
            return Some(ResolveError::Conflict {
                plugin: c.name.clone(),
                version: c.version.clone(),
                dependency: dep.clone(),
                req: req.clone(),
                installed: installed.clone(),
                others,
            });
        }
    }
    None
}

/// `c` fails because its first failed dependency (in name order) does, if any. The chain
/// extends the dependency's own chain, so `cause` is always a root cause.
pub(crate) fn dependency_failed(
    c: &Candidate,
    failed: &BTreeMap<PluginName, ResolveError>,
) -> Option<ResolveError> {
    let (dep, error) = c
        .dependencies
        .keys()
        .find_map(|d| Some((d, failed.get(d)?)))?;
    let (path, cause) = match error {
        ResolveError::DependencyFailed { path, cause, .. } => (
            std::iter::once(dep.clone())
                .chain(path.iter().cloned())
                .collect(),
            cause.clone(),
        ),
        root => (vec![dep.clone()], Box::new(root.clone())),
    };
    Some(ResolveError::DependencyFailed {
        plugin: c.name.clone(),
        version: c.version.clone(),
        path,
        cause,
    })
}
