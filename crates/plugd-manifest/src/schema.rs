//! Compiled JSON Schemas ([`Schema`]) for action inputs and `[params]`, and their
//! [`Violation`]s.
//!
//! A schema comes from a manifest that may be untrusted, so compiling one must not make the host
//! read a file or fetch a URL: every `$ref` (and `$dynamicRef`) must be local (start with `#`),
//! checked before compiling, and the compiler runs offline as a second line. Patterns use the
//! linear-time `regex` engine, so a hostile `pattern` cannot make a call backtrack for seconds.

use std::fmt;
use std::sync::Arc;

use jsonschema::{PatternOptions, Validator};
use serde_json::Value;

use crate::suggest::did_you_mean;

/// Most violations [`Schema::validate`] lists; the rest are counted in one last entry, so a
/// payload of a million bad items cannot make a million-line error.
pub const MAX_VIOLATIONS: usize = 100;

/// Longest message quoted from a violation before the offending value is elided from it, so an
/// error about a 10 MiB string does not repeat the string.
const MAX_MESSAGE_LEN: usize = 200;

/// How to fix a `pattern` the `regex` engine refuses.
const REGEX_HINT: &str = "patterns use Rust `regex` syntax, without look-around or back-references";

/// Size limit of one compiled `pattern` (bytes), far above any sensible input pattern.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A compiled JSON Schema (draft 2020-12 unless its `$schema` names another draft).
///
/// Compiled once when the manifest is read; cloning shares the compiled validator.
#[derive(Clone)]
pub struct Schema {
    inner: Arc<Inner>,
}

struct Inner {
    raw: Value,
    validator: Validator,
}

/// One way a value breaks a [`Schema`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer (RFC 6901) into the validated value: `""` for the value itself, `/size` or
    /// `/items/0` below it.
    pub pointer: String,
    /// What is wrong, for a person: `"abc" is not of type "integer"`.
    pub message: String,
}

/// Why a JSON value cannot be used as a [`Schema`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A `$ref` or `$dynamicRef` that names a file or URL rather than a place in the schema.
    #[error(
        "`{keyword}` to `{target}`{} is not allowed; hint: inline the schema or use a local `#/$defs/...` reference",
        at(pointer)
    )]
    ExternalRef {
        /// `$ref` or `$dynamicRef`.
        keyword: &'static str,
        /// The reference as written.
        target: String,
        /// JSON pointer to the object holding the reference, in the schema.
        pointer: String,
    },
    /// The schema is not a valid JSON Schema.
    #[error(
        "{message}{}{}",
        at(pointer),
        hint.as_deref().map(|h| format!("; hint: {h}")).unwrap_or_default()
    )]
    Invalid {
        /// What is wrong.
        message: String,
        /// JSON pointer to the offending keyword, in the schema.
        pointer: String,
        /// How to fix it, when known.
        hint: Option<String>,
    },
}

impl Schema {
    /// Compiles `raw`, refusing references to anything outside it.
    pub fn new(raw: &Value) -> Result<Schema, SchemaError> {
        lint(raw, &mut String::new())?;
        let validator = jsonschema::options()
            .offline()
            .should_validate_formats(true)
            .should_ignore_unknown_formats(false)
            .with_pattern_options(PatternOptions::regex().size_limit(REGEX_SIZE_LIMIT))
            .build(raw)
            .map_err(|e| {
                // Compiling checks the schema against its meta-schema, so the "instance" of the
                // error is the schema itself and its path points into it.
                let pointer = e.instance_path().as_str();
                let hint = (pointer.ends_with("/pattern")
                    || pointer.contains("/patternProperties/"))
                .then(|| REGEX_HINT.to_owned());
                invalid(compile_message(&e), pointer, hint)
            })?;
        Ok(Schema {
            inner: Arc::new(Inner {
                raw: raw.clone(),
                validator,
            }),
        })
    }

    /// The schema as written in the manifest.
    pub fn as_json(&self) -> &Value {
        &self.inner.raw
    }

    /// Whether `value` satisfies the schema (faster than [`Schema::validate`] when it does not).
    pub fn is_valid(&self, value: &Value) -> bool {
        self.inner.validator.is_valid(value)
    }

