//! The action result shape: `{"value": ..., "notifications"?: [...], "groups"?: [...]}`. The host
//! checks the two known lists of every result (other top-level fields pass through untouched)
//! and refuses a result that breaks them, naming the field. See `docs/protocol.md`.

use serde_json::Value;

/// Notification levels.
const LEVELS: &[&str] = &["info", "success", "warning", "error"];

/// Checks a raw result; `Err` says which field is wrong and how.
pub(crate) fn check(raw: &str) -> Result<(), String> {
    // Most results carry neither list: skip the parse for them (the hot path). A key spelled
    // with escapes (`"notific\u0061tions"`) contains a backslash, so it is never skipped.
    if !raw.contains("\"notifications\"") && !raw.contains("\"groups\"") && !raw.contains('\\') {
        return Ok(());
    }
    // Only the two known fields are read (the rest is skipped, not built); a duplicate of either
    // is refused, so every client reads the same value the host checked.
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        notifications: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow, default)]
        groups: Option<&'a serde_json::value::RawValue>,
    }
    if !raw.trim_start().starts_with('{') {
        return Ok(());
    }
    let top: Top<'_> = serde_json::from_str(raw).map_err(|e| format!("it is not valid: {e}"))?;
    let parse = |raw: Option<&serde_json::value::RawValue>| -> Result<Option<Value>, String> {
        raw.map(|r| serde_json::from_str(r.get()).map_err(|e| format!("it is not JSON: {e}")))
            .transpose()
    };
    let mut result = serde_json::Map::new();
    if let Some(v) = parse(top.notifications)? {
        result.insert("notifications".into(), v);
    }
    if let Some(v) = parse(top.groups)? {
        result.insert("groups".into(), v);
    }
    if let Some(list) = result.get("notifications") {
        let items = list.as_array().ok_or("`notifications` must be an array")?;
        for (i, n) in items.iter().enumerate() {
            notification(n).map_err(|e| format!("`notifications[{i}]{e}"))?;
        }
    }
    if let Some(list) = result.get("groups") {
        let items = list.as_array().ok_or("`groups` must be an array")?;
        for (i, g) in items.iter().enumerate() {
            group(g).map_err(|e| format!("`groups[{i}]{e}"))?;
        }
    }
    Ok(())
}

fn notification(n: &Value) -> Result<(), String> {
    let n = n.as_object().ok_or("` must be an object")?;
    match n.get("level").and_then(Value::as_str) {
        Some(level) if LEVELS.contains(&level) => {}
        Some(level) => {
            return Err(format!(
                ".level` is `{level}`; hint: use one of `info`, `success`, `warning`, `error`"
            ));
        }
        None => return Err(".level` is missing or not a string".to_owned()),
    }
    string_field(n, "message", true)?;
    string_field(n, "title", false)?;
    if let Some(actions) = n.get("actions") {
        let actions = actions.as_array().ok_or(".actions` must be an array")?;
        for (i, a) in actions.iter().enumerate() {
            let a = a
                .as_object()
                .ok_or_else(|| format!(".actions[{i}]` must be an object"))?;
            string_field(a, "action", true).map_err(|e| format!(".actions[{i}]{e}"))?;
            string_field(a, "label", false).map_err(|e| format!(".actions[{i}]{e}"))?;
        }
    }
    Ok(())
}

fn group(g: &Value) -> Result<(), String> {
    let g = g.as_object().ok_or("` must be an object")?;
    string_field(g, "name", true)?;
    string_field(g, "id", false)?;
    string_field(g, "key", false)?;
    if let Some(members) = g.get("members")
        && !members.is_array()
    {
        return Err(".members` must be an array".to_owned());
    }
    if let Some(score) = g.get("score")
        && !score.is_number()
    {
        return Err(".score` must be a number".to_owned());
    }
    if let Some(scores) = g.get("scores") {
        let scores = scores
            .as_object()
            .ok_or(".scores` must be an object of numbers")?;
        if let Some((k, _)) = scores.iter().find(|(_, v)| !v.is_number()) {
            return Err(format!(".scores.{k}` must be a number"));
        }
    }
    Ok(())
}

/// `.NAME` must be a string (and present when `required`); errors continue a path that the
/// caller opened with a backtick.
fn string_field(
    object: &serde_json::Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<(), String> {
    match object.get(name) {
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err(format!(".{name}` must be a string")),
        None if required => Err(format!(".{name}` is missing")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn well_formed_results_pass_and_other_fields_pass_through() {
        for ok in [
            r#"{"value": 1}"#,
            r#"{"value": 1, "urls": ["x"], "datas": {}}"#,
            r#"{"value": null, "notifications": [{"level": "success", "title": "Done", "message": "3 images", "data": {"n": 3}, "actions": [{"action": "open", "label": "Open", "payload": {}}]}]}"#,
            r#"{"value": null, "groups": [{"id": "g1", "name": "Cats", "members": ["a", "b"], "score": 0.9, "scores": {"a": 0.9}}]}"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn a_broken_list_names_the_field() {
        let cases = [
            (
                r#"{"notifications": {}}"#,
                "`notifications` must be an array",
            ),
            (
                r#"{"notifications": [{"level": "loud", "message": "x"}]}"#,
                "`notifications[0].level` is `loud`; hint: use one of `info`, `success`, `warning`, `error`",
            ),
            (
                r#"{"notifications": [{"level": "info"}]}"#,
                "`notifications[0].message` is missing",
            ),
            (
                r#"{"notifications": [{"level": "info", "message": "m", "actions": [{"label": "x"}]}]}"#,
                "`notifications[0].actions[0].action` is missing",
            ),
            (
                r#"{"groups": [{"members": []}]}"#,
                "`groups[0].name` is missing",
            ),
            (
                r#"{"groups": [{"name": "g", "scores": {"a": "high"}}]}"#,
                "`groups[0].scores.a` must be a number",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(check(raw).unwrap_err(), want, "{raw}");
        }
    }
}
