//! Reading `api_models.capabilities.input_schema` and loosely typed request values, without trusting either.

use serde_json::{Map, Value};

/// `capabilities.input_schema`: field name -> `{required?, min?, max?, default?, type?}`. Anything that is not an
/// object reads as an empty schema (no filtering, no bounds), as the original's optional chaining did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schema<'a> {
    fields: Option<&'a Map<String, Value>>,
}

impl<'a> Schema<'a> {
    pub(crate) fn of(capabilities: &'a Value) -> Self {
        Self {
            fields: capabilities.get("input_schema").and_then(Value::as_object),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fields.is_none_or(Map::is_empty)
    }

    pub(crate) fn has(&self, field: &str) -> bool {
        self.fields.is_some_and(|f| f.contains_key(field))
    }

    fn property(&self, field: &str, property: &str) -> Option<&'a Value> {
        self.fields?.get(field)?.get(property)
    }

    /// A numeric `min`/`max`/… of a field (numeric strings accepted, non-finite ignored).
    pub(crate) fn number(&self, field: &str, property: &str) -> Option<f64> {
        self.property(field, property).and_then(number)
    }

    pub(crate) fn is_enum(&self, field: &str) -> bool {
        self.property(field, "type").and_then(Value::as_str) == Some("enum")
    }

    /// Fields marked `required: true`, in schema order.
    pub(crate) fn required(&self) -> Vec<&'a str> {
        self.fields
            .into_iter()
            .flatten()
            .filter(|(_, def)| def.get("required").and_then(Value::as_bool) == Some(true))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// A finite number from a JSON number or a numeric string (the original's JS coerced both).
pub(crate) fn number(value: &Value) -> Option<f64> {
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    n.is_finite().then_some(n)
}

/// A positive finite number; JS `x || fallback` treated 0 as absent and negative rates make no sense.
pub(crate) fn positive(value: Option<&Value>) -> Option<f64> {
    value.and_then(number).filter(|n| *n > 0.0)
}

/// `min(max(x, lo), hi)` as the original wrote it: never panics, even when a schema has `lo > hi` (then `hi`).
pub(crate) fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    x.max(lo).min(hi)
}

/// A JSON number that stays an integer when it is one (`7`, not `7.0`).
pub(crate) fn json_number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() < EXACT {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// JS truthiness, which decided whether the original saw a reference: null, false, 0, "" are absent.
pub(crate) fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(_) | Value::Object(_)) => true,
    }
}

/// A non-empty JSON array (the original's `x?.length > 0` on lists).
pub(crate) fn non_empty_array(value: Option<&Value>) -> Option<&Vec<Value>> {
    value.and_then(Value::as_array).filter(|a| !a.is_empty())
}

/// A value fal can take as a plain parameter (pass-throughs never carry nested structures).
pub(crate) fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::Bool(_) | Value::Number(_) | Value::String(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_reads_bounds_defaults_enum_and_required_fields() {
        let caps = json!({"input_schema": {
            "strength": {"min": 0.2, "max": "0.9", "default": 0.6},
            "image_size": {"type": "enum", "required": true},
            "prompt": {"required": true},
            "seed": true
        }});
        let schema = Schema::of(&caps);
        assert!(!schema.is_empty());
        assert!(schema.has("seed") && !schema.has("nope"));
        assert_eq!(schema.number("strength", "min"), Some(0.2));
        assert_eq!(schema.number("strength", "max"), Some(0.9));
        assert_eq!(schema.number("strength", "default"), Some(0.6));
        assert_eq!(schema.number("seed", "min"), None);
        assert!(schema.is_enum("image_size") && !schema.is_enum("strength"));
        let mut required = schema.required();
        required.sort_unstable();
        assert_eq!(required, ["image_size", "prompt"]);
    }

    #[test]
    fn a_schema_that_is_not_an_object_is_empty() {
        for caps in [
            json!({}),
            json!({"input_schema": []}),
            json!({"input_schema": "x"}),
            json!(null),
            json!(3),
        ] {
            let schema = Schema::of(&caps);
            assert!(schema.is_empty() && !schema.has("prompt") && schema.required().is_empty());
        }
    }

    #[test]
    fn numbers_accept_numeric_strings_and_reject_the_rest() {
        assert_eq!(number(&json!(2)), Some(2.0));
        assert_eq!(number(&json!(" 2.5 ")), Some(2.5));
        assert_eq!(number(&json!("NaN")), None);
        assert_eq!(number(&json!("inf")), None);
        assert_eq!(number(&json!(true)), None);
        assert_eq!(number(&json!([1])), None);
        assert_eq!(positive(Some(&json!(0))), None);
        assert_eq!(positive(Some(&json!(-3))), None);
    }

    #[test]
    fn clamp_never_panics_on_inverted_bounds() {
        assert_eq!(clamp(5.0, 1.0, 3.0), 3.0);
        assert_eq!(clamp(0.0, 1.0, 3.0), 1.0);
        assert_eq!(clamp(2.0, 3.0, 1.0), 1.0);
    }

    #[test]
    fn json_numbers_keep_integers_integral() {
        assert_eq!(json_number(7.0).to_string(), "7");
        assert_eq!(json_number(7.5).to_string(), "7.5");
        assert_eq!(json_number(1e300), Value::from(1e300_f64));
    }

    #[test]
    fn truthiness_follows_javascript() {
        for falsy in [
            None,
            Some(json!(null)),
            Some(json!(false)),
            Some(json!(0)),
            Some(json!("")),
        ] {
            assert!(!truthy(falsy.as_ref()));
        }
        for truthy_value in [json!(true), json!(1), json!("x"), json!([]), json!({})] {
            assert!(truthy(Some(&truthy_value)));
        }
    }
}