    /// Checks `value`, listing every violation (up to [`MAX_VIOLATIONS`], then one entry that
    /// counts the rest) in the order the validator finds them.
    pub fn validate(&self, value: &Value) -> Result<(), Vec<Violation>> {
        // The common case, a valid payload, takes the fast path that builds no errors.
        if self.inner.validator.is_valid(value) {
            return Ok(());
        }
        let mut violations = Vec::new();
        let mut more = 0usize;
        for error in self.inner.validator.iter_errors(value) {
            if violations.len() == MAX_VIOLATIONS {
                more += 1;
                continue;
            }
            let mut message = error.to_string();
            if message.len() > MAX_MESSAGE_LEN {
                message = error.masked_with("the value").to_string();
            }
            violations.push(Violation {
                pointer: error.instance_path().as_str().to_owned(),
                message,
            });
        }
        if more > 0 {
            violations.push(Violation {
                pointer: String::new(),
                message: format!("{more} more violations not listed"),
            });
        }
        Err(violations)
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schema").field(&self.inner.raw).finish()
    }
}

/// Two schemas are equal when they were compiled from equal JSON.
impl PartialEq for Schema {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner.raw == other.inner.raw
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "`{}`: {}", self.pointer, self.message)
        }
    }
}

fn at(pointer: &str) -> String {
    if pointer.is_empty() {
        String::new()
    } else {
        format!(" at `{pointer}`")
    }
}

/// Checks what the compiler would accept but a manifest must not have, or would explain badly:
/// a `$ref` or `$dynamicRef` to a file or URL, an unknown `type` or `format`. `pointer` is the
/// JSON pointer of `schema`, reused as a buffer.
fn lint(schema: &Value, pointer: &mut String) -> Result<(), SchemaError> {
    let Value::Object(map) = schema else {
        // `true`, `false`, or something the compiler will refuse with a better message.
        return Ok(());
    };
    if let Some(Value::String(uri)) = map.get("$schema")
        && !DRAFTS.contains(
            &uri.trim_end_matches('#')
                .trim_start_matches("http://")
                .trim_start_matches("https://"),
        )
    {
        return Err(invalid(
            format!("Unknown `$schema` `{uri}`"),
            pointer,
            Some("leave `$schema` out (draft 2020-12) or name a JSON Schema draft like `https://json-schema.org/draft/2020-12/schema`".to_owned()),
        ));
    }
    for keyword in ["$ref", "$dynamicRef"] {
        if let Some(Value::String(target)) = map.get(keyword)
            && !target.starts_with('#')
        {
            return Err(SchemaError::ExternalRef {
                keyword,
                target: target.clone(),
                pointer: pointer.clone(),
            });
        }
    }
    let types: Vec<&str> = match map.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if let Some(unknown) = types.iter().find(|t| !TYPES.contains(t)) {
        return Err(invalid(
            format!("Unknown type `{unknown}`"),
            &format!("{pointer}/type"),
            Some(match did_you_mean(unknown, TYPES) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("use one of {}", backticked(TYPES)),
            }),
        ));
    }
    if let Some(Value::String(format)) = map.get("format")
        && !jsonschema::options().is_known_format(jsonschema::Draft::Draft202012, format)
    {
        return Err(invalid(
            format!("Unknown format `{format}`"),
            &format!("{pointer}/format"),
            Some(match did_you_mean(format, FORMATS) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!(
                    "use one of {}, or describe the value with `pattern`",
                    backticked(FORMATS)
                ),
            }),
        ));
    }
    for (key, child) in map {
        let len = pointer.len();
        push(pointer, key);
        match key.as_str() {
            // Values, not schemas: `{"$ref": "..."}` there is just data.
            "const" | "enum" | "default" | "examples" | "dependentRequired" => {}
            // Maps from names to schemas: the names are not keywords.
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(named) = child {
                    for (name, sub) in named {
                        let len = pointer.len();
                        push(pointer, name);
                        lint(sub, pointer)?;
                        pointer.truncate(len);
                    }
                }
            }
            _ => match child {
                Value::Object(_) => lint(child, pointer)?,
                // `allOf`, `anyOf`, `oneOf`, `prefixItems`, draft-7 array `items`.
                Value::Array(items) => {
                    for (i, sub) in items.iter().enumerate() {
                        let len = pointer.len();
                        push(pointer, &i.to_string());
                        lint(sub, pointer)?;
                        pointer.truncate(len);
                    }
                }
                _ => {}
            },
        }
        pointer.truncate(len);
    }
    Ok(())
}

