//! `docs/manifest.md` against the parser: its key tables list exactly the keys the parser
//! accepts, and its examples parse (or are refused with exactly the message shown).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use plugd_manifest::{Manifest, ManifestFormat};

/// What a `toml fragment` or `toml refused` example is added to.
const HEADER: &str = "[plugin]\nname = \"docs\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"python3\", \"main.py\"]\n\n";

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/manifest.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The backticked first cells of the table whose header's first cell is `header`.
fn table_keys(doc: &str, header: &str) -> Vec<String> {
    let mut lines = doc.lines().skip_while(|l| {
        !l.trim_start_matches('|')
            .trim_start()
            .starts_with(&format!("{header} |"))
    });
    assert!(
        lines.next().is_some(),
        "no table headed `{header}` in docs/manifest.md"
    );
    lines
        .skip(1) // the |---| row
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cell = row.split('|').nth(1).unwrap_or_default().trim();
            cell.strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .unwrap_or_else(|| panic!("first cell of `{row}` is not one backticked key"))
                .to_owned()
        })
        .collect()
}

/// Fenced blocks as (info string, body).
fn blocks(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in doc.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some("")) => out.extend(open.take()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unclosed code block in docs/manifest.md");
    out
}

/// Whether the parser knows `key` (dotted) in `format`: a manifest holding it is not refused
/// for an unknown key (it may be refused for its placeholder value).
fn parser_accepts(format: ManifestFormat, key: &str) -> bool {
    let mut root = match format {
        ManifestFormat::Toml => serde_json::json!({
            "plugin": {"name": "docs", "version": "1.0.0", "runtime": "process", "entry": ["x"]},
        }),
        _ => serde_json::json!({"name": "docs", "version": "1.0.0"}),
    };
    let (table, leaf) = match key.split_once('.') {
        Some((table, leaf)) => (Some(table), leaf),
        None => (None, key),
    };
    let placeholder = serde_json::json!("placeholder");
    match table {
        None => {
            root[leaf] = placeholder;
        }
        Some("actions") => {
            root["actions"] = serde_json::json!([{"name": "a", leaf: placeholder}]);
        }
        Some(table) => {
            // `permissions.fs.read` is the table `fs` holding `read` in TOML.
            let (inner, leaf) = leaf
                .split_once('.')
                .map_or((None, leaf), |(i, l)| (Some(i), l));
            let slot = &mut root[table];
            let slot = match inner {
                Some(inner) => &mut slot[inner],
                None => slot,
            };
            slot[leaf] = placeholder;
        }
    }
    let result = match format {
        ManifestFormat::Toml => {
            let text = toml::to_string(&root).expect("serialisable as TOML");
            Manifest::from_toml_str(&text)
        }
        _ => Manifest::from_json_str(&root.to_string()),
    };
    match result {
        Ok(_) => true,
        // Not "Unknown plugin kind `placeholder`", which is about the value.
        Err(e) => !["Unknown key", "Unknown table", "Unknown top-level key"]
            .iter()
            .any(|p| e.to_string().starts_with(p)),
    }
}

#[test]
fn key_tables_match_the_parser() {
    let doc = doc();
    for (format, header) in [
        (ManifestFormat::Toml, "Key in `plugin.toml`"),
        (ManifestFormat::Json, "Key in `plugin.json`"),
    ] {
        let documented = table_keys(&doc, header);
        let unique: BTreeSet<&String> = documented.iter().collect();
        assert_eq!(
            unique.len(),
            documented.len(),
            "a key is documented twice in `{header}`"
        );

        let known = Manifest::known_keys(format);
        // The JSON table lists top-level keys; the keys inside them are those of `plugin.toml`.
        let expected: BTreeSet<String> = known
            .iter()
            .map(|k| match format {
                ManifestFormat::Json => k.split('.').next().unwrap_or(k).to_owned(),
                _ => k.clone(),
            })
            .collect();
        let expected: BTreeSet<&String> = expected.iter().collect();
        let missing: Vec<_> = expected.difference(&unique).collect();
        let unknown: Vec<_> = unique.difference(&expected).collect();
        assert!(
            missing.is_empty(),
            "accepted but not in `{header}`: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "in `{header}` but not accepted: {unknown:?}"
        );

        for key in &known {
            assert!(
                parser_accepts(format, key),
                "the parser refuses `{key}` as unknown"
            );
        }
    }
    // The check itself can tell: a made-up key is refused.
    assert!(!parser_accepts(ManifestFormat::Toml, "limits.bogus"));
    assert!(!parser_accepts(ManifestFormat::Toml, "plugin.verison"));
    assert!(!parser_accepts(ManifestFormat::Json, "bogus"));
}

#[test]
fn examples_parse() {
    let blocks = blocks(&doc());
    let mut checked = 0;
    for (i, (info, body)) in blocks.iter().enumerate() {
        let outcome = match info.as_str() {
            "toml" => Manifest::from_toml_str(body),
            "json" => Manifest::from_json_str(body),
            "toml fragment" | "toml refused" => Manifest::from_toml_str(&format!("{HEADER}{body}")),
            _ => continue,
        };
        checked += 1;
        if info == "toml refused" {
            let (next_info, message) = blocks
                .get(i + 1)
                .expect("a refusal is followed by its message");
            assert_eq!(
                next_info, "text",
                "a `toml refused` block is followed by a `text` block"
            );
            let err = outcome.expect_err(&format!("documented as refused:\n{body}"));
            assert_eq!(err.to_string(), message.trim_end(), "for:\n{body}");
        } else if let Err(e) = outcome {
            panic!("docs/manifest.md example does not parse: {e}\n{body}");
        }
    }
    assert!(
        checked >= 8,
        "expected the examples of docs/manifest.md, found {checked}"
    );
}
