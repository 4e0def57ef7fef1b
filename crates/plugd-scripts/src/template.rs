//! Templates: script text with `{{ variable }}` placeholders (rendered with minijinja, strict
//! about undefined names) and typed variables. Every missing or ill-typed value is reported at
//! once.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The type of a template variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "choices")]
pub enum VarType {
    /// Any text.
    String,
    /// A whole number.
    Int,
    /// A number.
    Float,
    /// `true` or `false`.
    Bool,
    /// One of the listed strings.
    Enum(Vec<String>),
}

impl std::fmt::Display for VarType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VarType::String => f.write_str("string"),
            VarType::Int => f.write_str("int"),
            VarType::Float => f.write_str("float"),
            VarType::Bool => f.write_str("bool"),
            VarType::Enum(choices) => write!(f, "enum({})", choices.join("|")),
        }
    }
}

/// One template variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Var {
    /// Its name, as used in `{{ name }}`.
    pub name: String,
    /// Its type.
    #[serde(flatten)]
    pub ty: VarType,
    /// Whether a value must be given (a default makes that moot).
    #[serde(default)]
    pub required: bool,
    /// The value when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What it means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Parses `NAME:TYPE[:required][=DEFAULT][#DESCRIPTION]`, TYPE one of `string`, `int`,
/// `float`, `bool`, `enum(a|b|c)`: `input_format:string:required`, `limit:int=10#Rows to read`.
pub fn parse_var(spec: &str) -> Result<Var, String> {
    let hint = "hint: write `NAME:TYPE[:required][=DEFAULT][#DESCRIPTION]`, TYPE one of string, int, float, bool, enum(a|b)";
    let (spec, description) = match spec.split_once('#') {
        Some((s, d)) => (s, Some(d.trim().to_owned()).filter(|d| !d.is_empty())),
        None => (spec, None),
    };
    let (head, default) = match spec.split_once('=') {
        Some((h, d)) => (h, Some(d)),
        None => (spec, None),
    };
    let mut parts = head.split(':');
    let name = parts.next().unwrap_or_default().trim();
    let ty = parts
        .next()
        .ok_or_else(|| format!("Variable `{spec}` has no type; {hint}"))?
        .trim();
    let required = match parts.next().map(str::trim) {
        None => false,
        Some("required") => true,
        Some(other) => return Err(format!("Variable `{name}`: unknown flag `{other}`; {hint}")),
    };
    if parts.next().is_some() {
        return Err(format!("Variable `{spec}` has too many `:` parts; {hint}"));
    }
    let ty = match ty {
        "string" | "str" => VarType::String,
        "int" => VarType::Int,
        "float" => VarType::Float,
        "bool" => VarType::Bool,
        t if t.starts_with("enum(") && t.ends_with(')') => {
            let choices: Vec<String> = t[5..t.len() - 1]
                .split('|')
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect();
            if choices.is_empty() {
                return Err(format!("Variable `{name}`: an enum needs choices; {hint}"));
            }
            VarType::Enum(choices)
        }
        other => return Err(format!("Variable `{name}`: unknown type `{other}`; {hint}")),
    };
    let mut var = Var {
        name: name.to_owned(),
        ty,
        required,
        default: None,
        description,
    };
    if let Some(text) = default {
        var.default = Some(
            coerce(&var, &Value::String(text.to_owned()))
                .map_err(|e| format!("Variable `{name}`: its default {e}"))?,
        );
    }
    validate_vars(std::slice::from_ref(&var))?;
    Ok(var)
}

/// Checks names (identifiers, no duplicates) and defaults.
pub fn validate_vars(vars: &[Var]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for var in vars {
        let ok = var
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && var
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!(
                "Variable name `{}` is not an identifier; hint: use letters, digits and `_`",
                var.name
            ));
        }
        if !seen.insert(&var.name) {
            return Err(format!("Variable `{}` is declared twice", var.name));
        }
        if let Some(default) = &var.default {
            coerce(var, default)
                .map_err(|e| format!("Variable `{}`: its default {e}", var.name))?;
        }
    }
    Ok(())
}

