//! `Manifest::load`: which file is read, and errors that name it.

use std::fs;
use std::path::Path;

use expect_test::{Expect, expect};
use plugd_manifest::{Manifest, ManifestFormat};

const TOML: &str = r#"
[plugin]
name = "thumbs"
version = "1.2.0"
runtime = "process"
entry = ["python3", "main.py"]
"#;

const JSON: &str = r#"{"name": "thumbs", "version": "0.9.0", "description": "Seed", "entry": ["python3", "main.py"]}"#;

/// Writes `files` into a fresh package directory, loads it and renders the outcome with the
/// directory replaced by `$DIR`.
fn check(files: &[(&str, &str)], expect: Expect) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        fs::write(dir.path().join(name), content).expect("write file");
    }
    let actual = match Manifest::load(dir.path()) {
        Ok(m) => format!(
            "ok {} {} from {}\nwarnings: {:?}",
            m.name,
            m.version,
            m.format.file_name(),
            m.warnings
        ),
        Err(e) => format!("error: {e}\npath: {:?}", e.path().map(Path::to_path_buf)),
    };
    let dir = dir.path().display().to_string();
    expect.assert_eq(&actual.replace(&dir, "$DIR"));
}

#[test]
fn load() {
    check(
        &[("plugin.toml", TOML)],
        expect![[r#"
            ok thumbs 1.2.0 from plugin.toml
            warnings: []"#]],
    );
    check(
        &[("plugin.json", JSON)],
        expect![[r#"
            ok thumbs 0.9.0 from plugin.json
            warnings: []"#]],
    );
    check(
        &[("plugin.toml", TOML), ("plugin.json", JSON)],
        expect![[r#"
            ok thumbs 1.2.0 from plugin.toml
            warnings: ["Both `plugin.toml` and `plugin.json` are in `$DIR`; `plugin.json` is ignored; hint: delete `plugin.json`"]"#]],
    );
    check(
        &[],
        expect![[r#"
            error: No `plugin.toml` or `plugin.json` in `$DIR` (nor a foreign `plugin.yaml`, `manifest.json` or `__init__.py` with `plugin_class`); hint: run `plugd new` to create a plugin there
            path: None"#]],
    );
    check(
        &[(
            "plugin.toml",
            "[plugin]\nname = \"thumbs\"\nverison = \"1\"\n",
        )],
        expect![[r#"
            error: Unknown key `verison` in `[plugin]` (in `$DIR/plugin.toml`); hint: did you mean `version`?
            path: Some("$DIR/plugin.toml")"#]],
    );
    check(
        &[("plugin.toml", "[plugin\n")],
        expect![[r#"
            error: Invalid TOML in `$DIR/plugin.toml` at line 1, column 8: unclosed table, expected `]`
            path: Some("$DIR/plugin.toml")"#]],
    );
    check(
        &[("plugin.json", "{\"name\": \"x\",}")],
        expect![[r#"
            error: Invalid JSON in `$DIR/plugin.json` at line 1, column 14: trailing comma
            path: Some("$DIR/plugin.json")"#]],
    );
}

#[test]
fn format_is_recorded() {
    let toml = Manifest::from_toml_str(TOML).expect("valid toml");
    assert_eq!(toml.format, ManifestFormat::Toml);
    let json = Manifest::from_json_str(JSON).expect("valid json");
    assert_eq!(json.format, ManifestFormat::Json);
}
