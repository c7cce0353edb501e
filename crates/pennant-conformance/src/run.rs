//! Running suites through the evaluation engine and comparing the results.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pennant_eval::{Context, Flag, MemoryStore, Segment, ValueType, variation_detail};
use serde_json::{Map, Value};

use crate::suite::{Case, Expectation, Suite};

/// The outcome of running suites: one entry per case, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every case that ran.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// How many cases passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed()).count()
    }

    /// How many cases failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// How many cases ran.
    pub fn total(&self) -> usize {
        self.results.len()
    }

    /// The failed cases, in order.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.results.iter().filter(|r| !r.passed())
    }
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The suite's display name: file, suite name and parameter set.
    pub suite: String,
    /// The case's name, or its flag key when it has none.
    pub case: String,
    /// `None` when the case passed.
    pub failure: Option<Failure>,
}

impl CaseResult {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Why a case failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What differed (`value`, `variationIndex`, `reason`) or what went wrong before comparing.
    pub problems: Vec<String>,
    /// The expected result: `{"value", "variationIndex"?, "reason"}`.
    pub expected: Value,
    /// The actual result in the same shape, or `{"error": ...}` when there was none.
    pub actual: Value,
    /// The default value the variation method was called with.
    pub default: Value,
    /// The variation method that was called.
    pub value_type: ValueType,
}

/// The name of a value type in test data: `bool`, `int`, `double`, `string` or `any`.
pub fn value_type_name(value_type: ValueType) -> &'static str {
    match value_type {
        ValueType::Bool => "bool",
        ValueType::Int => "int",
        ValueType::Double => "double",
        ValueType::String => "string",
        ValueType::Any => "any",
    }
}

/// The default value and variation method the harness uses for a case.
///
/// A case may leave out `default` and `valueType`. Like LaunchDarkly's harness: a missing (or null) default
/// is inferred from the type of the flag's first variation (`false`, `0`, `""`, or null for other types or
/// no flag); a missing value type is inferred from that default (`bool`, `string`, `any` for null, arrays and
/// objects; for numbers `int` when the case's *own* default is an integral number, `double` otherwise).
pub fn variation_call(suite: &Suite, case: &Case) -> (Value, ValueType) {
    let default = if case.default.is_null() {
        let first_variation = suite
            .flags
            .get(&case.flag_key)
            .and_then(|flag| flag.get("variations"))
            .and_then(Value::as_array)
            .and_then(|variations| variations.first());
        match first_variation {
            Some(Value::Bool(_)) => Value::Bool(false),
            Some(Value::Number(_)) => Value::from(0),
            Some(Value::String(_)) => Value::String(String::new()),
            _ => Value::Null,
        }
    } else {
        case.default.clone()
    };
    let value_type = case.value_type.unwrap_or(match &default {
        Value::Bool(_) => ValueType::Bool,
        Value::Number(_) if is_integral(&case.default) => ValueType::Int,
        Value::Number(_) => ValueType::Double,
        Value::String(_) => ValueType::String,
        Value::Null | Value::Array(_) | Value::Object(_) => ValueType::Any,
    });
    (default, value_type)
}

/// Whether a value is a number without a fractional part.
fn is_integral(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0),
        _ => false,
    }
}

/// Runs every case of every suite.
pub fn run(suites: &[Suite]) -> Report {
    let mut report = Report::default();
    for suite in suites {
        run_suite(suite, &mut report.results);
    }
    report
}

fn run_suite(suite: &Suite, results: &mut Vec<CaseResult>) {
    let suite_name = suite.display_name();
    let (store, setup_errors) = build_store(suite);
    for case in &suite.cases {
        let (default, value_type) = variation_call(suite, case);
        let fail = |problems: Vec<String>, actual: Value| Failure {
            problems,
            expected: expected_json(&case.expect),
            actual,
            default: default.clone(),
            value_type,
        };
        let failure = if setup_errors.is_empty() {
            match evaluate(&store, case, &default, value_type) {
                Ok(actual) => compare(&case.expect, &actual).map(|problems| fail(problems, actual)),
                Err(error) => Some(fail(vec![error.clone()], serde_json::json!({ "error": error }))),
            }
        } else {
            Some(fail(setup_errors.clone(), serde_json::json!({ "error": setup_errors })))
        };
        results.push(CaseResult { suite: suite_name.clone(), case: case.display_name().to_owned(), failure });
    }
}

