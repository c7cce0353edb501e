//! Suites and cases: parsing expanded texts and loading files and directories.

use std::collections::BTreeMap;
use std::path::Path;

use pennant_eval::ValueType;
use serde::Deserialize;
use serde_json::Value;

use crate::ConformanceError;
use crate::expand::{Substitutions, expand, parse_yaml};

/// One expanded suite: flag and segment data plus the evaluation cases run against it.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The name of the file the suite comes from (no directory).
    pub file: String,
    /// The parameter set the suite was expanded with (empty when the file has no parameters).
    pub params: Substitutions,
    /// The suite's `name`, after substitution.
    pub name: String,
    /// The SDK capability the suite needs, if any (informational: every suite is run).
    pub require_capability: Option<String>,
    /// Whether the harness skips this suite when testing all-flags evaluation.
    pub skip_evaluate_all_flags: bool,
    /// Flag JSON by key, normalised: `key` set from the map key, `version` 1 when missing or 0.
    pub flags: BTreeMap<String, Value>,
    /// Segment JSON by key, normalised like the flags.
    pub segments: BTreeMap<String, Value>,
    /// The evaluation cases, in file order.
    pub cases: Vec<Case>,
}

impl Suite {
    /// A name that identifies the suite in reports: file, suite name and parameter set.
    pub fn display_name(&self) -> String {
        format!("{}: {}{}", self.file, self.name, params_label(&self.params))
    }
}

/// One evaluation case.
#[derive(Debug, Clone)]
pub struct Case {
    /// The case's `name`, if it has one.
    pub name: Option<String>,
    /// The flag to evaluate.
    pub flag_key: String,
    /// The context JSON, as written (new-style, multi-kind or legacy user); it may be deliberately invalid.
    pub context: Value,
    /// The typed variation method to call, if the case names one (see [`crate::variation_call`] for what
    /// the harness calls otherwise).
    pub value_type: Option<ValueType>,
    /// The default value passed to the variation method, null when the case has none (see
    /// [`crate::variation_call`] for what the harness passes then).
    pub default: Value,
    /// The expected result.
    pub expect: Expectation,
}

impl Case {
    /// The case's name, or its flag key when it has none.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.flag_key)
    }
}

