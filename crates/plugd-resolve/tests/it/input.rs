//! The tiny text format the tests describe installed packages in.
//!
//! One package per line: `NAME VERSION [@DIR] [-> DEP REQ, DEP REQ, ...]`, for example
//! `a 1.0.0 -> b ^1.0, c >=1.2, <2`. A comma followed by something other than a lower-case
//! letter continues the previous requirement, so multi-comparator requirements need no
//! quoting. `DIR` defaults to `/plugins/NAME`. Blank lines and `#` comments are skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;

use plugd_manifest::{PluginName, Version, VersionReq};
use plugd_resolve::Candidate;

/// The packages described by `input`; panics with the line number on a malformed line.
pub fn parse(input: &str) -> Vec<Candidate> {
    input
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(n, line)| parse_line(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", n + 1)))
        .collect()
}

fn parse_line(line: &str) -> Result<Candidate, String> {
    let (head, deps) = match line.split_once("->") {
        Some((head, deps)) => (head, Some(deps)),
        None => (line, None),
    };
    let mut words = head.split_whitespace();
    let name = plugin_name(words.next().ok_or("missing name")?)?;
    let version = words.next().ok_or("missing version")?;
    let version = Version::parse(version).map_err(|e| format!("version `{version}`: {e}"))?;
    let source = match words.next() {
        Some(dir) => PathBuf::from(dir.strip_prefix('@').ok_or("expected `@DIR` or `->`")?),
        None => PathBuf::from(format!("/plugins/{name}")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected `{extra}`"));
    }
    let mut dependencies = BTreeMap::new();
    for dep in requirements(deps.unwrap_or_default()) {
        let (dep, req) = dep.split_once(' ').ok_or("expected `DEP REQ`")?;
        let req = VersionReq::parse(req.trim()).map_err(|e| format!("requirement `{req}`: {e}"))?;
        if dependencies.insert(plugin_name(dep.trim())?, req).is_some() {
            return Err(format!("`{dep}` listed twice"));
        }
    }
    Ok(Candidate {
        name,
        version,
        dependencies,
        source,
    })
}

/// Splits `b ^1.0, c >=1, <2` into `b ^1.0` and `c >=1, <2`.
fn requirements(deps: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in deps.split(',') {
        let part = part.trim();
        match out.last_mut() {
            Some(last) if !part.starts_with(|c: char| c.is_ascii_lowercase()) => {
                last.push_str(", ");
                last.push_str(part);
            }
            _ if part.is_empty() => {}
            _ => out.push(part.to_owned()),
        }
    }
    out
}

fn plugin_name(s: &str) -> Result<PluginName, String> {
    PluginName::new(s).map_err(|e| e.to_string())
}
