//! Checks that flag and segment data would evaluate without `MALFORMED_FLAG`, so that a management API can
//! refuse to store it. Evaluation itself never needs this: it reports malformed data as it meets it.

use std::fmt;

use crate::attr_ref::AttrRef;
use crate::model::{Clause, Flag, Operator, Rollout, Segment, Target};
use crate::store::Store;

/// One problem, with a JSON-pointer-like path to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssue {
    /// Where, e.g. `/rules/0/clauses/1/values/0`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

struct Issues(Vec<ValidationIssue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationIssue { path: path.into(), message: message.into() });
    }
}

/// True for keys made of letters, digits, `.`, `_` and `-`, 1 to 256 bytes long.
pub fn is_valid_key(key: &str) -> bool {
    (1..=256).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_kind(kind: &str) -> bool {
    kind != "kind" && kind != "multi" && is_valid_key(kind)
}

/// Validates a flag against the environment's other flags and segments in `store` (which may or may not
/// already contain an older version of this flag; the flag given here is the one checked).
pub fn validate_flag<S: Store + ?Sized>(flag: &Flag, store: &S) -> Vec<ValidationIssue> {
    let mut issues = Issues(Vec::new());
    if !is_valid_key(&flag.key) {
        issues.add("/key", "keys use only letters, digits, '.', '_' and '-' (1 to 256 characters)");
    }
    let n = flag.variations.len();
    let check_index = |issues: &mut Issues, path: String, index: i64| {
        if usize::try_from(index).map_or(true, |i| i >= n) {
            issues.add(path, format!("variation index {index} is out of range (the flag has {n} variations)"));
        }
    };
    if let Some(off) = flag.off_variation {
        check_index(&mut issues, "/offVariation".into(), off);
    }
    for (i, prereq) in flag.prerequisites.iter().enumerate() {
        let path = format!("/prerequisites/{i}");
        if prereq.key == flag.key {
            issues.add(&path, "a flag cannot be its own prerequisite");
            continue;
        }
        match store.flag(&prereq.key).filter(|f| !f.deleted) {
            None => issues.add(format!("{path}/key"), format!("unknown flag {:?}", prereq.key)),
            Some(p) => {
                if usize::try_from(prereq.variation).map_or(true, |v| v >= p.variations.len()) {
                    issues.add(
                        format!("{path}/variation"),
                        format!("flag {:?} has no variation {}", prereq.key, prereq.variation),
                    );
                }
            }
        }
    }
    if let Some(cycle) = prerequisite_cycle(flag, store) {
        issues.add("/prerequisites", format!("prerequisites form a cycle: {}", cycle.join(" → ")));
    }
    for (list, targets) in [("targets", &flag.targets), ("contextTargets", &flag.context_targets)] {
        for (i, t) in targets.iter().enumerate() {
            check_target(&mut issues, &format!("/{list}/{i}"), t);
            check_index(&mut issues, format!("/{list}/{i}/variation"), t.variation);
        }
    }
    for (i, rule) in flag.rules.iter().enumerate() {
        let path = format!("/rules/{i}");
        for (j, clause) in rule.clauses.iter().enumerate() {
            check_clause(&mut issues, &format!("{path}/clauses/{j}"), clause, store, None);
        }
        check_variation_or_rollout(&mut issues, &path, rule.variation, rule.rollout.as_ref(), n);
    }
    check_variation_or_rollout(
        &mut issues,
        "/fallthrough",
        flag.fallthrough.variation,
        flag.fallthrough.rollout.as_ref(),
        n,
    );
    issues.0
}

/// Validates a segment against the environment's other segments in `store`.
pub fn validate_segment<S: Store + ?Sized>(segment: &Segment, store: &S) -> Vec<ValidationIssue> {
    let mut issues = Issues(Vec::new());
    if !is_valid_key(&segment.key) {
        issues.add("/key", "keys use only letters, digits, '.', '_' and '-' (1 to 256 characters)");
    }
    for (list, targets) in
        [("includedContexts", &segment.included_contexts), ("excludedContexts", &segment.excluded_contexts)]
    {
        for (i, t) in targets.iter().enumerate() {
            if !t.context_kind.is_empty() && !valid_kind(&t.context_kind) {
                issues.add(format!("/{list}/{i}/contextKind"), format!("invalid context kind {:?}", t.context_kind));
            }
        }
    }
    for (i, rule) in segment.rules.iter().enumerate() {
        let path = format!("/rules/{i}");
        for (j, clause) in rule.clauses.iter().enumerate() {
            check_clause(&mut issues, &format!("{path}/clauses/{j}"), clause, store, Some(&segment.key));
        }
        if let Some(w) = rule.weight
            && !(0..=100_000).contains(&w)
        {
            issues.add(format!("{path}/weight"), "weight must be between 0 and 100000");
        }
        if let Some(kind) = &rule.rollout_context_kind
            && !valid_kind(kind)
        {
            issues.add(format!("{path}/rolloutContextKind"), format!("invalid context kind {kind:?}"));
        }
        if let Some(b) = &rule.bucket_by {
            let r = if rule.rollout_context_kind.is_some() { AttrRef::parse(b) } else { AttrRef::literal(b) };
            if let Err(e) = r.components() {
                issues.add(format!("{path}/bucketBy"), e.to_string());
            }
        }
    }
    if let Some(cycle) = segment_cycle(segment, store) {
        issues.add("/rules", format!("segments refer to each other in a cycle: {}", cycle.join(" → ")));
    }
    issues.0
}

/// The keys of a `segmentMatch` cycle through `segment` (checked in place of the stored version), if any.
fn segment_cycle<S: Store + ?Sized>(segment: &Segment, store: &S) -> Option<Vec<String>> {
    let refs = |s: &Segment| -> Vec<String> {
        s.rules
            .iter()
            .flat_map(|r| &r.clauses)
            .filter(|c| c.op == Operator::SegmentMatch)
            .flat_map(|c| &c.values)
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let lookup = |key: &str| store.segment(key).filter(|s| !s.deleted).map(|s| (s.key.as_str(), refs(s)));
    find_cycle(&segment.key, refs(segment), &lookup)
}

/// Finds an item by key: its key (borrowed from the data) and the keys it refers to.
type Lookup<'l, 'a> = &'l dyn Fn(&str) -> Option<(&'a str, Vec<String>)>;

/// A cycle back to `root_key`, searched depth first from `root_refs`; `lookup` gives an item's key and the keys it
/// refers to. Paths deeper than `MAX_NESTING_DEPTH` count as cycles (evaluation would refuse them too).
fn find_cycle<'a>(root_key: &'a str, root_refs: Vec<String>, lookup: Lookup<'_, 'a>) -> Option<Vec<String>> {
    fn visit<'a>(
        refs: Vec<String>,
        root_key: &'a str,
        lookup: Lookup<'_, 'a>,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> bool {
        if path.len() > crate::eval::MAX_NESTING_DEPTH {
            return true;
        }
        for key in refs {
            if key == root_key {
                path.push(root_key);
                return true;
            }
            if done.contains(&key.as_str()) || path.contains(&key.as_str()) {
                continue;
            }
            if let Some((next_key, next_refs)) = lookup(&key) {
                path.push(next_key);
                if visit(next_refs, root_key, lookup, path, done) {
                    return true;
                }
                path.pop();
                done.push(next_key);
            }
        }
        false
    }
    let mut path = vec![root_key];
    let mut done = Vec::new();
    visit(root_refs, root_key, lookup, &mut path, &mut done).then(|| path.iter().map(|s| (*s).to_owned()).collect())
}

