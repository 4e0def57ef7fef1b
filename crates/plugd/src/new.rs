//! `plugd new NAME --lang LANG`: scaffold a working plugin from the embedded templates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::ValueEnum;
use plugd_manifest::PluginName;

use crate::Lang;

/// One template file: its path inside the new plugin and its text with `{{name}}` placeholders.
struct Template {
    path: &'static str,
    text: &'static str,
}

/// Declares a template file embedded from `templates/LANG/FILE.tmpl`.
macro_rules! template {
    ($lang:literal, $path:literal) => {
        template!($lang, $path, $path)
    };
    ($lang:literal, $path:literal, $file:literal) => {
        Template {
            path: $path,
            text: include_str!(concat!("../templates/", $lang, "/", $file, ".tmpl")),
        }
    };
}

const PYTHON: &[Template] = &[
    template!("python", "plugin.toml"),
    template!("python", "main.py"),
    template!("python", "README.md"),
];

// `.gitignore` is stored as `gitignore.tmpl`: a real `.gitignore` there would configure git
// for the templates directory itself.
const JS: &[Template] = &[
    template!("js", "plugin.toml"),
    template!("js", "app.js"),
    template!("js", ".gitignore", "gitignore"),
    template!("js", "README.md"),
];

const C: &[Template] = &[
    template!("c", "plugin.toml"),
    template!("c", "plugin.c"),
    template!("c", "plugd_guest.h"),
    template!("c", "plugd_guest.c"),
    template!("c", ".gitignore", "gitignore"),
    template!("c", "README.md"),
];

const PYTHON_WASM: &[Template] = &[
    template!("python-wasm", "plugin.toml"),
    template!("python-wasm", "app.py"),
    template!("python-wasm", ".gitignore", "gitignore"),
    template!("python-wasm", "README.md"),
];

pub(crate) fn run(
    name: &str,
    lang: Lang,
    dir: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
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
        Lang::Js => JS,
        Lang::C => C,
        Lang::PythonWasm => PYTHON_WASM,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("Cannot create `{}`", dir.display()))?;
    for t in templates {
        let path = dir.join(t.path);
        let text = t.text.replace("{{name}}", name.as_str());
        std::fs::write(&path, text)
            .with_context(|| format!("Cannot write `{}`", path.display()))?;
    }
    if as_json {
        let files: Vec<&str> = templates.iter().map(|t| t.path).collect();
        crate::output::print_json(&serde_json::json!({
            "name": name.as_str(),
            "dir": dir,
            "lang": lang.to_possible_value().map(|v| v.get_name().to_owned()),
            "files": files,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("Created plugin `{name}` in `{}`", dir.display());
    print!("{}", next_steps(&name, lang, &dir));
    Ok(ExitCode::SUCCESS)
}

/// What to do after `plugd new`: build (wasm), serve the parent directory, call `hello`.
fn next_steps(name: &PluginName, lang: Lang, dir: &Path) -> String {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
        _ => ".".to_owned(),
    };
    let mut steps = Vec::new();
    let toolchain = match lang {
        Lang::Python => None,
        Lang::Js => Some(("componentize-js with npm", "`node` and `npm`")),
        Lang::C => Some(("zig and wasm-tools with pip", "`python3`")),
        Lang::PythonWasm => Some(("componentize-py with pip", "`python3`")),
    };
    if let Some((tools, needs)) = toolchain {
        steps.push(format!(
            "Build it: `{} {}`\n     (the first build installs pinned {tools} under `~/.cache/plugd-toolchains`; it needs {needs})",
            build_script(),
            dir.display()
        ));
    }
    steps.push(format!("Serve it: `plugd serve --plugins {parent}`"));
    steps.push(format!(
        "Call it: `plugd call {name} hello '{{\"name\":\"Ada\"}}'`"
    ));
    let mut text = String::from("Next steps:\n");
    for (i, step) in steps.iter().enumerate() {
        text.push_str(&format!("  {}. {step}\n", i + 1));
    }
    text
}

/// The wasm build script: this checkout's when plugd runs from one, else a placeholder.
fn build_script() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/plugins/build.sh");
    match script.canonicalize() {
        Ok(path) => path.display().to_string(),
        Err(_) => "<plugd checkout>/examples/plugins/build.sh".to_owned(),
    }
}
