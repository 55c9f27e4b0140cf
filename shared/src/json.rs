//! JSON that Postgres can store (`jsonb` and `text` refuse U+0000), and merging the keys of one object into another.

use serde_json::Value;

/// Adds `extra`'s keys to `target`, replacing those it has, when both are objects; otherwise nothing changes.
pub fn extend(target: &mut Value, extra: Value) {
    if let (Some(m), Value::Object(extra)) = (target.as_object_mut(), extra) {
        m.extend(extra);
    }
}

/// True when a string or key anywhere in the value holds U+0000.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The value with every U+0000 removed from strings and keys (for data from fal, which we store but do not own).
pub fn without_nul(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace('\0', "")),
        Value::Array(items) => Value::Array(items.iter().map(without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.replace('\0', ""), without_nul(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_anywhere_is_found_and_removed() {
        let v = json!({"a": ["x", {"b\u{0}": 1}], "c": "d\u{0}e"});
        assert!(has_nul(&v));
        let clean = without_nul(&v);
        assert!(!has_nul(&clean));
        assert_eq!(clean, json!({"a": ["x", {"b": 1}], "c": "de"}));
        assert!(!has_nul(&json!({"a": [1, null, true, "ok"]})));
    }
}