fn check_target(issues: &mut Issues, path: &str, target: &Target) {
    if let Some(kind) = &target.context_kind
        && !valid_kind(kind)
    {
        issues.add(format!("{path}/contextKind"), format!("invalid context kind {kind:?}"));
    }
}

fn check_variation_or_rollout(
    issues: &mut Issues,
    path: &str,
    variation: Option<i64>,
    rollout: Option<&Rollout>,
    n: usize,
) {
    let in_range = |i: i64| usize::try_from(i).is_ok_and(|i| i < n);
    match (variation, rollout) {
        (Some(v), _) => {
            if !in_range(v) {
                issues.add(
                    format!("{path}/variation"),
                    format!("variation index {v} is out of range (the flag has {n} variations)"),
                );
            }
        }
        (None, None) => issues.add(path, "needs a variation or a rollout"),
        (None, Some(r)) => {
            if r.variations.is_empty() {
                issues.add(format!("{path}/rollout/variations"), "a rollout needs at least one variation");
            }
            let mut sum = 0_i64;
            for (i, wv) in r.variations.iter().enumerate() {
                if !in_range(wv.variation) {
                    issues.add(
                        format!("{path}/rollout/variations/{i}/variation"),
                        format!("variation index {} is out of range", wv.variation),
                    );
                }
                if !(0..=100_000).contains(&wv.weight) {
                    issues.add(format!("{path}/rollout/variations/{i}/weight"), "weight must be between 0 and 100000");
                }
                sum = sum.saturating_add(wv.weight);
            }
            if !r.variations.is_empty() && sum != 100_000 {
                issues.add(format!("{path}/rollout/variations"), format!("weights add up to {sum}, not 100000"));
            }
            if let Some(kind) = &r.context_kind
                && !valid_kind(kind)
            {
                issues.add(format!("{path}/rollout/contextKind"), format!("invalid context kind {kind:?}"));
            }
            if let Some(r) = &r.bucket_by_ref
                && let Err(e) = r.components()
            {
                issues.add(format!("{path}/rollout/bucketBy"), e.to_string());
            }
        }
    }
}

