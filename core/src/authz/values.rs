//! Cedar values of context attributes: built from JSON (token claims, MCP arguments) as
//! expressions, or built directly as values for what is made per request (the request line, the
//! clock, the binding), so that nothing is built and then evaluated again (`ContextParts`).

use cedar_policy::RestrictedExpression;
use serde_json::Value;

/// A Cedar value built directly (`cedar_policy_core`'s), for context attributes made per
/// request: no expression to build and evaluate first (`ContextParts::values`).
pub type CedarValue = cedar_policy_core::ast::Value;

/// A record of `fields`; a name twice is an error (as `RestrictedExpression::new_record` has
/// it), never one of the two values silently.
pub fn value_record(fields: Vec<(String, CedarValue)>) -> Result<CedarValue, String> {
    let mut names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let twice = names.windows(2).find_map(|w| match w {
        [a, b] if a == b => Some(*a),
        _ => None,
    });
    if let Some(name) = twice {
        return Err(format!("the record member `{name}` is given twice"));
    }
    Ok(CedarValue::record(fields, None))
}

/// The value `e` evaluates to (extension values, such as `ip(…)`, have no other constructor).
pub fn value_of(e: &RestrictedExpression) -> Result<CedarValue, String> {
    use cedar_policy_core::evaluator::RestrictedEvaluator;
    use cedar_policy_core::extensions::Extensions;
    RestrictedEvaluator::new(Extensions::all_available())
        .interpret(e.as_ref().as_borrowed())
        .map_err(|err| err.to_string())
}

/// `v` as an expression (for partial evaluation, `partial.rs`).
pub fn expression_of(v: CedarValue) -> RestrictedExpression {
    RestrictedExpression::from(cedar_policy_core::ast::RestrictedExpr::from(v))
}

/// A JSON value (from a token) as a Cedar value: strings, integers, booleans, arrays as sets,
/// objects as records. Numbers that are not 64-bit integers have no Cedar equivalent.
pub fn json_to_cedar(v: &Value) -> Result<RestrictedExpression, &'static str> {
    Ok(match v {
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => {
            RestrictedExpression::new_long(n.as_i64().ok_or("not a 64-bit integer")?)
        }
        Value::Array(a) => RestrictedExpression::new_set(
            a.iter().map(json_to_cedar).collect::<Result<Vec<_>, _>>()?,
        ),
        // A null member is an absent one: clients write optional arguments as `null`.
        Value::Object(m) => RestrictedExpression::new_record(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| Ok((k.clone(), json_to_cedar(v)?)))
                .collect::<Result<Vec<_>, &'static str>>()?,
        )
        .map_err(|_| "duplicate record key")?,
        Value::Null => return Err("null has no Cedar value"),
    })
}

/// The value [`json_to_cedar`]'s expression evaluates to, built directly: for what a request
/// carries (MCP arguments), so that nothing is built as an expression and evaluated again.
/// `json_values_are_what_json_expressions_evaluate_to` holds the two to one meaning.
pub fn json_to_value(v: &Value) -> Result<CedarValue, &'static str> {
    Ok(match v {
        Value::String(s) => CedarValue::from(s.clone()),
        Value::Bool(b) => CedarValue::from(*b),
        Value::Number(n) => CedarValue::from(n.as_i64().ok_or("not a 64-bit integer")?),
        Value::Array(a) => CedarValue::set(
            a.iter().map(json_to_value).collect::<Result<Vec<_>, _>>()?,
            None,
        ),
        // A null member is an absent one, as for `json_to_cedar`.
        Value::Object(m) => CedarValue::record(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| Ok((k.as_str(), json_to_value(v)?)))
                .collect::<Result<Vec<_>, &'static str>>()?,
            None,
        ),
        Value::Null => return Err("null has no Cedar value"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Built directly or as an expression then evaluated, a JSON value is the same Cedar value,
    /// and what one refuses the other refuses with the same reason.
    #[test]
    fn json_values_are_what_json_expressions_evaluate_to() {
        let cases = [
            json!("x"),
            json!(""),
            json!(0),
            json!(-9_223_372_036_854_775_808i64),
            json!(9_223_372_036_854_775_807i64),
            json!(true),
            json!([]),
            json!(["a", "b", "a"]),
            json!([1, "1", true, [1], {"k": 1}]),
            json!([[1, 2], [2, 1]]),
            json!({}),
            json!({"path": "/data/x", "n": 3, "flags": [true, false], "gone": null}),
            json!({"a": {"b": {"c": ["d", {"e": -1}]}}}),
            json!({"": "empty name", "é": "ü", "a b": 1}),
            json!(1.5),
            json!(18_446_744_073_709_551_615u64),
            json!(null),
            json!([1, null]),
            json!({"a": [1, 2.5]}),
            json!({"a": {"b": [null]}}),
        ];
        let mut refused = 0;
        for v in &cases {
            let direct = json_to_value(v);
            let evaluated = json_to_cedar(v).map(|e| value_of(&e));
            match (direct, evaluated) {
                (Ok(d), Ok(Ok(e))) => assert_eq!(d, e, "{v}"),
                (Err(d), Err(e)) => {
                    assert_eq!(d, e, "{v}");
                    refused += 1;
                }
                (d, e) => panic!("{v}: directly {d:?}, evaluated {e:?}"),
            }
        }
        // Both ways meet refusals, not only values.
        assert_eq!(refused, 6);
    }
}