/// A value for `var`: JSON of the right type, or a string (from `--set k=v`) converted to it.
fn coerce(var: &Var, value: &Value) -> Result<Value, String> {
    let text = value.as_str();
    let article = if matches!(var.ty, VarType::Int | VarType::Enum(_)) {
        "an"
    } else {
        "a"
    };
    let bad = || format!("`{value}` is not {article} {}", var.ty);
    Ok(match &var.ty {
        VarType::String => match value {
            Value::String(_) => value.clone(),
            Value::Number(_) | Value::Bool(_) => Value::String(value.to_string()),
            _ => return Err(bad()),
        },
        VarType::Int => match (value, text) {
            (Value::Number(n), _) if n.is_i64() || n.is_u64() => value.clone(),
            (_, Some(t)) => t
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| bad())?,
            _ => return Err(bad()),
        },
        VarType::Float => match (value, text) {
            (Value::Number(_), _) => value.clone(),
            (_, Some(t)) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Value::from)
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        },
        VarType::Bool => match (value, text) {
            (Value::Bool(_), _) => value.clone(),
            (_, Some("true" | "yes" | "1")) => Value::Bool(true),
            (_, Some("false" | "no" | "0")) => Value::Bool(false),
            _ => return Err(bad()),
        },
        VarType::Enum(choices) => match text {
            Some(t) if choices.iter().any(|c| c == t) => value.clone(),
            _ => return Err(format!("`{value}` is not one of {}", choices.join(", "))),
        },
    })
}

