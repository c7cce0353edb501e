//! JSON value comparison with LaunchDarkly's rules.

use serde_json::Value;

/// JSON equality as LaunchDarkly defines it for the `in` operator and for comparing results: numbers compare by
/// numeric value (`1 == 1.0`), arrays and objects deeply, and there is no coercion between types (`"1" != 1`).
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        // LaunchDarkly's SDKs hold every JSON number as an f64, so integers beyond 2^53 compare as f64 too.
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => false,
    }
}

/// The decimal form of a value used for bucketing: strings as they are, integral numbers as integers.
pub(crate) enum Bucketable<'a> {
    Str(&'a str),
    Int(i64),
}

#[inline]
pub(crate) fn bucketable(value: &Value) -> Option<Bucketable<'_>> {
    match value {
        Value::String(s) => Some(Bucketable::Str(s)),
        Value::Number(n) => {
            // As f64 first, like LaunchDarkly's SDKs: 2^53 + 1 buckets as 2^53.
            let f = n.as_f64()?;
            // Only integral values in i64's range bucket; 2^63 as f64 is the first value out of range.
            if f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                #[allow(clippy::cast_possible_truncation)]
                Some(Bucketable::Int(f as i64))
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value_and_types_do_not_coerce() {
        assert!(json_equal(&json!(1), &json!(1.0)));
        assert!(json_equal(&json!([1, {"a": 2.0}]), &json!([1.0, {"a": 2}])));
        assert!(!json_equal(&json!("1"), &json!(1)));
        assert!(!json_equal(&json!(true), &json!(1)));
        assert!(!json_equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!json_equal(&json!(null), &json!(false)));
        assert!(json_equal(&json!(9_007_199_254_740_993_u64), &json!(9_007_199_254_740_992_u64)));
    }
}
