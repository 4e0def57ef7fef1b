//! `plugd new --lang LANG`: every template writes its files with the name filled in, a manifest
//! that loads, sources that announce the manifest's actions, and next steps in order.
//!
//! Building the wasm templates needs toolchains installed from the network, so it is not done
//! here: `examples/plugins/build.sh --scaffold-check` scaffolds, builds, serves and calls each.

use std::path::Path;

use plugd_manifest::{Manifest, RuntimeKind};

use crate::{Expect, check, plugd, read};

/// What one language's template must produce.
struct Scaffold {
    lang: &'static str,
    /// Every file written, sorted.
    files: &'static [&'static str],
    /// The file holding the actions the plugin announces.
    source: &'static str,
    runtime: RuntimeKind,
    entry: &'static [&'static str],
}

const SCAFFOLDS: &[Scaffold] = &[
    Scaffold {
        lang: "python",
        files: &["README.md", "main.py", "plugin.toml"],
        source: "main.py",
        runtime: RuntimeKind::Process,
        entry: &["python3", "main.py"],
    },
    Scaffold {
        lang: "js",
        files: &[".gitignore", "README.md", "app.js", "plugin.toml"],
        source: "app.js",
        runtime: RuntimeKind::Wasm,
        entry: &["plugin.wasm"],
    },
    Scaffold {
        lang: "c",
        files: &[
            ".gitignore",
            "README.md",
            "plugd_guest.c",
            "plugd_guest.h",
            "plugin.c",
            "plugin.toml",
        ],
        source: "plugin.c",
        runtime: RuntimeKind::Wasm,
        entry: &["plugin.wasm"],
    },
    Scaffold {
        lang: "python-wasm",
        files: &[".gitignore", "README.md", "app.py", "plugin.toml"],
        source: "app.py",
        runtime: RuntimeKind::Wasm,
        entry: &["plugin.wasm"],
    },
];

#[test]
fn new_scaffolds_every_language() {
    for scaffold in SCAFFOLDS {
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("plugins");
        let dir = plugins.join("my-plugin");
        let run = plugd(&[
            "new",
            "my-plugin",
            "--lang",
            scaffold.lang,
            "--dir",
            dir.to_str().unwrap(),
        ]);
        let serve = format!("`plugd serve --plugins {}`", plugins.display());
        check(
            &run,
            &Expect::Ok {
                stdout: &[
                    &format!("Created plugin `my-plugin` in `{}`", dir.display()),
                    &serve,
                    "`plugd call my-plugin hello '{\"name\":\"Ada\"}'`",
                ],
            },
        );
        check_next_steps(scaffold, &run.stdout, &dir);
        assert_eq!(files(&dir), scaffold.files, "{}", scaffold.lang);
        check_texts(scaffold, &dir);

        let manifest = Manifest::load(&dir)
            .unwrap_or_else(|e| panic!("{}: the manifest does not load: {e}", scaffold.lang));
        assert_eq!(manifest.name.as_str(), "my-plugin", "{}", scaffold.lang);
        assert_eq!(manifest.runtime, scaffold.runtime, "{}", scaffold.lang);
        assert_eq!(manifest.entry, scaffold.entry, "{}", scaffold.lang);
        assert!(
            manifest.warnings.is_empty(),
            "{}: {:?}",
            scaffold.lang,
            manifest.warnings
        );
        let actions: Vec<&str> = manifest.actions.iter().map(|a| a.name.as_str()).collect();
        let wanted: &[&str] = match scaffold.runtime {
            RuntimeKind::Process => &["hello"],
            RuntimeKind::Wasm => &["hello", "echo"],
        };
        assert_eq!(actions, wanted, "{}", scaffold.lang);
        // A wasm plugin announces its actions itself (`describe`); they must be the manifest's.
        let source = read(&dir.join(scaffold.source));
        for action in &manifest.actions {
            assert!(
                source.contains(&action.description),
                "{}: `{}` does not describe `{}` as {:?}",
                scaffold.lang,
                scaffold.source,
                action.name,
                action.description
            );
        }
    }
}

#[test]
fn new_rejects_an_unknown_language() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-plugin");
    check(
        &plugd(&[
            "new",
            "my-plugin",
            "--lang",
            "rust",
            "--dir",
            dir.to_str().unwrap(),
        ]),
        &Expect::Err {
            stderr: &[
                "invalid value 'rust'",
                "[possible values: python, js, c, python-wasm]",
            ],
        },
    );
    assert!(!dir.exists());
}

/// Wasm plugins are built first, with this checkout's `build.sh` and the new directory; a
/// process plugin has nothing to build.
#[track_caller]
fn check_next_steps(scaffold: &Scaffold, stdout: &str, dir: &Path) {
    let serve = stdout.find("Serve it:").expect("no serve step");
    let call = stdout.find("Call it:").expect("no call step");
    assert!(serve < call, "{stdout}");
    let build = stdout.find("Build it:");
    match scaffold.runtime {
        RuntimeKind::Process => assert_eq!(build, None, "{stdout}"),
        RuntimeKind::Wasm => {
            let script = crate::repo().join("examples/plugins/build.sh");
            let command = format!("`{} {}`", script.display(), dir.display());
            assert!(stdout.contains(&command), "missing {command}: {stdout}");
            assert!(build.is_some_and(|b| b < serve), "{stdout}");
        }
    }
}

/// The name is filled in everywhere, and the README says how to build, serve and call.
#[track_caller]
fn check_texts(scaffold: &Scaffold, dir: &Path) {
    for file in scaffold.files {
        let text = read(&dir.join(file));
        assert!(!text.is_empty(), "{}: `{file}` is empty", scaffold.lang);
        assert!(
            !text.contains("{{"),
            "{}: `{file}` has a placeholder left",
            scaffold.lang
        );
    }
    let readme = read(&dir.join("README.md"));
    for needle in [
        "# my-plugin",
        "plugd serve --plugins",
        "plugd call my-plugin hello",
    ] {
        assert!(
            readme.contains(needle),
            "{}: the README lacks {needle:?}",
            scaffold.lang
        );
    }
    if scaffold.runtime == RuntimeKind::Wasm {
        assert!(
            readme.contains("examples/plugins/build.sh path/to/my-plugin"),
            "{}: the README does not say how to build",
            scaffold.lang
        );
        assert_eq!(
            read(&dir.join(".gitignore")),
            "plugin.wasm\n.build-key\n",
            "{}",
            scaffold.lang
        );
        assert!(
            read(&dir.join(scaffold.source)).contains("my-plugin"),
            "{}: `{}` does not name the plugin",
            scaffold.lang,
            scaffold.source
        );
    }
}

/// The names of the files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn new_with_json_says_what_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("made");
    let run = plugd(&["--json", "new", "made", "--dir", dir.to_str().unwrap()]);
    run.ok();
    let made: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(made["name"], "made");
    assert_eq!(made["lang"], "python");
    for file in made["files"].as_array().unwrap() {
        assert!(dir.join(file.as_str().unwrap()).is_file(), "{file}");
    }
}