/// The meta-schemas a `$schema` may name, without scheme or trailing `#`.
const DRAFTS: &[&str] = &[
    "json-schema.org/draft-04/schema",
    "json-schema.org/draft-06/schema",
    "json-schema.org/draft-07/schema",
    "json-schema.org/draft/2019-09/schema",
    "json-schema.org/draft/2020-12/schema",
];

/// The JSON Schema types.
const TYPES: &[&str] = &[
    "array", "boolean", "integer", "null", "number", "object", "string",
];

/// The formats named in hints (all of draft 2020-12's except the internationalised ones).
const FORMATS: &[&str] = &[
    "date",
    "date-time",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "json-pointer",
    "regex",
    "relative-json-pointer",
    "time",
    "uri",
    "uri-reference",
    "uri-template",
    "uuid",
];

fn invalid(message: String, pointer: &str, hint: Option<String>) -> SchemaError {
    SchemaError::Invalid {
        message,
        pointer: pointer.to_owned(),
        hint,
    }
}

/// Appends one JSON pointer segment, escaped (RFC 6901).
fn push(pointer: &mut String, segment: &str) {
    pointer.push('/');
    pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
}

fn backticked(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The compiler's complaint, without the schema fragment it sometimes quotes in full.
fn compile_message(error: &jsonschema::ValidationError<'_>) -> String {
    let message = error.to_string();
    if message.len() > MAX_MESSAGE_LEN {
        error.masked_with("the value").to_string()
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn violations(schema: Value, value: Value) -> Vec<String> {
        let schema = Schema::new(&schema).expect("schema compiles");
        match schema.validate(&value) {
            Ok(()) => Vec::new(),
            Err(v) => v.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn lists_every_violation_with_its_pointer() {
        let schema = json!({
            "type": "object",
            "required": ["name", "size"],
            "properties": {
                "name": {"type": "string"},
                "size": {"type": "integer", "minimum": 16},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "additionalProperties": false,
        });
        assert_eq!(
            violations(schema.clone(), json!({"name": "a", "size": 32})),
            Vec::<String>::new()
        );
        // The validator's order follows the schema's keywords; sort to keep the test about
        // what is found.
        let mut found = violations(
            schema,
            json!({"size": 4, "tags": ["ok", 7, false], "colour": "red"}),
        );
        found.sort();
        assert_eq!(
            found,
            [
                r#""name" is a required property"#,
                r#"Additional properties are not allowed ('colour' was unexpected)"#,
                "`/size`: 4 is less than the minimum of 16",
                r#"`/tags/1`: 7 is not of type "string""#,
                r#"`/tags/2`: false is not of type "string""#,
            ]
        );
    }

    #[test]
    fn root_pointer_is_empty() {
        let schema = Schema::new(&json!({"type": "object"})).expect("compiles");
        assert_eq!(
            schema.validate(&json!([1])),
            Err(vec![Violation {
                pointer: String::new(),
                message: r#"[1] is not of type "object""#.to_owned(),
            }])
        );
    }

    #[test]
    fn long_values_are_not_quoted() {
        let long = "x".repeat(10_000);
        assert_eq!(
            violations(json!({"type": "integer"}), json!(long)),
            [r#"the value is not of type "integer""#]
        );
    }

    #[test]
    fn violations_are_capped() {
        let many: Vec<Value> = (0..250).map(|i| json!(i)).collect();
        let found = violations(
            json!({"type": "array", "items": {"type": "string"}}),
            json!(many),
        );
        assert_eq!(found.len(), MAX_VIOLATIONS + 1);
        assert_eq!(found[0], r#"`/0`: 0 is not of type "string""#);
        assert_eq!(found[MAX_VIOLATIONS], "150 more violations not listed");
    }

    #[test]
    fn formats_are_checked() {
        assert_eq!(
            violations(
                json!({"type": "string", "format": "email"}),
                json!("not an address")
            ),
            [r#""not an address" is not a "email""#]
        );
    }

    #[test]
    fn refs_must_be_local() {
        let refuse = |schema: Value| Schema::new(&schema).unwrap_err().to_string();
        assert_eq!(
            refuse(json!({"$ref": "http://example.org/s.json"})),
            "`$ref` to `http://example.org/s.json` is not allowed; hint: inline the schema or use a local `#/$defs/...` reference"
        );
        assert_eq!(
            refuse(json!({"properties": {"a/b": {"items": [{"$ref": "other.json#/x"}]}}})),
            "`$ref` to `other.json#/x` at `/properties/a~1b/items/0` is not allowed; hint: inline the schema or use a local `#/$defs/...` reference"
        );
        assert_eq!(
            refuse(json!({"$dynamicRef": "file:///etc/passwd"})),
            "`$dynamicRef` to `file:///etc/passwd` is not allowed; hint: inline the schema or use a local `#/$defs/...` reference"
        );
        // Local references work; a `$ref` inside data (`const`, `default`) is just data, and a
        // property may be called `$ref`.
        let schema = Schema::new(&json!({
            "$defs": {"size": {"type": "integer"}},
            "properties": {
                "w": {"$ref": "#/$defs/size"},
                "$ref": {"type": "string"},
                "c": {"const": {"$ref": "http://example.org"}, "default": {"$ref": "x"}},
            },
        }))
        .expect("local refs compile");
        assert!(!schema.is_valid(&json!({"w": "wide"})));
        assert!(schema.is_valid(&json!({"w": 3, "$ref": "x"})));
    }

    #[test]
    fn bad_schemas_say_where() {
        let refuse = |schema: Value| Schema::new(&schema).unwrap_err().to_string();
        let regex_hint =
            "hint: patterns use Rust `regex` syntax, without look-around or back-references";
        assert_eq!(
            refuse(json!({"properties": {"a": {"type": "strng"}}})),
            "Unknown type `strng` at `/properties/a/type`; hint: did you mean `string`?"
        );
        assert_eq!(
            refuse(json!({"type": ["string", "nul"]})),
            "Unknown type `nul` at `/type`; hint: did you mean `null`?"
        );
        assert_eq!(
            refuse(json!({"type": "string", "pattern": "(?<=a)b"})),
            format!(r#""(?<=a)b" is not a "regex" at `/pattern`; {regex_hint}"#)
        );
        assert_eq!(
            refuse(json!({"patternProperties": {"(x": {}}})),
            format!(r#""(x" is not a "regex" at `/patternProperties/(x`; {regex_hint}"#)
        );
        assert_eq!(
            refuse(json!({"$ref": "#/$defs/missing"})),
            "Pointer '/$defs/missing' does not exist"
        );
        assert_eq!(
            refuse(json!({"minimum": "3"})),
            r#""3" is not of type "number" at `/minimum`"#
        );
        assert_eq!(
            refuse(json!({"required": "name"})),
            r#""name" is not of type "array" at `/required`"#
        );
        assert_eq!(
            refuse(json!({"$schema": "http://example.org/my-meta"})),
            "Unknown `$schema` `http://example.org/my-meta`; hint: leave `$schema` out (draft 2020-12) or name a JSON Schema draft like `https://json-schema.org/draft/2020-12/schema`"
        );
        assert_eq!(
            refuse(json!({"format": "emial"})),
            "Unknown format `emial` at `/format`; hint: did you mean `email`?"
        );
        assert_eq!(
            refuse(json!({"items": {"format": "idn-hostname"}})),
            "Unknown format `idn-hostname` at `/items/format`; hint: use one of `date`, `date-time`, `duration`, `email`, `hostname`, `ipv4`, `ipv6`, `json-pointer`, `regex`, `relative-json-pointer`, `time`, `uri`, `uri-reference`, `uri-template`, `uuid`, or describe the value with `pattern`"
        );
        // Names under `properties` and `dependentRequired` lists are not keywords.
        for ok in [
            json!({"format": "date-time", "properties": {"format": {"type": "string"}}}),
            json!({"dependentRequired": {"type": ["format"]}}),
            json!({"$id": "http://example.org/root", "$ref": "#/$defs/a", "$defs": {"a": {}}}),
            json!({"$anchor": "a", "$ref": "#a"}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]}),
            json!(true),
        ] {
            assert!(Schema::new(&ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn clones_share_the_compiled_validator() {
        // The host keeps schemas in shared state and validates on any task.
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Schema>();
        let schema = Schema::new(&json!({"type": "object"})).expect("compiles");
        let copy = schema.clone();
        assert!(Arc::ptr_eq(&schema.inner, &copy.inner));
        assert_eq!(schema, copy);
        assert_eq!(
            format!("{schema:?}"),
            r#"Schema(Object {"type": String("object")})"#
        );
    }
}
