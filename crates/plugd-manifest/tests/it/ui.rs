//! Golden tests: every `tests/ui/NAME.toml` or `NAME.json` is parsed; an accepted manifest is
//! compared with `NAME.out` (a readable dump), a rejected one with `NAME.err` (the exact
//! message). `UPDATE_EXPECT=1 cargo test -p plugd-manifest` rewrites them.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use expect_test::expect_file;
use plugd_manifest::{
    ActionSpec, Change, Events, Foreign, Http, Limits, Manifest, ManifestError, Permissions, Rate,
    Schema,
};

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

fn inputs() -> Vec<PathBuf> {
    let mut inputs: Vec<PathBuf> = fs::read_dir(ui_dir())
        .expect("tests/ui is readable")
        .map(|entry| entry.expect("tests/ui entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("toml" | "json")
            )
        })
        .collect();
    inputs.sort();
    inputs
}

fn parse(input: &Path) -> Result<Manifest, ManifestError> {
    let src = fs::read_to_string(input).expect("input is readable");
    match input.extension().and_then(|e| e.to_str()) {
        Some("toml") => Manifest::from_toml_str(&src),
        _ => Manifest::from_json_str(&src),
    }
}

/// Parses `input` and compares the outcome with the golden file beside it.
fn check(input: &Path) {
    let (actual, kept, stale) = match parse(input) {
        Ok(manifest) => (dump(&manifest), "out", "err"),
        Err(e) => (format!("{e}\n"), "err", "out"),
    };
    let stale = input.with_extension(stale);
    if stale.exists() {
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            fs::remove_file(&stale).expect("stale golden file is removable");
        } else {
            panic!(
                "{} exists, but the manifest now gives a `.{kept}` result:\n{actual}",
                stale.display()
            );
        }
    }
    expect_file![input.with_extension(kept)].assert_eq(&actual);
}

#[test]
fn golden_files() {
    let inputs = inputs();
    assert!(inputs.len() >= 20, "expected the golden inputs in tests/ui");
    let mut stems = BTreeSet::new();
    for input in &inputs {
        let stem = input.file_stem().expect("file has a stem").to_owned();
        assert!(
            stems.insert(stem),
            "{} shares its golden file with another input; rename one",
            input.display()
        );
        check(input);
    }
}

