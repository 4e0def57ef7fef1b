//! The manifest as the contract: compiled schemas validate payloads, declared defaults, and
//! announced actions compared with declared ones.

use plugd_manifest::{ActionMismatch, ActionName, Manifest, Violation};
use serde_json::json;

const MANIFEST: &str = r#"
[plugin]
name = "thumbs"
version = "1.2.0"
runtime = "process"
entry = ["python3", "main.py"]

[params]
type = "object"
properties = { size = { type = "integer", default = 128 }, mode = { enum = ["fast", "best"], default = "fast" }, dir = { type = "string" } }

[[actions]]
name = "resize"
input = { type = "object", required = ["width"], properties = { width = { type = "integer", minimum = 1 } } }

[[actions]]
name = "stats"
"#;

fn manifest() -> Manifest {
    Manifest::from_toml_str(MANIFEST).expect("valid manifest")
}

fn name(s: &str) -> ActionName {
    ActionName::new(s).expect("valid action name")
}

#[test]
fn input_schemas_validate_payloads() {
    let manifest = manifest();
    let resize = manifest.action("resize").expect("declared");
    let schema = resize.input_schema().expect("has a schema");
    assert_eq!(Some(schema.as_json()), resize.input.as_ref());
    assert_eq!(schema.validate(&json!({"width": 3})), Ok(()));
    assert_eq!(
        schema.validate(&json!({"width": 0, "height": "x"})),
        Err(vec![Violation {
            pointer: "/width".to_owned(),
            message: "0 is less than the minimum of 1".to_owned(),
        }])
    );
    assert_eq!(
        schema.validate(&json!("big")),
        Err(vec![Violation {
            pointer: String::new(),
            message: r#""big" is not of type "object""#.to_owned(),
        }])
    );
    // No schema: any payload.
    assert!(
        manifest
            .action("stats")
            .expect("declared")
            .input_schema()
            .is_none()
    );
    assert!(manifest.action("nope").is_none());
}

#[test]
fn params_schema_and_defaults() {
    let manifest = manifest();
    let params = manifest.params_schema().expect("has params");
    let defaults = manifest.default_params();
    assert_eq!(defaults, json!({"size": 128, "mode": "fast"}));
    assert_eq!(params.validate(&defaults), Ok(()));
    assert_eq!(
        params.validate(&json!({"mode": "slow"})),
        Err(vec![Violation {
            pointer: "/mode".to_owned(),
            message: r#""slow" is not one of "fast" or "best""#.to_owned(),
        }])
    );

    let bare = Manifest::from_toml_str(
        "[plugin]\nname = \"a\"\nversion = \"1.0.0\"\nruntime = \"process\"\nentry = [\"x\"]\n",
    )
    .expect("valid manifest");
    assert!(bare.params_schema().is_none());
    assert_eq!(bare.default_params(), json!({}));
}

#[test]
fn announced_actions_are_checked_against_the_declared_ones() {
    let manifest = manifest();
    assert_eq!(
        manifest.check_announced(&[name("stats"), name("resize")]),
        ActionMismatch::default()
    );
    assert!(
        manifest
            .check_announced(&[name("resize"), name("stats")])
            .is_empty()
    );
    let mismatch = manifest.check_announced(&[name("resize"), name("debug"), name("debug")]);
    assert_eq!(
        mismatch,
        ActionMismatch {
            missing: vec![name("stats")],
            extra: vec![name("debug")],
        }
    );
    assert!(!mismatch.is_empty());
}

#[test]
fn clones_share_compiled_schemas() {
    let manifest = manifest();
    let copy = manifest.clone();
    assert_eq!(copy, manifest);
    let a = manifest.action("resize").and_then(|a| a.input_schema());
    let b = copy.action("resize").and_then(|a| a.input_schema());
    assert_eq!(a, b);
}
