//! `plugd new NAME --lang LANG`: scaffold a working plugin from the embedded templates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use plugd_manifest::PluginName;

use crate::Lang;

/// One template file: its path inside the new plugin and its text with `{{name}}` placeholders.
struct Template {
    path: &'static str,
    text: &'static str,
}

const PYTHON: &[Template] = &[
    Template {
        path: "plugin.toml",
        text: include_str!("../templates/python/plugin.toml.tmpl"),
    },
    Template {
        path: "main.py",
        text: include_str!("../templates/python/main.py.tmpl"),
    },
    Template {
        path: "README.md",
        text: include_str!("../templates/python/README.md.tmpl"),
    },
];

pub(crate) fn run(name: &str, lang: Lang, dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let name = PluginName::new(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name.as_str()));
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "`{}` already exists and is not empty; hint: pick another name or `--dir`",
            dir.display()
        );
    }
    let templates = match lang {
        Lang::Python => PYTHON,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("Cannot create `{}`", dir.display()))?;
    for t in templates {
        let path = dir.join(t.path);
        let text = t.text.replace("{{name}}", name.as_str());
        std::fs::write(&path, text)
            .with_context(|| format!("Cannot write `{}`", path.display()))?;
    }
    println!("Created plugin `{name}` in `{}`", dir.display());
    println!("Next: put it in your plugins directory and run `plugd serve --plugins <dir>`,");
    println!("then `plugd call {name} hello '{{\"name\":\"Ada\"}}'`.");
    Ok(ExitCode::SUCCESS)
}
