//! Clause operators, with clause values preprocessed once when a clause is loaded.

use chrono::{DateTime, TimeZone, Utc};
use regex::Regex;
use serde_json::Value;

use crate::keyset::KeySet;
use crate::model::Operator;
use crate::value::json_equal;

/// Above this many values, `in` looks strings up in a hash set instead of scanning.
const IN_SET_THRESHOLD: usize = 8;

/// Regexes from flag data are bounded so that one rule cannot use unbounded memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Clause values in the form their operator needs, parsed once. A value that does not parse (a bad regex, a
/// string that is not a date) is kept as `None` and never matches, as in LaunchDarkly's engines.
#[derive(Debug, Clone, Default)]
pub(crate) enum PreparedValues {
    #[default]
    Raw,
    InSet(KeySet),
    Regexes(Vec<Option<Regex>>),
    Times(Vec<Option<DateTime<Utc>>>),
    Versions(Vec<Option<semver::Version>>),
}

impl PreparedValues {
    pub(crate) fn new(op: &Operator, values: &[Value]) -> PreparedValues {
        match op {
            Operator::In if values.len() > IN_SET_THRESHOLD => {
                let strings: Vec<String> = values.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
                PreparedValues::InSet(KeySet::new(&strings))
            }
            Operator::Matches => PreparedValues::Regexes(
                values
                    .iter()
                    .map(|v| {
                        v.as_str().and_then(|s| regex::RegexBuilder::new(s).size_limit(REGEX_SIZE_LIMIT).build().ok())
                    })
                    .collect(),
            ),
            Operator::Before | Operator::After => PreparedValues::Times(values.iter().map(to_time).collect()),
            Operator::SemVerEqual | Operator::SemVerLessThan | Operator::SemVerGreaterThan => {
                PreparedValues::Versions(values.iter().map(to_semver).collect())
            }
            _ => PreparedValues::Raw,
        }
    }
}

/// Whether a single (non-array) context value matches any of the clause's values under its operator.
#[inline]
pub(crate) fn match_any(op: &Operator, prepared: &PreparedValues, values: &[Value], actual: &Value) -> bool {
    match op {
        Operator::In => match (prepared, actual) {
            (PreparedValues::InSet(set), Value::String(s)) => set.contains(s),
            _ => values.iter().any(|v| json_equal(actual, v)),
        },
        Operator::StartsWith => string_op(actual, values, |a, b| a.starts_with(b)),
        Operator::EndsWith => string_op(actual, values, |a, b| a.ends_with(b)),
        Operator::Contains => string_op(actual, values, |a, b| a.contains(b)),
        Operator::Matches => match (prepared, actual) {
            (PreparedValues::Regexes(res), Value::String(s)) => res.iter().flatten().any(|re| re.is_match(s)),
            _ => false,
        },
        Operator::LessThan => numeric_op(actual, values, |a, b| a < b),
        Operator::LessThanOrEqual => numeric_op(actual, values, |a, b| a <= b),
        Operator::GreaterThan => numeric_op(actual, values, |a, b| a > b),
        Operator::GreaterThanOrEqual => numeric_op(actual, values, |a, b| a >= b),
        Operator::Before | Operator::After => {
            let PreparedValues::Times(times) = prepared else { return false };
            let Some(t) = to_time(actual) else { return false };
            let before = matches!(op, Operator::Before);
            times.iter().flatten().any(|c| if before { t < *c } else { t > *c })
        }
        Operator::SemVerEqual | Operator::SemVerLessThan | Operator::SemVerGreaterThan => {
            let PreparedValues::Versions(versions) = prepared else { return false };
            let Some(v) = to_semver(actual) else { return false };
            let want = match op {
                Operator::SemVerLessThan => std::cmp::Ordering::Less,
                Operator::SemVerGreaterThan => std::cmp::Ordering::Greater,
                _ => std::cmp::Ordering::Equal,
            };
            versions.iter().flatten().any(|c| v.cmp_precedence(c) == want)
        }
        Operator::SegmentMatch | Operator::Unknown(_) => false,
    }
}

#[inline]
fn string_op(actual: &Value, values: &[Value], f: impl Fn(&str, &str) -> bool) -> bool {
    let Value::String(a) = actual else { return false };
    values.iter().any(|v| v.as_str().is_some_and(|b| f(a, b)))
}

#[inline]
fn numeric_op(actual: &Value, values: &[Value], f: impl Fn(f64, f64) -> bool) -> bool {
    let Some(a) = actual.as_f64() else { return false };
    values.iter().any(|v| v.as_f64().is_some_and(|b| f(a, b)))
}

/// A date operand: an RFC 3339 date-time string, or a number of milliseconds since the Unix epoch.
pub(crate) fn to_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => {
            let ms = n.as_f64()?;
            if !ms.is_finite() || ms.abs() >= 9.2e18 {
                return None;
            }
            #[allow(clippy::cast_possible_truncation)]
            Utc.timestamp_millis_opt(ms as i64).single()
        }
        _ => None,
    }
}

/// A semantic version operand. As in LaunchDarkly, "2" and "2.1" are read as "2.0.0" and "2.1.0", leading zeros
/// are invalid, and build metadata is ignored.
pub(crate) fn to_semver(value: &Value) -> Option<semver::Version> {
    let s = value.as_str()?;
    let mut version = match semver::Version::parse(s) {
        Ok(v) => v,
        Err(_) => parse_semver_missing_parts(s)?,
    };
    version.build = semver::BuildMetadata::EMPTY;
    Some(version)
}