fn check_clause<S: Store + ?Sized>(
    issues: &mut Issues,
    path: &str,
    clause: &Clause,
    store: &S,
    self_segment: Option<&str>,
) {
    if let Some(kind) = &clause.context_kind
        && !valid_kind(kind)
    {
        issues.add(format!("{path}/contextKind"), format!("invalid context kind {kind:?}"));
    }
    match &clause.op {
        Operator::Unknown(op) => issues.add(format!("{path}/op"), format!("unknown operator {op:?}")),
        Operator::SegmentMatch => {
            for (i, v) in clause.values.iter().enumerate() {
                let vpath = format!("{path}/values/{i}");
                match v.as_str() {
                    None => issues.add(vpath, "segmentMatch values are segment keys (strings)"),
                    Some(key) if Some(key) == self_segment => {
                        issues.add(vpath, format!("segment {key:?} cannot match itself"));
                    }
                    Some(key) if store.segment(key).is_none_or(|s| s.deleted) => {
                        issues.add(vpath, format!("unknown segment {key:?}"));
                    }
                    Some(_) => {}
                }
            }
        }
        op => {
            if let Err(e) = clause.attr.components() {
                issues.add(format!("{path}/attribute"), e.to_string());
            }
            if *op == Operator::Matches {
                for (i, v) in clause.values.iter().enumerate() {
                    let ok =
                        v.as_str().is_some_and(|s| regex::RegexBuilder::new(s).size_limit(1 << 20).build().is_ok());
                    if !ok {
                        issues.add(format!("{path}/values/{i}"), "not a valid regular expression");
                    }
                }
            }
        }
    }
}

/// The keys of a prerequisite cycle through `flag`, if there is one.
fn prerequisite_cycle<S: Store + ?Sized>(flag: &Flag, store: &S) -> Option<Vec<String>> {
    let refs = |f: &Flag| -> Vec<String> { f.prerequisites.iter().map(|p| p.key.clone()).collect() };
    let lookup = |key: &str| store.flag(key).filter(|f| !f.deleted).map(|f| (f.key.as_str(), refs(f)));
    find_cycle(&flag.key, refs(flag), &lookup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use serde_json::json;

    fn flag(key: &str, prereqs: &[&str]) -> Flag {
        let prereqs: Vec<_> = prereqs.iter().map(|k| json!({"key": k, "variation": 0})).collect();
        serde_json::from_value(json!({"key": key, "variations": [true, false], "fallthrough": {"variation": 0},
            "prerequisites": prereqs}))
        .unwrap()
    }

    fn segment(key: &str, refs: &[&str]) -> Segment {
        let clauses: Vec<_> =
            refs.iter().map(|k| json!({"attribute": "", "op": "segmentMatch", "values": [k]})).collect();
        serde_json::from_value(json!({"key": key, "rules": [{"clauses": clauses}]})).unwrap()
    }

    #[test]
    fn prerequisite_cycles_are_found_through_the_stored_flags() {
        let mut store = MemoryStore::default();
        store.insert_flag(flag("a", &["b"]));
        store.insert_flag(flag("b", &[]));
        store.insert_flag(flag("c", &["a"]));
        assert!(validate_flag(&flag("b", &["c"]), &store).iter().any(|i| i.message.contains("b → c → a → b")));
        assert!(validate_flag(&flag("b", &[]), &store).is_empty());
        assert!(validate_flag(&flag("a", &["a"]), &store).iter().any(|i| i.message.contains("own prerequisite")));
    }

    #[test]
    fn segment_cycles_are_found_through_the_stored_segments() {
        let mut store = MemoryStore::default();
        store.insert_segment(segment("s1", &["s2"]));
        store.insert_segment(segment("s2", &[]));
        let issues = validate_segment(&segment("s2", &["s1"]), &store);
        assert!(issues.iter().any(|i| i.message.contains("s2 → s1 → s2")), "{issues:?}");
        assert!(validate_segment(&segment("s2", &[]), &store).is_empty());
        let unknown = validate_segment(&segment("s3", &["nope"]), &store);
        assert!(unknown.iter().any(|i| i.message.contains("unknown segment")));
    }
}