/// Loads the suite's flags and segments into a store; returns the ones that did not deserialize as errors.
fn build_store(suite: &Suite) -> (MemoryStore, Vec<String>) {
    let mut store = MemoryStore::default();
    let mut errors = Vec::new();
    for (key, json) in &suite.segments {
        match serde_json::from_value::<Segment>(json.clone()) {
            Ok(segment) => store.insert_segment(segment),
            Err(e) => errors.push(format!("segment {key:?} does not deserialize: {e}")),
        }
    }
    for (key, json) in &suite.flags {
        match serde_json::from_value::<Flag>(json.clone()) {
            Ok(flag) => store.insert_flag(flag),
            Err(e) => errors.push(format!("flag {key:?} does not deserialize: {e}")),
        }
    }
    (store, errors)
}

/// Evaluates one case the way an SDK's typed variation method would, as `{"value", "variationIndex"?, "reason"}`.
fn evaluate(store: &MemoryStore, case: &Case, default: &Value, value_type: ValueType) -> Result<Value, String> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let context = Context::from_value(case.context.clone());
        let detail = variation_detail(store, &case.flag_key, context.as_ref(), default, value_type);
        let reason = serde_json::to_value(detail.reason.with_status(detail.big_segments_status))
            .map_err(|e| format!("the reason does not serialize: {e}"))?;
        let mut actual = Map::new();
        actual.insert("value".to_owned(), detail.value.into_owned());
        if let Some(index) = detail.variation_index {
            actual.insert("variationIndex".to_owned(), Value::from(index));
        }
        actual.insert("reason".to_owned(), reason);
        Ok(Value::Object(actual))
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string payload".to_owned());
            Err(format!("the engine panicked: {message}"))
        }
    }
}

fn expected_json(expect: &Expectation) -> Value {
    let mut out = Map::new();
    out.insert("value".to_owned(), expect.value.clone());
    if let Some(index) = expect.variation_index {
        out.insert("variationIndex".to_owned(), Value::from(index));
    }
    out.insert("reason".to_owned(), expect.reason.clone());
    Value::Object(out)
}

/// Compares an actual result (as built by [`evaluate`]) with the expectation; `None` when they agree,
/// otherwise the names of the parts that differ.
fn compare(expect: &Expectation, actual: &Value) -> Option<Vec<String>> {
    let mut problems = Vec::new();
    let null = Value::Null;
    if !json_equivalent(&expect.value, actual.get("value").unwrap_or(&null)) {
        problems.push("value differs".to_owned());
    }
    let expected_is_error = expect.reason.get("kind").and_then(Value::as_str) == Some("ERROR");
    if !expected_is_error {
        let actual_index = actual.get("variationIndex").and_then(Value::as_u64);
        if expect.variation_index != actual_index {
            problems.push("variationIndex differs".to_owned());
        }
    }
    let actual_reason = actual.get("reason").unwrap_or(&null);
    if !json_equivalent(&without_false_fields(&expect.reason), &without_false_fields(actual_reason)) {
        problems.push("reason differs".to_owned());
    }
    if problems.is_empty() { None } else { Some(problems) }
}

/// A copy of an object without its fields whose value is `false` (optional fields such as `inExperiment`).
fn without_false_fields(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields.iter().filter(|(_, v)| **v != Value::Bool(false)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        ),
        other => other.clone(),
    }
}

