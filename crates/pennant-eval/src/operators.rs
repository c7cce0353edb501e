//! Clause operators, with clause values preprocessed once when a clause is loaded.

use std::cmp::Ordering;

use chrono::{DateTime, TimeZone, Utc};
use regex::Regex;
use serde_json::Value;

use crate::keyset::KeySet;
use crate::model::Operator;
use crate::text;
use crate::value::json_equal;

/// Above this many values, `in` looks strings up in a hash set instead of scanning.
const IN_SET_THRESHOLD: usize = 8;

/// Regexes from flag data are bounded so that one rule cannot use unbounded memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A clause's operator with its values in the form the operator needs, parsed once. Values that can never
/// match under the operator are left out: a number under `startsWith`, a bad regex, a string that is not a
/// date (LaunchDarkly's engines skip them too). Matching then needs no operator dispatch and no JSON type checks
/// per clause value.
#[derive(Debug, Clone, Default)]
pub(crate) enum Matcher {
    /// Unknown operators, and `segmentMatch`, which the evaluator handles itself.
    #[default]
    Never,
    /// `in`: strings compare with strings only, and everything else with `json_equal`.
    In {
        strings: Box<[Box<str>]>,
        others: Box<[Value]>,
    },
    /// `in` with many strings.
    InSet {
        strings: KeySet,
        others: Box<[Value]>,
    },
    StartsWith(Box<[Box<str>]>),
    EndsWith(Box<[Box<str>]>),
    Contains(Box<[Box<str>]>),
    Matches(Box<[Regex]>),
    Numeric(Comparison, Box<[f64]>),
    Time {
        before: bool,
        times: Box<[DateTime<Utc>]>,
    },
    SemVer(Ordering, Box<[semver::Version]>),
}

/// A numeric operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    #[inline]
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Comparison::Less => a < b,
            Comparison::LessOrEqual => a <= b,
            Comparison::Greater => a > b,
            Comparison::GreaterOrEqual => a >= b,
        }
    }
}

fn strings(values: &[Value]) -> Box<[Box<str>]> {
    values.iter().filter_map(Value::as_str).map(Box::from).collect()
}

impl Matcher {
    pub(crate) fn new(op: &Operator, values: &[Value]) -> Matcher {
        let numeric = |comparison| Matcher::Numeric(comparison, values.iter().filter_map(Value::as_f64).collect());
        let semver = |want| Matcher::SemVer(want, values.iter().filter_map(to_semver).collect());
        let time = |before| Matcher::Time { before, times: values.iter().filter_map(to_time).collect() };
        match op {
            Operator::In => {
                let list = strings(values);
                let others = values.iter().filter(|v| !v.is_string()).cloned().collect();
                if list.len() > IN_SET_THRESHOLD {
                    Matcher::InSet { strings: KeySet::from_strs(list.iter().map(|s| &**s)), others }
                } else {
                    Matcher::In { strings: list, others }
                }
            }
            Operator::StartsWith => Matcher::StartsWith(strings(values)),
            Operator::EndsWith => Matcher::EndsWith(strings(values)),
            Operator::Contains => Matcher::Contains(strings(values)),
            Operator::Matches => Matcher::Matches(
                values
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(|s| regex::RegexBuilder::new(s).size_limit(REGEX_SIZE_LIMIT).build().ok())
                    .collect(),
            ),
            Operator::LessThan => numeric(Comparison::Less),
            Operator::LessThanOrEqual => numeric(Comparison::LessOrEqual),
            Operator::GreaterThan => numeric(Comparison::Greater),
            Operator::GreaterThanOrEqual => numeric(Comparison::GreaterOrEqual),
            Operator::Before => time(true),
            Operator::After => time(false),
            Operator::SemVerEqual => semver(Ordering::Equal),
            Operator::SemVerLessThan => semver(Ordering::Less),
            Operator::SemVerGreaterThan => semver(Ordering::Greater),
            Operator::SegmentMatch | Operator::Unknown(_) => Matcher::Never,
        }
    }

    /// Whether a single (non-array) context value matches any of the clause's values.
    #[inline]
    pub(crate) fn matches(&self, actual: &Value) -> bool {
        match actual {
            Value::String(s) => self.matches_str(s),
            other => self.matches_non_string(other),
        }
    }

    /// [`Matcher::matches`] for a string value.
    #[inline(always)]
    pub(crate) fn matches_str(&self, s: &str) -> bool {
        match self {
            Matcher::In { strings, .. } => strings.iter().any(|v| text::eq(v, s)),
            Matcher::StartsWith(prefixes) => prefixes.iter().any(|p| text::starts_with(s, p)),
            Matcher::EndsWith(suffixes) => suffixes.iter().any(|p| text::ends_with(s, p)),
            _ => self.matches_str_costly(s),
        }
    }

    /// The operators whose work dwarfs a call, kept out of line so that the cheap ones above stay small enough
    /// to inline into the clause loop.
    #[inline(never)]
    fn matches_str_costly(&self, s: &str) -> bool {
        match self {
            Matcher::In { strings, .. } => strings.iter().any(|v| text::eq(v, s)),
            Matcher::InSet { strings, .. } => strings.contains(s),
            Matcher::StartsWith(prefixes) => prefixes.iter().any(|p| text::starts_with(s, p)),
            Matcher::EndsWith(suffixes) => suffixes.iter().any(|p| text::ends_with(s, p)),
            Matcher::Contains(parts) => parts.iter().any(|p| s.contains(&**p)),
            Matcher::Matches(regexes) => regexes.iter().any(|re| re.is_match(s)),
            Matcher::Time { before, times } => parse_time(s).is_some_and(|t| time_matches(*before, times, t)),
            Matcher::SemVer(want, versions) => semver_matches(s, *want, versions),
            Matcher::Never | Matcher::Numeric(..) => false,
        }
    }