/// Every rejection and warning follows the message style: one line, a capital first, no
/// trailing period.
#[test]
fn messages_follow_the_style() {
    let mut messages = Vec::new();
    for input in inputs() {
        match parse(&input) {
            Ok(manifest) => messages.extend(manifest.warnings),
            Err(e) => messages.push(e.to_string()),
        }
    }
    assert!(messages.len() >= 20);
    for message in messages {
        assert!(
            message.starts_with(|c: char| c.is_uppercase() || c == '`'),
            "{message}"
        );
        assert!(!message.ends_with('.'), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}

/// A stable, readable dump of every field. The exhaustive destructuring makes a new public field
/// a compile error here until it is dumped too (`..` covers only the private compiled schemas,
/// which must be the raw ones compiled).
pub(crate) fn dump(manifest: &Manifest) -> String {
    assert_eq!(
        manifest.params_schema().map(Schema::as_json),
        manifest.params.as_ref()
    );
    for action in &manifest.actions {
        assert_eq!(
            action.input_schema().map(Schema::as_json),
            action.input.as_ref()
        );
    }
    let Manifest {
        schema,
        name,
        version,
        description,
        authors,
        kind,
        runtime,
        entry,
        dependencies,
        permissions,
        limits,
        params,
        actions,
        events,
        python,
        http,
        format,
        warnings,
        foreign,
        ..
    } = manifest;
    let Permissions {
        fs_read,
        net_connect,
        env,
        services,
        app_services,
        imports,
    } = permissions;
    let Limits {
        memory,
        disk,
        storage,
        cpu,
        call_timeout,
        concurrency,
        tasks,
        task_timeout,
        rate,
    } = limits;
    let Events { subscribe } = events;

    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "format: {format}");
    let _ = writeln!(w, "schema: {schema}");
    let _ = writeln!(w, "name: {name}");
    let _ = writeln!(w, "version: {version}");
    let _ = writeln!(w, "description: {description:?}");
    let _ = writeln!(w, "authors: {authors:?}");
    let _ = writeln!(w, "kind: {kind}");
    let _ = writeln!(w, "runtime: {runtime}");
    let _ = writeln!(w, "entry: {entry:?}");
    let _ = writeln!(w, "dependencies:");
    for (dep, req) in dependencies {
        let _ = writeln!(w, "  {dep}: {req}");
    }
    let _ = writeln!(w, "permissions:");
    let _ = writeln!(w, "  fs.read: {fs_read:?}");
    let _ = writeln!(w, "  net.connect: {net_connect:?}");
    let _ = writeln!(w, "  env: {env:?}");
    let services: Vec<&str> = services.iter().map(|s| s.as_str()).collect();
    let _ = writeln!(w, "  services: {services:?}");
    let _ = writeln!(w, "  app services: {app_services:?}");
    let _ = writeln!(w, "  imports: {imports:?}");
    let _ = writeln!(w, "limits:");
    let _ = writeln!(w, "  memory: {memory} bytes");
    let _ = writeln!(w, "  disk: {disk} bytes");
    let _ = writeln!(w, "  storage: {storage} bytes");
    let _ = writeln!(w, "  cpu: {cpu:?}");
    let _ = writeln!(w, "  call_timeout: {call_timeout:?}");
    let _ = writeln!(w, "  concurrency: {concurrency}");
    let _ = writeln!(w, "  tasks: {tasks}");
    let _ = writeln!(w, "  task_timeout: {task_timeout:?}");
    if let Some(Rate { calls, per }) = rate {
        let _ = writeln!(w, "  rate: {calls} per {per:?}");
    }
    match params {
        Some(params) => {
            let _ = writeln!(w, "params: {params}");
        }
        None => {
            let _ = writeln!(w, "params: none");
        }
    }
    let _ = writeln!(w, "default params: {}", manifest.default_params());
    let _ = writeln!(w, "python requirements: {:?}", python.requirements);
    match http {
        Some(Http {
            mount,
            expose,
            health,
        }) => {
            let _ = writeln!(
                w,
                "http: mount {mount:?}, expose {expose:?}, health {health:?}"
            );
        }
        None => {
            let _ = writeln!(w, "http: none");
        }
    }
    let _ = writeln!(w, "actions:");
    for ActionSpec {
        name,
        description,
        input,
        hooks,
        ..
    } in actions
    {
        let _ = writeln!(w, "  - name: {name}");
        let _ = writeln!(w, "    description: {description:?}");
        match input {
            Some(input) => {
                let _ = writeln!(w, "    input: {input}");
            }
            None => {
                let _ = writeln!(w, "    input: none");
            }
        }
        let _ = writeln!(w, "    hooks: {hooks:?}");
    }
    let _ = writeln!(w, "events:");
    let _ = writeln!(w, "  subscribe: {subscribe:?}");
    let _ = writeln!(w, "warnings:");
    for warning in warnings {
        let _ = writeln!(w, "  - {warning}");
    }
    if let Some(Foreign {
        dialect,
        file,
        original_name,
        execution_mode,
        changes,
        ..
    }) = foreign
    {
        let _ = writeln!(w, "foreign: {} from `{file}`", dialect.label());
        let _ = writeln!(w, "  original name: {original_name:?}");
        let _ = writeln!(w, "  execution_mode: {execution_mode:?}");
        let _ = writeln!(w, "  changes:");
        for Change { field, note } in changes {
            let _ = writeln!(w, "    - {field}: {note}");
        }
    }
    out
}