/// JSON equality where numbers compare by numeric value (`1 == 1.0`).
pub fn json_equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let exact = |n: &serde_json::Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            match (exact(x), exact(y)) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_equivalent(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len() && xs.iter().all(|(k, x)| ys.get(k).is_some_and(|y| json_equivalent(x, y)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn missing_default_and_value_type_are_inferred_like_the_harness() {
        let suites = crate::load_str(
            "t.yml",
            r#"
name: inference
sdkData:
  flags:
    b: { variations: [true, false] }
    n: { variations: [1.5, 2] }
    s: { variations: ["a"] }
    j: { variations: [[1], {}] }
    e: { on: false }
evaluations:
  - { flagKey: b, expect: { reason: {} } }
  - { flagKey: n, expect: { reason: {} } }
  - { flagKey: s, expect: { reason: {} } }
  - { flagKey: j, expect: { reason: {} } }
  - { flagKey: e, expect: { reason: {} } }
  - { flagKey: missing, expect: { reason: {} } }
  - { flagKey: b, default: 3, expect: { reason: {} } }
  - { flagKey: b, default: 3.0, expect: { reason: {} } }
  - { flagKey: b, default: 3.5, expect: { reason: {} } }
  - { flagKey: b, default: "x", expect: { reason: {} } }
  - { flagKey: b, default: [1], expect: { reason: {} } }
  - { flagKey: b, default: 3, valueType: string, expect: { reason: {} } }
  - { flagKey: s, valueType: any, expect: { reason: {} } }
"#,
        )
        .unwrap();
        let suite = &suites[0];
        let calls: Vec<(Value, ValueType)> = suite.cases.iter().map(|c| variation_call(suite, c)).collect();
        assert_eq!(
            calls,
            vec![
                (json!(false), ValueType::Bool),
                // The harness asks whether the case's own default is integral: it is absent, so `double`.
                (json!(0), ValueType::Double),
                (json!(""), ValueType::String),
                (json!(null), ValueType::Any),
                (json!(null), ValueType::Any),
                (json!(null), ValueType::Any),
                (json!(3), ValueType::Int),
                (json!(3.0), ValueType::Int),
                (json!(3.5), ValueType::Double),
                (json!("x"), ValueType::String),
                (json!([1]), ValueType::Any),
                (json!(3), ValueType::String),
                (json!(""), ValueType::Any),
            ]
        );
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_equivalent(&json!(1), &json!(1.0)));
        assert!(json_equivalent(&json!([1, {"a": 2.0}]), &json!([1.0, {"a": 2}])));
        assert!(!json_equivalent(&json!(1), &json!(1.5)));
        assert!(!json_equivalent(&json!(1), &json!(true)));
        assert!(!json_equivalent(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(json_equivalent(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!json_equivalent(&json!(-1), &json!(u64::MAX)));
    }

    fn expectation(value: Value, variation_index: Option<u64>, reason: Value) -> Expectation {
        Expectation { value, variation_index, reason }
    }

    #[test]
    fn false_optional_fields_are_ignored_in_reasons() {
        let expect = expectation(json!(true), Some(0), json!({"kind": "FALLTHROUGH", "inExperiment": false}));
        let actual = json!({"value": true, "variationIndex": 0, "reason": {"kind": "FALLTHROUGH"}});
        assert_eq!(compare(&expect, &actual), None);
        let actual =
            json!({"value": true, "variationIndex": 0, "reason": {"kind": "FALLTHROUGH", "inExperiment": true}});
        assert_eq!(compare(&expect, &actual), Some(vec!["reason differs".to_owned()]));
    }

    #[test]
    fn variation_index_must_match_unless_error() {
        let expect = expectation(json!(1.0), None, json!({"kind": "OFF"}));
        let actual = json!({"value": 1, "variationIndex": 0, "reason": {"kind": "OFF"}});
        assert_eq!(compare(&expect, &actual), Some(vec!["variationIndex differs".to_owned()]));

        let expect = expectation(json!("d"), None, json!({"kind": "ERROR", "errorKind": "WRONG_TYPE"}));
        let actual = json!({"value": "d", "variationIndex": 0, "reason": {"kind": "ERROR", "errorKind": "WRONG_TYPE"}});
        assert_eq!(compare(&expect, &actual), None);

        let expect = expectation(json!(false), Some(1), json!({"kind": "FALLTHROUGH"}));
        let actual = json!({"value": true, "reason": {"kind": "OFF"}});
        assert_eq!(
            compare(&expect, &actual),
            Some(vec!["value differs".to_owned(), "variationIndex differs".to_owned(), "reason differs".to_owned()])
        );
    }
}