    #[inline(never)]
    fn matches_non_string(&self, actual: &Value) -> bool {
        match self {
            Matcher::In { others, .. } | Matcher::InSet { others, .. } => others.iter().any(|v| json_equal(actual, v)),
            Matcher::Numeric(comparison, numbers) => {
                actual.as_f64().is_some_and(|a| numbers.iter().any(|&b| comparison.holds(a, b)))
            }
            Matcher::Time { before, times } => to_time(actual).is_some_and(|t| time_matches(*before, times, t)),
            _ => false,
        }
    }
}

fn time_matches(before: bool, times: &[DateTime<Utc>], t: DateTime<Utc>) -> bool {
    times.iter().any(|c| if before { t < *c } else { t > *c })
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

/// A date operand: an RFC 3339 date-time string, or a number of milliseconds since the Unix epoch.
fn to_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => parse_time(s),
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
fn to_semver(value: &Value) -> Option<semver::Version> {
    parse_semver(value.as_str()?)
}

fn parse_semver(s: &str) -> Option<semver::Version> {
    let mut version = match semver::Version::parse(s) {
        Ok(v) => v,
        Err(_) => parse_semver_missing_parts(s)?,
    };
    version.build = semver::BuildMetadata::EMPTY;
    Some(version)
}

/// `MAJOR.MINOR.PATCH` and nothing else, the usual form of a context's version, read without the general parser
/// (which accepts the same and costs several times as much). Anything else is left to it.
fn parse_plain_semver(s: &str) -> Option<[u64; 3]> {
    let mut parts = s.split('.');
    let version =
        [numeric_identifier(parts.next()?)?, numeric_identifier(parts.next()?)?, numeric_identifier(parts.next()?)?];
    if parts.next().is_some() {
        return None;
    }
    Some(version)
}

/// SemVer precedence of a version without pre-release against `other`: as `cmp_precedence`, where a version
/// without pre-release ranks above the same version with one.
fn cmp_plain_semver([major, minor, patch]: [u64; 3], other: &semver::Version) -> Ordering {
    (major, minor, patch).cmp(&(other.major, other.minor, other.patch)).then(if other.pre.is_empty() {
        Ordering::Equal
    } else {
        Ordering::Greater
    })
}

/// Whether context version `s` compares as `want` with any of `versions`.
fn semver_matches(s: &str, want: Ordering, versions: &[semver::Version]) -> bool {
    // The plain form is compared without building a `semver::Version`, which costs more than the comparison.
    if let Some(plain) = parse_plain_semver(s) {
        return versions.iter().any(|c| cmp_plain_semver(plain, c) == want);
    }
    parse_semver(s).is_some_and(|v| versions.iter().any(|c| v.cmp_precedence(c) == want))
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
        Matcher::new(&op, &[clause_value]).matches(&actual)
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
            (In, json!(null), json!(null), true),
            (In, json!(false), json!(false), true),
            (In, json!({"a": [1]}), json!({"a": [1.0]}), true),
            (In, json!("1"), json!(1), false),
            (StartsWith, json!("1"), json!(1), false),
            (EndsWith, json!("abc"), json!("abc"), true),
            (EndsWith, json!("bc"), json!("abc"), false),
            (Contains, json!("abc"), json!(""), true),
            (LessThan, json!("1"), json!(2), false),
            (Matches, json!(12), json!("1"), false),
            (SegmentMatch, json!("x"), json!("x"), false),
            (Unknown("whatever".into()), json!("x"), json!("x"), false),
        ];
        for (op, actual, value, want) in rows {
            assert_eq!(check(op.clone(), actual.clone(), value.clone()), want, "{op:?} {actual} {value}");
        }
    }

    #[test]
    fn plain_versions_read_as_the_general_parser_reads_them() {
        let cases = [
            "0.0.0",
            "1.2.3",
            "10.20.30",
            "01.2.3",
            "1.02.3",
            "1.2.03",
            "1.2",
            "1.2.3.4",
            "1.2.3-rc.1",
            "1.2.3+b",
            "1..3",
            ".1.2",
            "1.2.",
            "a.b.c",
            " 1.2.3",
            "18446744073709551615.0.0",
            "18446744073709551616.0.0",
        ];
        let others = ["1.2.3", "1.2.3-rc.1", "1.2.4-rc.1", "1.2.2", "0.9.9", "2.0.0-alpha", "1.2.3+b"]
            .map(|o| semver::Version::parse(o).unwrap());
        for s in cases {
            let general = semver::Version::parse(s).ok().filter(|v| v.pre.is_empty() && v.build.is_empty());
            let plain = parse_plain_semver(s);
            assert_eq!(plain, general.as_ref().map(|v| [v.major, v.minor, v.patch]), "{s:?}");
            if let (Some(plain), Some(general)) = (plain, general) {
                for other in &others {
                    assert_eq!(cmp_plain_semver(plain, other), general.cmp_precedence(other), "{s:?} vs {other}");
                }
            }
        }
    }

    #[test]
    fn in_uses_a_set_for_long_lists_and_still_compares_numbers() {
        let mut values: Vec<Value> = (0..20).map(|i| json!(format!("k{i}"))).collect();
        values.push(json!(7));
        let matcher = Matcher::new(&Operator::In, &values);
        assert!(matches!(matcher, Matcher::InSet { .. }));
        assert!(matcher.matches(&json!("k13")));
        assert!(!matcher.matches(&json!("k20")));
        assert!(matcher.matches(&json!(7.0)));
        assert!(!matcher.matches(&json!("7")));
    }
}