fn parse_semver_missing_parts(s: &str) -> Option<semver::Version> {
    // "2" and "2.1" with an optional "-pre.release" and "+build": built directly rather than by padding the
    // string, so that evaluating a context's short version does not allocate.
    let core_end = s.find(['-', '+']).unwrap_or(s.len());
    let (core, suffix) = s.split_at(core_end);
    let mut parts = core.split('.');
    let major = numeric_identifier(parts.next()?)?;
    let minor = match parts.next() {
        Some(p) => numeric_identifier(p)?,
        None => 0,
    };
    if parts.next().is_some() {
        return None; // Three parts would have parsed as a full version.
    }
    let pre = match suffix.strip_prefix('-') {
        Some(rest) => {
            let pre = &rest[..rest.find('+').unwrap_or(rest.len())];
            if pre.is_empty() {
                return None;
            }
            semver::Prerelease::new(pre).ok()?
        }
        None => semver::Prerelease::EMPTY,
    };
    let build = suffix.find('+').map(|i| &suffix[i + 1..]);
    if build.is_some_and(|b| b.is_empty() || semver::BuildMetadata::new(b).is_err()) {
        return None;
    }
    let mut version = semver::Version::new(major, minor, 0);
    version.pre = pre;
    Some(version)
}

/// A SemVer numeric identifier: digits, no leading zero.
fn numeric_identifier(part: &str) -> Option<u64> {
    let valid = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && (part == "0" || !part.starts_with('0'));
    if valid { part.parse().ok() } else { None }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(op: Operator, actual: Value, clause_value: Value) -> bool {
        let values = vec![clause_value];
        let prepared = PreparedValues::new(&op, &values);
        match_any(&op, &prepared, &values, &actual)
    }

    #[test]
    fn operator_table() {
        use Operator::*;
        let rows: Vec<(Operator, Value, Value, bool)> = vec![
            (In, json!(99), json!(99.0), true),
            (In, json!("99"), json!(99), false),
            (In, json!([1]), json!([1.0]), true),
            (StartsWith, json!("abc"), json!("ab"), true),
            (StartsWith, json!("abc"), json!("AB"), false),
            (EndsWith, json!("abc"), json!("bc"), true),
            (Contains, json!("abc"), json!("b"), true),
            (Contains, json!(1), json!("1"), false),
            (Matches, json!("hello world"), json!("o w"), true),
            (Matches, json!("hello"), json!("^ello"), false),
            (Matches, json!("hello"), json!("("), false),
            (LessThan, json!(1), json!(1.5), true),
            (LessThanOrEqual, json!(1), json!(1.0), true),
            (GreaterThan, json!(2), json!("1"), false),
            (GreaterThanOrEqual, json!(2), json!(2), true),
            (Before, json!("2017-12-06T00:00:00.000-07:00"), json!(1512543600001_i64), true),
            (After, json!(1512543600001_i64), json!("2017-12-06T07:00:00Z"), true),
            (After, json!("2017-12-06"), json!(0), false),
            (Before, json!(true), json!(0), false),
            (SemVerEqual, json!("2"), json!("2.0.0"), true),
            (SemVerEqual, json!("2.1"), json!("2.1.0"), true),
            (SemVerEqual, json!("2.0.0+build"), json!("2.0.0"), true),
            (SemVerEqual, json!("2-rc1"), json!("2.0.0-rc1"), true),
            (SemVerEqual, json!("02.0.0"), json!("2.0.0"), false),
            (SemVerLessThan, json!("2.0.0-rc1"), json!("2.0.0"), true),
            (SemVerGreaterThan, json!("2.0.1"), json!("2.0"), true),
            (SemVerEqual, json!("v2.0.0"), json!("2.0.0"), false),
            (SemVerEqual, json!("2.1-beta+b"), json!("2.1.0-beta"), true),
            (SemVerEqual, json!("2."), json!("2.0.0"), false),
            (SemVerEqual, json!("2.01"), json!("2.1.0"), false),
            (SemVerEqual, json!("2-"), json!("2.0.0"), false),
            (SemVerEqual, json!("2+"), json!("2.0.0"), false),
            (SegmentMatch, json!("x"), json!("x"), false),
            (Unknown("whatever".into()), json!("x"), json!("x"), false),
        ];
        for (op, actual, value, want) in rows {
            assert_eq!(check(op.clone(), actual.clone(), value.clone()), want, "{op:?} {actual} {value}");
        }
    }

    #[test]
    fn in_uses_a_set_for_long_lists_and_still_compares_numbers() {
        let mut values: Vec<Value> = (0..20).map(|i| json!(format!("k{i}"))).collect();
        values.push(json!(7));
        let prepared = PreparedValues::new(&Operator::In, &values);
        assert!(matches!(prepared, PreparedValues::InSet(_)));
        assert!(match_any(&Operator::In, &prepared, &values, &json!("k13")));
        assert!(!match_any(&Operator::In, &prepared, &values, &json!("k20")));
        assert!(match_any(&Operator::In, &prepared, &values, &json!(7.0)));
    }
}