/// The expected result of a case.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// The value the variation method returns.
    pub value: Value,
    /// The variation index, if the result has one.
    pub variation_index: Option<u64>,
    /// The evaluation reason, as LaunchDarkly's JSON.
    pub reason: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSuite {
    name: String,
    #[serde(default)]
    require_capability: Option<String>,
    #[serde(default)]
    skip_evaluate_all_flags: Option<bool>,
    #[serde(default)]
    sdk_data: Option<RawSdkData>,
    #[serde(default)]
    evaluations: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct RawSdkData {
    #[serde(default)]
    flags: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    segments: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCase {
    #[serde(default)]
    name: Option<String>,
    flag_key: String,
    #[serde(default)]
    context: Value,
    #[serde(default)]
    value_type: Option<String>,
    #[serde(default)]
    default: Value,
    expect: RawExpectation,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawExpectation {
    #[serde(default)]
    value: Value,
    #[serde(default)]
    variation_index: Option<u64>,
    reason: Value,
}

/// Parses one expanded suite text.
///
/// `file` and `params` are recorded in the suite and used in error messages.
pub fn parse_suite(file: &str, params: Substitutions, text: &str) -> Result<Suite, ConformanceError> {
    let params_label = params_label(&params);
    let json = parse_yaml(&format!("{file}{params_label}"), text)?;
    let name_hint = match json.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => String::from("?"),
    };
    let structure = |message: String| ConformanceError::Structure {
        file: file.to_owned(),
        suite: format!("{name_hint}{params_label}"),
        message,
    };
    if !json.is_object() {
        return Err(structure("a suite must be a map".to_owned()));
    }
    let raw: RawSuite = serde_json::from_value(json).map_err(|e| structure(e.to_string()))?;
    let sdk_data = raw.sdk_data.unwrap_or(RawSdkData { flags: None, segments: None });
    let flags = normalise_items(sdk_data.flags.unwrap_or_default())
        .map_err(|key| structure(format!("flag {key:?} must be a map")))?;
    let segments = normalise_items(sdk_data.segments.unwrap_or_default())
        .map_err(|key| structure(format!("segment {key:?} must be a map")))?;

    let mut cases = Vec::new();
    for (i, case) in raw.evaluations.unwrap_or_default().into_iter().enumerate() {
        let label = match (case.get("name"), case.get("flagKey")) {
            (Some(Value::String(name)), _) | (None, Some(Value::String(name))) => format!(" ({name})"),
            _ => String::new(),
        };
        let case: RawCase =
            serde_json::from_value(case).map_err(|e| structure(format!("evaluation {i}{label}: {e}")))?;
        let value_type = match case.value_type.as_deref() {
            None => None,
            Some(name) => Some(
                ValueType::parse(name)
                    .ok_or_else(|| structure(format!("evaluation {i}{label}: unknown valueType {name:?}")))?,
            ),
        };
        cases.push(Case {
            name: case.name,
            flag_key: case.flag_key,
            context: case.context,
            value_type,
            default: case.default,
            expect: Expectation {
                value: case.expect.value,
                variation_index: case.expect.variation_index,
                reason: case.expect.reason,
            },
        });
    }

    Ok(Suite {
        file: file.to_owned(),
        params,
        name: raw.name,
        require_capability: raw.require_capability,
        skip_evaluate_all_flags: raw.skip_evaluate_all_flags.unwrap_or(false),
        flags,
        segments,
        cases,
    })
}

/// Sets `key` from the map key and `version` to 1 when missing or 0. Returns the first key whose item is not
/// a map as the error.
fn normalise_items(items: BTreeMap<String, Value>) -> Result<BTreeMap<String, Value>, String> {
    items
        .into_iter()
        .map(|(key, mut item)| {
            let Value::Object(fields) = &mut item else {
                return Err(key);
            };
            fields.insert("key".to_owned(), Value::String(key.clone()));
            let version_unset = match fields.get("version") {
                None | Some(Value::Null) => true,
                Some(Value::Number(n)) => n.as_f64() == Some(0.0),
                Some(_) => false,
            };
            if version_unset {
                fields.insert("version".to_owned(), Value::from(1));
            }
            Ok((key, item))
        })
        .collect()
}

fn params_label(params: &Substitutions) -> String {
    if params.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = params.iter().map(|(name, value)| format!("{name}={value}")).collect();
    format!(" [{}]", inner.join(", "))
}

/// Expands and parses the text of one data file. `file` names it in the suites and in error messages.
pub fn load_str(file: &str, raw: &str) -> Result<Vec<Suite>, ConformanceError> {
    expand(file, raw)?.into_iter().map(|expansion| parse_suite(file, expansion.params, &expansion.text)).collect()
}

/// Reads, expands and parses one data file.
pub fn load_file(path: impl AsRef<Path>) -> Result<Vec<Suite>, ConformanceError> {
    let path = path.as_ref();
    let raw = std::fs::read_to_string(path).map_err(|source| ConformanceError::Io { path: path.to_owned(), source })?;
    let file = path.file_name().map_or_else(|| path.display().to_string(), |name| name.to_string_lossy().into_owned());
    load_str(&file, &raw)
}

/// Whether `path` names a data file (`*.yml`, `*.yaml` or `*.json`).
fn is_data_file(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ["yml", "yaml", "json"].iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

/// Loads every `*.yml`, `*.yaml` and `*.json` file of a directory (not recursively), in file-name order.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<Suite>, ConformanceError> {
    let dir = dir.as_ref();
    let io_error = |source| ConformanceError::Io { path: dir.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        let is_file =
            entry.file_type().map_err(|source| ConformanceError::Io { path: path.clone(), source })?.is_file()
                || path.is_file();
        if is_file && is_data_file(&path) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut suites = Vec::new();
    for path in files {
        suites.extend(load_file(&path)?);
    }
    Ok(suites)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUITE: &str = r#"
name: example (<T>)
requireCapability: strongly-typed
parameters:
  - T: bool
  - T: int
sdkData:
  flags:
    f1:
      on: true
      variations: [true, false]
    f2:
      version: 0
    f3:
      version: 7
  segments:
    s1:
      included: [a]
evaluations:
  - name: named
    flagKey: f1
    context: { kind: user, key: a }
    valueType: <T>
    default: false
    expect:
      value: true
      variationIndex: 0
      reason: { kind: FALLTHROUGH }
  - flagKey: f2
    context: { key: a }
    expect:
      value: null
      reason: { kind: OFF }
"#;

    #[test]
    fn suites_are_parsed_and_normalised() {
        let suites = load_str("example.yml", SUITE).unwrap();
        assert_eq!(suites.len(), 2);
        let suite = &suites[1];
        assert_eq!(suite.name, "example (int)");
        assert_eq!(suite.file, "example.yml");
        assert_eq!(suite.display_name(), r#"example.yml: example (int) [T="int"]"#);
        assert_eq!(suite.require_capability.as_deref(), Some("strongly-typed"));
        assert!(!suite.skip_evaluate_all_flags);
        assert_eq!(suite.flags["f1"], json!({"key": "f1", "version": 1, "on": true, "variations": [true, false]}));
        assert_eq!(suite.flags["f2"], json!({"key": "f2", "version": 1}));
        assert_eq!(suite.flags["f3"], json!({"key": "f3", "version": 7}));
        assert_eq!(suite.segments["s1"], json!({"key": "s1", "version": 1, "included": ["a"]}));

        assert_eq!(suite.cases.len(), 2);
        let first = &suite.cases[0];
        assert_eq!(first.display_name(), "named");
        assert_eq!(first.value_type, Some(ValueType::Int));
        assert_eq!(first.default, json!(false));
        assert_eq!(first.context, json!({"kind": "user", "key": "a"}));
        assert_eq!(
            first.expect,
            Expectation { value: json!(true), variation_index: Some(0), reason: json!({"kind": "FALLTHROUGH"}) }
        );
        let second = &suite.cases[1];
        assert_eq!(second.display_name(), "f2");
        assert_eq!(second.value_type, None);
        assert_eq!(second.default, Value::Null);
        assert_eq!(second.expect.variation_index, None);
        assert_eq!(suites[0].cases[0].value_type, Some(ValueType::Bool));
    }

    #[test]
    fn structure_errors_name_file_and_suite() {
        let err = load_str(
            "bad.yml",
            "name: broken\nevaluations:\n  - flagKey: f\n    valueType: float\n    expect: { value: 1, reason: {kind: OFF} }\n",
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("bad.yml"), "{message}");
        assert!(message.contains("broken"), "{message}");
        assert!(message.contains("float"), "{message}");

        let err = load_str("bad.yml", "name: broken <P>\nparameters: [ {P: one} ]\nevaluations:\n  - context: {}\n")
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("bad.yml") && message.contains(r#"suite "broken one [P="one"]""#), "{message}");
        assert!(message.contains("evaluation 0: missing field `flagKey`"), "{message}");

        let err = load_str("bad.yml", "just a string\n").unwrap_err();
        assert!(err.to_string().contains("must be a map"), "{err}");

        let err = load_str("bad.yml", "name: x\nsdkData: { flags: { f: 3 } }\n").unwrap_err();
        assert!(err.to_string().contains("flag \"f\" must be a map"), "{err}");
    }

    #[test]
    fn missing_directory_is_an_io_error() {
        let err = load_dir("/nonexistent/pennant-conformance-test").unwrap_err();
        assert!(matches!(err, ConformanceError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/pennant-conformance-test"), "{err}");
    }
}
