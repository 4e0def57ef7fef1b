//! `plugd migrate DIR [--to OUT] [--sign KEY]`: turns a package written for another plugin
//! system (xcore, class-based, image tool) into a native `plugin.toml` package.
//!
//! The plugin's code is not touched: the native manifest still starts it through the SDK's
//! compatibility runner (`python3 -m plugd.compat ...`). What changes is that the manifest is
//! now plugd's own, so it can be read, reviewed, edited (declare `[[actions]]`, `[params]`) and
//! signed like any other. Every field that was dropped or changed is printed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use plugd_manifest::{Dialect, Foreign, Manifest, TOML_MANIFEST};
use serde_json::{Map, Value, json};

/// The sections of the written `plugin.toml`, in the order a reader expects them.
const SECTIONS: [&str; 7] = [
    "plugin",
    "dependencies",
    "permissions",
    "limits",
    "events",
    "params",
    "python",
];

pub(crate) fn migrate(
    dir: &Path,
    to: Option<&Path>,
    sign_key: Option<&Path>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(dir)?;
    let Some(foreign) = &manifest.foreign else {
        bail!(
            "`{}` is already a plugd package (`{}`); hint: `plugd migrate` converts xcore, class-based and image-tool packages",
            dir.display(),
            manifest.format.file_name()
        );
    };
    // Everything that can fail before a file changes goes first: the key, the text.
    let key = sign_key.map(plugd_trust::SecretKey::load).transpose()?;
    let text = render(foreign)?;
    let out = match to {
        Some(out) => {
            copy_package(dir, out, foreign)?;
            write_manifest(out, &text, &manifest)?;
            out.to_owned()
        }
        None => {
            convert_in_place(dir, foreign, &text, &manifest)?;
            dir.to_owned()
        }
    };
    let toml_path = out.join(TOML_MANIFEST);
    let signed = match &key {
        Some(key) => Some(plugd_trust::sign_package(&out, key)?),
        None => None,
    };
    let review = review(&manifest, foreign);
    if as_json {
        let changes: Vec<Value> = foreign
            .changes
            .iter()
            .map(|c| json!({"field": c.field, "note": c.note}))
            .collect();
        println!(
            "{}",
            json!({
                "plugin": manifest.name.as_str(),
                "original_name": foreign.original_name,
                "dialect": foreign.dialect.label(),
                "from": foreign.file,
                "manifest": toml_path,
                "changes": changes,
                "review": review,
                "signed_by": signed.as_ref().map(|s| s.key_id.to_string()),
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Migrated the {} plugin `{}` (`{}`) from `{}`: wrote `{}`",
        foreign.dialect.label(),
        foreign.original_name,
        manifest.name,
        foreign.file,
        toml_path.display()
    );
    if !foreign.changes.is_empty() {
        println!("\nChanged or dropped:");
        for change in &foreign.changes {
            println!("  - {}: {}", change.field, change.note);
        }
    }
    println!("\nReview by hand:");
    for item in &review {
        println!("  - {item}");
    }
    if let Some(info) = signed {
        println!(
            "\nSigned `{} {}` with key {}; wrote `{}`",
            info.plugin,
            info.version,
            info.key_id,
            info.path.display()
        );
    } else if out.join(plugd_trust::SIGNATURE_FILE).exists() {
        println!(
            "\nIts old `plugin.sig` no longer matches: plugd refuses the package until it is signed again; hint: `plugd sign {} --key KEY`",
            out.display()
        );
    } else {
        println!(
            "\nNot signed: it runs as an untrusted plugin (no network, no host variables); hint: `plugd sign {} --key KEY`",
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `plugin.toml` into `out` and checks that it reads back as exactly the translation.
fn write_manifest(out: &Path, text: &str, translated: &Manifest) -> anyhow::Result<()> {
    let path = out.join(TOML_MANIFEST);
    fs::write(&path, text).with_context(|| format!("Cannot write `{}`", path.display()))?;
    check_reads_back(out, translated)
}

/// The package in `dir` reads as a native manifest that says exactly what `translated` says:
/// nothing added on the way to the file (what is signed is what was reviewed).
fn check_reads_back(dir: &Path, translated: &Manifest) -> anyhow::Result<()> {
    let native = Manifest::load(dir).context("The written `plugin.toml` does not read back")?;
    let same = native.format == plugd_manifest::ManifestFormat::Toml
        && native.name == translated.name
        && native.version == translated.version
        && native.description == translated.description
        && native.authors == translated.authors
        && native.kind == translated.kind
        && native.runtime == translated.runtime
        && native.entry == translated.entry
        && native.dependencies == translated.dependencies
        && native.permissions == translated.permissions
        && native.limits == translated.limits
        && native.params == translated.params
        && native.actions == translated.actions
        && native.events == translated.events
        && native.python == translated.python
        && native.http == translated.http;
    if !same {
        bail!(
            "The written `plugin.toml` in `{}` does not say what the translation says; nothing was signed; hint: report this as a bug of `plugd migrate`",
            dir.display()
        );
    }
    Ok(())
}

/// Converts `dir` itself: writes `plugin.toml`, moves the foreign manifest aside to `FILE.orig`
/// (an image tool's `__init__.py` is code and stays), checks the result reads back, and only
/// then removes a shared-key HMAC `plugin.sig` (meaningless to plugd, and refused). On any
/// failure the package is put back as it was.
fn convert_in_place(
    dir: &Path,
    foreign: &Foreign,
    text: &str,
    translated: &Manifest,
) -> anyhow::Result<()> {
    let toml_path = dir.join(TOML_MANIFEST);
    let aside = dir.join(format!("{}.orig", foreign.file));
    for existing in [&toml_path, &aside] {
        if existing.exists() {
            bail!(
                "`{}` already exists; hint: remove it, or pass `--to OUT`",
                existing.display()
            );
        }
    }
    fs::write(&toml_path, text)
        .with_context(|| format!("Cannot write `{}`", toml_path.display()))?;
    let moved = if foreign.dialect == Dialect::ImageTool {
        None
    } else {
        let from = dir.join(foreign.file);
        match fs::rename(&from, &aside) {
            Ok(()) => Some((from, aside)),
            Err(e) => {
                let _ = fs::remove_file(&toml_path);
                return Err(e).with_context(|| format!("Cannot rename `{}`", from.display()));
            }
        }
    };
    if let Err(e) = check_reads_back(dir, translated) {
        let _ = fs::remove_file(&toml_path);
        if let Some((from, aside)) = moved {
            let _ = fs::rename(aside, from);
        }
        return Err(e.context("The package is unchanged"));
    }
    remove_foreign_signature(dir)
}

/// The native tree as `plugin.toml` text, sections in a fixed order, with a header.
fn render(foreign: &Foreign) -> anyhow::Result<String> {
    // The original name is the package's own text: quoted and escaped, it cannot end the
    // comment line (a newline in it would otherwise start tables of its own).
    let mut text = format!(
        "# Migrated by `plugd migrate` from the {} manifest `{}` of {:?}.\n# The code is unchanged: `entry` runs it through plugd's compatibility runner.\n\n",
        foreign.dialect.label(),
        foreign.file,
        foreign.original_name
    );
    let mut rest: Map<String, Value> = foreign.native.clone();
    if let Some(schema) = rest.remove("schema") {
        text.push_str(&format!("schema = {schema}\n\n"));
    }
    for section in SECTIONS {
        if let Some(value) = rest.remove(section) {
            let mut one = Map::new();
            one.insert(section.to_owned(), value);
            text.push_str(&toml::to_string(&one).context("The manifest is not TOML")?);
            text.push('\n');
        }
    }
    debug_assert!(rest.is_empty(), "unrendered sections: {rest:?}");
    Ok(text)
}

/// What the operator should look at after migrating.
fn review(manifest: &Manifest, foreign: &Foreign) -> Vec<String> {
    let mut items = vec![
        "The plugin's actions are whatever its code handles: add an `[[actions]]` entry per action to make them a contract (with an `input` schema to check payloads).".to_owned(),
    ];
    if !manifest.permissions.env.is_empty() {
        items.push(format!(
            "It reads host variables {}: they reach it only once the package is signed and the operator allows them.",
            manifest
                .permissions
                .env
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    items.push(
        "Files under the package's `data/` are copied into the plugin's data dir on its first start; `data/` then means that dir, and the package itself is read-only.".to_owned(),
    );
    match foreign.dialect {
        Dialect::Xcore => {}
        Dialect::ClassBased => {
            items.push(
                "It subscribes to every event topic (`[events] subscribe = [\"*\"]`): narrow it to the topics its code subscribes to.".to_owned(),
            );
            items.push(
                "`get_env_config` reads host variables only through `permissions.env`, which is empty: list the names it reads (`PLUGIN_KEY` and `KEY`) there, and sign the package.".to_owned(),
            );
        }
        Dialect::ImageTool => items.push(
            "Give it a `version` and declare its params model as a `[params]` JSON Schema, so that the host checks changes; `project.*` database calls are not available.".to_owned(),
        ),
    }
    if manifest.dependencies.is_empty() {
        return items;
    }
    items.push(format!(
        "It depends on {}: migrate those plugins too, or install plugd plugins of those names.",
        manifest
            .dependencies
            .keys()
            .map(|d| format!("`{d}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    items
}

/// Copies the package to `out` (which must not exist or be empty), without the foreign
/// manifest (the code of an image-tool `__init__.py` is kept) and without `plugin.sig`.
fn copy_package(dir: &Path, out: &Path, foreign: &Foreign) -> anyhow::Result<()> {
    let source = dir
        .canonicalize()
        .with_context(|| format!("Cannot read `{}`", dir.display()))?;
    let target = resolved(out)?;
    if target.starts_with(&source) {
        bail!(
            "`{}` is inside the package `{}`; hint: pass a directory outside it to `--to`",
            out.display(),
            dir.display()
        );
    }
    if out.exists() && fs::read_dir(out)?.next().is_some() {
        bail!(
            "`{}` exists and is not empty; hint: pass a new directory to `--to`",
            out.display()
        );
    }
    let skip_top: Vec<&str> = match foreign.dialect {
        Dialect::ImageTool => vec![plugd_trust::SIGNATURE_FILE],
        _ => vec![foreign.file, plugd_trust::SIGNATURE_FILE],
    };
    let mut pending: Vec<(PathBuf, PathBuf)> = vec![(dir.to_owned(), out.to_owned())];
    while let Some((from, to)) = pending.pop() {
        fs::create_dir_all(&to).with_context(|| format!("Cannot create `{}`", to.display()))?;
        for entry in fs::read_dir(&from)? {
            let entry = entry?;
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if from == dir && skip_top.contains(&name_str.as_ref()) {
                continue;
            }
            if name_str == "__pycache__" {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push((entry.path(), to.join(&name)));
            } else if kind.is_file() {
                fs::copy(entry.path(), to.join(&name))
                    .with_context(|| format!("Cannot copy `{}`", entry.path().display()))?;
            } else {
                bail!(
                    "`{}` is not a regular file or directory; plugd packages hold only those; hint: replace it with a copy",
                    entry.path().display()
                );
            }
        }
    }
    Ok(())
}

/// Where `path` is or would be: its nearest existing ancestor resolved (symlinks followed),
/// with the rest of the path after it.
fn resolved(path: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("Cannot resolve `{}`", path.display()))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        rest.push(existing.file_name().unwrap_or_default().to_owned());
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let mut out = existing
        .canonicalize()
        .with_context(|| format!("Cannot resolve `{}`", existing.display()))?;
    out.extend(rest.iter().rev());
    Ok(out)
}

/// Removes a `plugin.sig` that is not plugd's (an xcore HMAC); a plugd signature is kept and
/// will no longer verify, which `plugd verify` says.
fn remove_foreign_signature(dir: &Path) -> anyhow::Result<()> {
    let sig = dir.join(plugd_trust::SIGNATURE_FILE);
    match fs::read_to_string(&sig) {
        Ok(text) if !text.contains("key_id") => {
            fs::remove_file(&sig).with_context(|| format!("Cannot remove `{}`", sig.display()))
        }
        _ => Ok(()),
    }
}