/// Renders `source` with `values` (JSON values, or strings to convert), filling defaults.
/// Fails with every problem at once: unknown names, missing required values, ill-typed values,
/// placeholders that name no variable, template syntax errors.
pub fn render(
    source: &str,
    vars: &[Var],
    values: &Map<String, Value>,
) -> Result<String, Vec<String>> {
    let mut problems = Vec::new();
    for name in values.keys() {
        if !vars.iter().any(|v| &v.name == name) {
            problems.push(format!(
                "`{name}` is not a variable of this template (it has {})",
                if vars.is_empty() {
                    "none".to_owned()
                } else {
                    vars.iter()
                        .map(|v| format!("`{}`", v.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
    }
    let mut context = Map::new();
    for var in vars {
        match values.get(&var.name) {
            Some(value) => match coerce(var, value) {
                Ok(v) => {
                    context.insert(var.name.clone(), v);
                }
                Err(e) => problems.push(format!("`{}`: {e}", var.name)),
            },
            None => match &var.default {
                Some(d) => {
                    context.insert(var.name.clone(), d.clone());
                }
                None if var.required => problems.push(format!(
                    "`{}` ({}) is required; hint: `--set {}=...`",
                    var.name, var.ty, var.name
                )),
                None => {
                    context.insert(var.name.clone(), Value::Null);
                }
            },
        }
    }
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // Scripts are Python, not HTML: no escaping, and the text keeps its last newline.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.add_filter("py", py_filter);
    let template = match env.template_from_str(source) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("The template does not parse: {e}"));
            return Err(problems);
        }
    };
    let mut undeclared: Vec<String> = template.undeclared_variables(false).into_iter().collect();
    undeclared.sort();
    for name in undeclared {
        if !vars.iter().any(|v| v.name == name) {
            problems.push(format!(
                "The template uses `{{{{ {name} }}}}` but declares no variable `{name}`; hint: `--var {name}:string`"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    template
        .render(Value::Object(context))
        .map_err(|e| vec![format!("The template cannot be rendered: {e}")])
}

/// `{{ value | py }}`: the value as a Python literal (a string quoted and escaped, `True`,
/// `None`, lists and dicts), so a value can never become code. Without it a value is pasted as
/// text, for the template's author to place (`'{{ name }}'`).
fn py_filter(value: minijinja::Value) -> Result<String, minijinja::Error> {
    let json = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    Ok(py_literal(&json))
}

fn py_literal(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        // A JSON string is a valid Python string literal with the same meaning.
        Value::String(_) => value.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), py_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Checks a template before it is stored: its variables, its syntax, and that every
/// placeholder names a declared variable.
pub fn validate(source: &str, vars: &[Var]) -> Result<(), Vec<String>> {
    validate_vars(vars).map_err(|e| vec![e])?;
    let env = minijinja::Environment::new();
    let template = env
        .template_from_str(source)
        .map_err(|e| vec![format!("The template does not parse: {e}")])?;
    let mut undeclared: Vec<String> = template.undeclared_variables(false).into_iter().collect();
    undeclared.sort();
    let problems: Vec<String> = undeclared
        .into_iter()
        .filter(|name| !vars.iter().any(|v| &v.name == name))
        .map(|name| {
            format!(
                "The template uses `{{{{ {name} }}}}` but declares no variable `{name}`; hint: `--var {name}:string`"
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Vec<Var> {
        vec![
            parse_var("input_format:enum(csv|json):required#The format").unwrap(),
            parse_var("limit:int=10").unwrap(),
            parse_var("ratio:float=0.5").unwrap(),
            parse_var("verbose:bool").unwrap(),
            parse_var("title:string").unwrap(),
        ]
    }

    #[test]
    fn var_specs_parse_and_bad_ones_say_why() {
        let v = parse_var("limit:int=10#Rows").unwrap();
        assert_eq!(v.ty, VarType::Int);
        assert_eq!(v.default, Some(json!(10)));
        assert_eq!(v.description.as_deref(), Some("Rows"));
        assert!(parse_var("x").unwrap_err().contains("no type"));
        assert!(parse_var("x:decimal").unwrap_err().contains("unknown type"));
        assert!(parse_var("x:int=ten").unwrap_err().contains("not an int"));
        assert!(
            parse_var("x:int:maybe")
                .unwrap_err()
                .contains("unknown flag")
        );
        assert!(parse_var("1x:int").unwrap_err().contains("identifier"));
        // Stored as JSON and read back.
        let json = serde_json::to_value(vars()).unwrap();
        let back: Vec<Var> = serde_json::from_value(json).unwrap();
        assert_eq!(back, vars());
    }

    #[test]
    fn render_fills_defaults_and_converts_strings() {
        let src = "FORMAT = '{{ input_format }}'\nLIMIT = {{ limit }}\nRATIO = {{ ratio }}\nV = {{ verbose }}\n";
        let values: Map<String, Value> = [
            ("input_format".to_owned(), json!("csv")),
            ("verbose".to_owned(), json!("yes")),
        ]
        .into_iter()
        .collect();
        let out = render(src, &vars(), &values).unwrap();
        assert_eq!(out, "FORMAT = 'csv'\nLIMIT = 10\nRATIO = 0.5\nV = True\n");
    }

    #[test]
    fn the_py_filter_makes_a_value_a_literal_never_code() {
        let vars = vec![
            parse_var("who:string").unwrap(),
            parse_var("on:bool=false").unwrap(),
        ];
        let values: Map<String, Value> =
            [("who".to_owned(), json!("x\")\nimport socket\nprint(\"y"))]
                .into_iter()
                .collect();
        let out = render("print({{ who | py }}, {{ on | py }})\n", &vars, &values).unwrap();
        assert_eq!(
            out,
            "print(\"x\\\")\\nimport socket\\nprint(\\\"y\", False)\n"
        );
        assert_eq!(
            py_literal(&json!({"a": [1, null, true]})),
            "{\"a\": [1, None, True]}"
        );
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let src = "{{ input_format }} {{ limit }} {{ nope }}";
        let values: Map<String, Value> = [
            ("limit".to_owned(), json!("many")),
            ("extra".to_owned(), json!(1)),
        ]
        .into_iter()
        .collect();
        let problems = render(src, &vars(), &values).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("`extra` is not a variable"));
        assert!(problems[1].contains("`input_format` (enum(csv|json)) is required"));
        assert!(problems[2].contains("`limit`: `\"many\"` is not an int"));
        assert!(problems[3].contains("declares no variable `nope`"));
        let bad_enum: Map<String, Value> = [("input_format".to_owned(), json!("xml"))]
            .into_iter()
            .collect();
        let problems = render("{{ input_format }}", &vars(), &bad_enum).unwrap_err();
        assert_eq!(
            problems,
            ["`input_format`: `\"xml\"` is not one of csv, json"]
        );
    }
}
