//! Differential property test: Pennant's evaluator against LaunchDarkly's official Rust engine
//! (`launchdarkly-server-sdk-evaluation` 2.2.1) on random, structurally valid LaunchDarkly data.
//!
//! Proptest strategies generate whole environments as JSON: flags (on or off; an off variation in range, out of
//! range or null; 2-4 bool, string and number variations; salts; `targets` and `contextTargets` over small key
//! pools; 0-4 rules whose clauses use every operator, with and without `contextKind`, attribute references only
//! with one, `negate` either way; fixed variations, rollouts and experiments with seeds, `bucketBy`, untracked
//! variations and context kinds; prerequisites), segments (included and excluded user keys, org
//! `includedContexts`/`excludedContexts`, rules with optional weight, `bucketBy` and `rolloutContextKind`, nested
//! `segmentMatch`) and contexts (user, org, multi-kind user+org, old-style user) whose keys and attributes come
//! from the same small pools as the targets and clause values. The same JSON is parsed into both engines, every
//! flag is evaluated for every context, and the value (numbers by value), the variation index and the reason JSON
//! (false-valued optional fields dropped) must agree. In the main property prerequisites and nested segments
//! point only to later flags and segments, so there are no cycles; a second property allows cycles (both
//! engines report them as MALFORMED_FLAG).
//!
//! `cargo test -p pennant-eval --test differential -- --nocapture` prints how often each outcome, operator and
//! deviation occurred. `PROPTEST_CASES` changes the number of cases and `PROPTEST_RNG_SEED` fixes the seed; a
//! failure prints the shrunk environment as JSON.
//!
//! # Where the official engine deviates from the reference
//!
//! LaunchDarkly's Go engine (go-server-sdk-evaluation, summarised in shared/reference/launchdarkly-protocol.md
//! section 2.4) is the specification, and Pennant follows it. The official Rust engine differs in the ways below.
//! The properties recognise or sidestep each one and count it, and a `deviation_N_...` test at the end of this
//! file pins Pennant's result and shows the official engine's.
//!
//! 1. **A prerequisite whose own result is an error confined to that flag** (a variation index out of range, a
//!    rollout without variations). Go: the prerequisite produced no variation, so it failed; the parent serves its
//!    off variation with PREREQUISITE_FAILED. Official: any ERROR from a prerequisite becomes MALFORMED_FLAG for
//!    the parent, and so for the whole evaluation. (Errors Go propagates, such as a prerequisite cycle, a clause
//!    with an invalid attribute reference or a segment cycle, are MALFORMED_FLAG in all three engines.) Recognised
//!    from Pennant's prerequisite events (one with an ERROR result): the official engine must then say
//!    MALFORMED_FLAG, and the comparison is skipped.
//! 2. **A weighted segment rule whose `rolloutContextKind` (default user) the context lacks.** Go
//!    (evaluator_segment.go): no match. Official: buckets the missing context at 0, which is below any positive
//!    weight, so the rule matches. Sidestepped: the official engine gets the data with a clause
//!    `kind in [<rolloutContextKind>]` appended to each weighted segment rule, which by the reference semantics
//!    changes nothing (Pennant is checked to give the same results for it).
//! 3. **A prerequisite evaluated a second time after its own prerequisites failed**, e.g. top requires a and b,
//!    b requires a, and a fails its prerequisite but serves the off variation that top and b require. Go: the
//!    chain of flags being evaluated belongs to each call path, so meeting a again is not a cycle; top falls
//!    through. Official: a flag leaves its chain only once it gets past its prerequisites, so a stays on it and the
//!    second visit is taken for a cycle: MALFORMED_FLAG. Recognised from Pennant's prerequisite events (a flag with
//!    a PREREQUISITE_FAILED result evaluated again), then handled as 1.
//! 4. **An ERROR result from an out-of-range variation index** (off variation, target, rule, fallthrough or
//!    rollout). Go: no variation index. Official: value None and reason MALFORMED_FLAG, but `variation_index`
//!    keeps the bad index. Recognised (an official ERROR with an index) and the index ignored.
//! 5. **A user `contextTargets` entry without values** (standing for the `targets` entry of its variation) when
//!    several `targets` entries have that variation. Go (evaluator.go `anyTargetMatchVariation`): only the first
//!    one. Official: all of them. Sidestepped: the official engine gets the data without the shadowed `targets`
//!    entries (dead code by the reference semantics; Pennant is checked to agree).
//! 6. **A segment rule with a negative weight.** Go: bucket < weight/100000 never holds, no match. Official: a
//!    negative weight counts as no weight, so the rule matches everybody. Sidestepped: the official engine gets
//!    weight 0 instead.
//!
//! # Pennant bugs this test found (fixed; the `pennant_bug_...` tests keep them fixed)
//!
//! - A RULE_MATCH reason for a rule without an `id` was written with `"ruleId": ""`; LaunchDarkly omits an empty
//!   ruleId (go-sdk-common ldreason `WriteToJSONWriter`, and the official engine).
//! - `in` compared integers beyond 2^53 exactly, but LaunchDarkly holds every JSON number as an f64 (Go's ldvalue,
//!   the official engine's AttributeValue), so a clause value 9007199254740993 matches a context value
//!   9007199254740992. Bucketing now converts through f64 likewise.
//!
//! # Deliberately not generated
//!
//! Integers beyond 2^53 (above; the official engine also refuses to bucket by integers above 2^53 - 1, which Go
//! does); fractional epoch milliseconds; user-kind entries in segment `includedContexts`/`excludedContexts` (Go
//! skips those lists for single-kind user contexts, Pennant and the official engine do not); experiments whose
//! weights are all 0 (Go then puts a context that lacks the rollout's kind in the experiment, Pennant and the
//! official engine do not); big segments; deleted flags and segments.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use launchdarkly_server_sdk_evaluation as ld;
use pennant_eval as pn;
use pennant_eval::Store as _;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{Map, Value, json};

// ------------------------------------------------------------------------------------------------------------
// Pools. Keys, attribute values and clause values come from the same small pools so that targets, clauses and
// segment lists actually match the generated contexts.
// ------------------------------------------------------------------------------------------------------------

const USER_KEYS: &[&str] = &["u1", "u2", "u3", "shared"];
const ORG_KEYS: &[&str] = &["o1", "o2", "shared"];
const FLAG_KEYS: &[&str] = &["f0", "f1", "f2", "f3"];
const SEGMENT_KEYS: &[&str] = &["s0", "s1", "s2"];
const STRINGS: &[&str] =
    &["alpha", "Alpha", "alphabet", "beta", "gamma", "", "x@example.com", "y@test.org", "u1", "o1", "shared"];
const EMAILS: &[&str] = &["x@example.com", "y@test.org", "alpha@example.com", "beta"];
const FRAGMENTS: &[&str] = &["a", "al", "alpha", "ha", "@example.com", ".org", "u", "", "sha", "A", "1"];
const CITIES: &[&str] = &["Oslo", "oslo", "Bergen", "New York"];
const SEMVERS: &[&str] = &[
    "1.0.0",
    "2",
    "2.1",
    "2.0.0",
    "2.1.0",
    "2.0.0-rc.1",
    "2.0.0-rc.2",
    "2.0.0-alpha",
    "2.0.0+build.5",
    "10.0.0",
    "2.1-beta",
    "1",
    "v1",
    "1.2.3.4",
    "02.0.0",
];
const REGEXES: &[&str] =
    &["^a", "a$", "lph", "^$", "[0-9]+", "^x@", r"\.org$", "(?i)ALPHA", "b.t", r"^u\d$", "^(o|u)[12]$", "["];
const KIND_VALUES: &[&str] = &["user", "org", "multi", "us", "r", "^o"];
const SALTS: &[&str] = &["salt", "s2", ""];
const RULE_IDS: &[&str] = &["r1", "r2", "rule-abc", "x"];

fn strs(pool: &'static [&'static str]) -> BoxedStrategy<Value> {
    select(pool).prop_map(Value::from).boxed()
}

fn keys(pool: &'static [&'static str]) -> BoxedStrategy<Vec<String>> {
    subsequence(pool, 0..=2).prop_map(|ks| ks.into_iter().map(str::to_owned).collect()).boxed()
}

fn numbers() -> BoxedStrategy<Value> {
    select(vec![json!(0), json!(1), json!(2), json!(2.0), json!(2.5), json!(-1), json!(99), json!(99.0), json!(1000)])
        .boxed()
}

fn dates() -> BoxedStrategy<Value> {
    select(vec![
        json!("2017-12-06T00:00:00Z"),
        json!("2017-12-06T00:00:00.000-07:00"),
        json!("2017-12-06T07:00:00.001Z"),
        json!("2020-01-01T12:30:00+01:00"),
        json!("1970-01-01T00:00:00Z"),
        json!("2017-12-06"),
        json!("not a date"),
        json!(0),
        json!(1_512_543_600_000_i64),
        json!(1_512_543_600_001_i64),
        json!(1_577_880_000_000_i64),
        json!(-1000),
    ])
    .boxed()
}

fn any_scalar() -> BoxedStrategy<Value> {
    prop_oneof![3 => strs(STRINGS), 2 => numbers(), 1 => any::<bool>().prop_map(Value::from)].boxed()
}

// ------------------------------------------------------------------------------------------------------------
// Contexts
// ------------------------------------------------------------------------------------------------------------

/// Custom attributes of one individual context; each is present or not.
fn attributes() -> BoxedStrategy<Map<String, Value>> {
    (
        option::weighted(0.6, strs(STRINGS)),
        option::weighted(0.6, strs(EMAILS)),
        option::weighted(0.6, prop_oneof![4 => numbers(), 1 => strs(STRINGS)]),
        option::weighted(0.5, numbers()),
        option::weighted(0.5, any::<bool>()),
        option::weighted(0.5, vec(strs(STRINGS), 0..=3)),
        option::weighted(0.6, strs(SEMVERS)),
        option::weighted(0.6, dates()),
        option::weighted(0.5, strs(CITIES).prop_map(|c| json!({ "city": c }))),
        option::weighted(0.5, any_scalar()),
        option::weighted(0.3, any::<bool>()),
    )
        .prop_map(|(name, email, age, score, beta, groups, version, created, address, tier, anonymous)| {
            let mut m = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            };
            put("name", name);
            put("email", email);
            put("age", age);
            put("score", score);
            put("beta", beta.map(Value::from));
            put("groups", groups.map(Value::from));
            put("version", version);
            put("created", created);
            put("address", address);
            put("tier", tier);
            put("anonymous", anonymous.map(Value::from));
            m
        })
        .boxed()
}

fn individual(key_pool: &'static [&'static str]) -> BoxedStrategy<Map<String, Value>> {
    (select(key_pool), attributes())
        .prop_map(|(key, mut attrs)| {
            attrs.insert("key".to_owned(), json!(key));
            attrs
        })
        .boxed()
}

fn single(kind: &'static str, key_pool: &'static [&'static str]) -> BoxedStrategy<Value> {
    individual(key_pool)
        .prop_map(move |mut c| {
            c.insert("kind".to_owned(), json!(kind));
            Value::Object(c)
        })
        .boxed()
}

/// A user in the pre-context format: `key`, built-in string attributes, the rest under `custom`.
fn legacy_user() -> BoxedStrategy<Value> {
    individual(USER_KEYS)
        .prop_map(|mut c| {
            let mut user = Map::new();
            for builtin in ["key", "name", "email", "anonymous"] {
                if let Some(v) = c.remove(builtin) {
                    user.insert(builtin.to_owned(), v);
                }
            }
            user.insert("custom".to_owned(), Value::Object(c));
            Value::Object(user)
        })
        .boxed()
}

fn context() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => single("user", USER_KEYS),
        2 => single("org", ORG_KEYS),
        3 => (individual(USER_KEYS), individual(ORG_KEYS))
            .prop_map(|(u, o)| json!({"kind": "multi", "user": u, "org": o})),
        1 => legacy_user(),
    ]
    .boxed()
}

// ------------------------------------------------------------------------------------------------------------
// Clauses
// ------------------------------------------------------------------------------------------------------------

const OPS: &[&str] = &[
    "in",
    "startsWith",
    "endsWith",
    "contains",
    "matches",
    "lessThan",
    "lessThanOrEqual",
    "greaterThan",
    "greaterThanOrEqual",
    "before",
    "after",
    "semVerEqual",
    "semVerLessThan",
    "semVerGreaterThan",
    "segmentMatch",
    "kind",
];

const ANY_ATTRS: &[&str] =
    &["key", "name", "email", "age", "score", "beta", "groups", "version", "created", "tier", "anonymous", "missing"];
const ANY_REFS: &[&str] = &["/address/city", "/address", "/address/zip", "/name", "/groups", "/key"];

/// Attributes a clause with this operator most usefully tests; `with_kind` allows attribute references.
fn attributes_for(op: &str, with_kind: bool) -> Vec<&'static str> {
    let mut attrs: Vec<&'static str> = match op {
        "startsWith" | "endsWith" | "contains" | "matches" => vec!["key", "name", "email", "groups", "tier"],
        "lessThan" | "lessThanOrEqual" | "greaterThan" | "greaterThanOrEqual" => vec!["age", "score", "tier"],
        "before" | "after" => vec!["created", "age"],
        "semVerEqual" | "semVerLessThan" | "semVerGreaterThan" => vec!["version", "tier"],
        _ => ANY_ATTRS.to_vec(),
    };
    if with_kind {
        attrs.extend_from_slice(if matches!(op, "startsWith" | "endsWith" | "contains" | "matches" | "in") {
            &["/address/city", "/address/city", "/name"][..]
        } else {
            &["/age", "/version", "/created"][..]
        });
    }
    attrs
}

fn clause_values(op: &str, segments: &[String]) -> BoxedStrategy<Vec<Value>> {
    match op {
        "in" => vec(
            prop_oneof![
                4 => strs(STRINGS),
                3 => strs(USER_KEYS),
                2 => strs(ORG_KEYS),
                2 => numbers(),
                1 => any::<bool>().prop_map(Value::from),
                1 => strs(CITIES),
                1 => strs(CITIES).prop_map(|c| json!({ "city": c })),
                1 => strs(SEMVERS),
                1 => dates(),
            ],
            0..=10,
        )
        .boxed(),
        "startsWith" | "endsWith" | "contains" => vec(prop_oneof![9 => strs(FRAGMENTS), 1 => numbers()], 0..=3).boxed(),
        "matches" => vec(prop_oneof![9 => strs(REGEXES), 1 => numbers()], 1..=2).boxed(),
        "lessThan" | "lessThanOrEqual" | "greaterThan" | "greaterThanOrEqual" => {
            vec(prop_oneof![9 => numbers(), 1 => Just(json!("2"))], 1..=2).boxed()
        }
        "before" | "after" => vec(dates(), 1..=2).boxed(),
        "semVerEqual" | "semVerLessThan" | "semVerGreaterThan" => vec(strs(SEMVERS), 1..=2).boxed(),
        "segmentMatch" => {
            let mut pool: Vec<Value> = segments.iter().map(|s| json!(s)).collect();
            pool.push(json!("no-such-segment"));
            subsequence(pool.clone(), 1..=pool.len().min(2)).boxed()
        }
        "kind" => vec(strs(KIND_VALUES), 1..=2).boxed(),
        other => unreachable!("no values for {other}"),
    }
}

/// A clause; `segments` are the segment keys a `segmentMatch` may name.
fn clause(segments: Vec<String>) -> BoxedStrategy<Value> {
    let kind = prop_oneof![2 => Just(None), 1 => Just(Some("user")), 1 => Just(Some("org"))];
    let op = prop_oneof![12 => select(OPS), 2 => Just("segmentMatch"), 1 => Just("kind")];
    (op, kind, proptest::bool::weighted(0.25), proptest::bool::weighted(0.2), proptest::bool::weighted(0.02))
        .prop_flat_map(move |(op, kind, negate, any_attr, rare)| {
            let attr = if op == "kind" {
                // `kind` clauses: the operator applies to each of the context's kinds.
                let op = select(&["in", "in", "startsWith", "endsWith", "contains", "matches"][..]);
                let attr = if kind.is_some() { select(&["kind", "/kind"][..]) } else { select(&["kind"][..]) };
                (op, attr).prop_map(|(o, a)| (o.to_owned(), a.to_owned())).boxed()
            } else if op == "segmentMatch" {
                Just((op.to_owned(), "key".to_owned())).boxed()
            } else if rare && any_attr {
                // Invalid attribute references make the evaluation fail with MALFORMED_FLAG.
                let bad = if kind.is_some() { &["", "/", "/address//city", "/a~2b", "/a/"][..] } else { &[""][..] };
                (Just(op.to_owned()), select(bad).prop_map(str::to_owned)).boxed()
            } else {
                let mut attrs = if any_attr { ANY_ATTRS.to_vec() } else { attributes_for(op, kind.is_some()) };
                if any_attr && kind.is_some() {
                    attrs.extend_from_slice(ANY_REFS);
                }
                // An operator from the future never matches.
                let op = if rare { "someFutureOp" } else { op };
                (Just(op.to_owned()), select(attrs).prop_map(str::to_owned)).boxed()
            };
            let values = clause_values(op, &segments);
            (attr, values, Just(kind), Just(negate))
        })
        .prop_map(|((op, attribute), values, kind, negate)| {
            let mut c = json!({"attribute": attribute, "op": op, "values": values, "negate": negate});
            if let Some(k) = kind {
                c["contextKind"] = json!(k);
            }
            c
        })
        .boxed()
}

// ------------------------------------------------------------------------------------------------------------
// Flags
// ------------------------------------------------------------------------------------------------------------

/// A variation index for a flag with `n` variations: in range, and now and then one past the end.
fn variation_index(n: usize) -> BoxedStrategy<i64> {
    let n = n as i64;
    prop_oneof![40 => 0..n, 1 => Just(n)].boxed()
}

fn bucket_by(with_kind: bool) -> BoxedStrategy<Option<String>> {
    let pool: &'static [&'static str] = if with_kind {
        &["key", "name", "email", "age", "score", "tier", "missing", "/address/city", "/age", "/"]
    } else {
        &["key", "name", "email", "age", "score", "tier", "missing"]
    };
    option::weighted(0.4, select(pool).prop_map(str::to_owned)).boxed()
}

/// Weights of `k` buckets: cut points in [0, 100000], so they sum to 100000 (now and then a little less, so
/// that a context can fall past the last bucket).
fn weights(k: usize) -> BoxedStrategy<Vec<i64>> {
    (vec(0..=100_000_i64, k - 1), proptest::bool::weighted(0.05))
        .prop_map(move |(mut cuts, short)| {
            let total = if short { 90_000 } else { 100_000 };
            cuts.iter_mut().for_each(|c| *c = *c * total / 100_000);
            cuts.push(0);
            cuts.push(total);
            cuts.sort_unstable();
            cuts.windows(2).map(|w| w[1] - w[0]).collect()
        })
        .boxed()
}

fn rollout(nvar: usize) -> BoxedStrategy<Value> {
    (1usize..=4)
        .prop_flat_map(move |k| {
            (
                vec(variation_index(nvar), k),
                weights(k),
                vec(proptest::bool::weighted(0.2), k),
                option::of(select(&["rollout", "experiment"][..])),
                option::weighted(0.6, select(&["user", "org"][..])),
                option::weighted(0.3, select(vec![-5_i64, 0, 61, 12_345])),
            )
        })
        .prop_flat_map(|(vars, weights, untracked, kind, context_kind, seed)| {
            (Just((vars, weights, untracked, kind, context_kind, seed)), bucket_by(context_kind.is_some()))
        })
        .prop_map(|((vars, weights, untracked, kind, context_kind, seed), bucket_by)| {
            let variations: Vec<Value> = vars
                .iter()
                .zip(&weights)
                .zip(&untracked)
                .map(|((v, w), u)| {
                    let mut wv = json!({"variation": v, "weight": w});
                    if *u {
                        wv["untracked"] = json!(true);
                    }
                    wv
                })
                .collect();
            let mut r = json!({ "variations": variations });
            if let Some(k) = kind {
                r["kind"] = json!(k);
            }
            if let Some(k) = context_kind {
                r["contextKind"] = json!(k);
            }
            if let Some(s) = seed {
                r["seed"] = json!(s);
            }
            if let Some(b) = bucket_by {
                r["bucketBy"] = json!(b);
            }
            r
        })
        .boxed()
}

/// A rule's or the fallthrough's `{variation}` or `{rollout}` (rarely neither, which is malformed).
fn variation_or_rollout(nvar: usize) -> BoxedStrategy<Map<String, Value>> {
    prop_oneof![
        12 => variation_index(nvar).prop_map(|v| json!({ "variation": v })),
        8 => rollout(nvar).prop_map(|r| json!({ "rollout": r })),
        1 => Just(json!({ "rollout": { "variations": [] } })),
    ]
    .prop_map(|v| match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    })
    .boxed()
}

fn flag_rule(nvar: usize, segments: Vec<String>) -> BoxedStrategy<Value> {
    (
        select(RULE_IDS),
        prop_oneof![
            1 => vec(clause(segments.clone()), 0..=0),
            12 => vec(clause(segments.clone()), 1..=1),
            4 => vec(clause(segments), 2..=3),
        ],
        variation_or_rollout(nvar),
        any::<bool>(),
    )
        .prop_map(|(id, clauses, vr, track)| {
            let mut r = json!({"id": id, "clauses": clauses, "trackEvents": track});
            for (k, v) in vr {
                r[k] = v;
            }
            r
        })
        .boxed()
}

/// `targets` (user keys; variations may repeat) and `contextTargets` (user or org; a user entry without values
/// stands for the `targets` entry of the same variation).
fn targets(nvar: usize) -> BoxedStrategy<(Vec<Value>, Vec<Value>)> {
    let target =
        move || (variation_index(nvar), keys(USER_KEYS)).prop_map(|(v, ks)| json!({"variation": v, "values": ks}));
    let context_target = move || {
        prop_oneof![
            2 => (variation_index(nvar), keys(USER_KEYS))
                .prop_map(|(v, ks)| json!({"contextKind": "user", "variation": v, "values": ks})),
            2 => (variation_index(nvar), keys(ORG_KEYS))
                .prop_map(|(v, ks)| json!({"contextKind": "org", "variation": v, "values": ks})),
            2 => variation_index(nvar).prop_map(|v| json!({"contextKind": "user", "variation": v, "values": []})),
        ]
    };
    (vec(target(), 0..=2), prop_oneof![1 => vec(context_target(), 0..=0), 1 => vec(context_target(), 1..=3)]).boxed()
}

/// Which flags a flag may have as prerequisites: in the acyclic world only later flags, so there are no cycles.
fn prerequisite_pool(index: usize, cyclic: bool) -> Vec<&'static str> {
    let mut pool: Vec<&'static str> =
        FLAG_KEYS.iter().enumerate().filter(|(j, _)| cyclic || *j > index).flat_map(|(_, k)| [*k, *k, *k]).collect();
    pool.push("no-such-flag");
    pool
}

fn segment_pool(index: Option<usize>, cyclic: bool) -> Vec<String> {
    SEGMENT_KEYS
        .iter()
        .enumerate()
        .filter(|(j, _)| cyclic || index.is_none_or(|i| *j > i))
        .map(|(_, k)| (*k).to_owned())
        .collect()
}

fn flag(index: usize, cyclic: bool) -> BoxedStrategy<Value> {
    (2usize..=4)
        .prop_flat_map(move |nvar| {
            let segments = segment_pool(None, cyclic);
            (
                vec(prop_oneof![any::<bool>().prop_map(Value::from), strs(&["red", "green", "blue"]), numbers()], nvar),
                proptest::bool::weighted(0.85),
                prop_oneof![12 => variation_index(nvar).prop_map(Some), 3 => Just(None)],
                select(SALTS),
                targets(nvar),
                prop_oneof![
                    1 => vec(flag_rule(nvar, segments.clone()), 0..=0),
                    6 => vec(flag_rule(nvar, segments), 1..=4),
                ],
                variation_or_rollout(nvar),
                prop_oneof![
                    3 => vec((select(prerequisite_pool(index, cyclic)), 0..=2_i64), 0..=0),
                    1 => vec((select(prerequisite_pool(index, cyclic)), 0..=2_i64), 1..=2),
                ],
            )
        })
        .prop_map(move |(variations, on, off, salt, (targets, context_targets), rules, fallthrough, prereqs)| {
            let prerequisites: Vec<Value> =
                prereqs.into_iter().map(|(k, v)| json!({"key": k, "variation": v})).collect();
            json!({
                "key": FLAG_KEYS[index], "version": 1, "on": on, "salt": salt,
                "variations": variations, "offVariation": off, "fallthrough": fallthrough,
                "targets": targets, "contextTargets": context_targets, "rules": rules,
                "prerequisites": prerequisites, "clientSide": false, "trackEvents": false,
                "trackEventsFallthrough": false, "deleted": false,
            })
        })
        .boxed()
}

// ------------------------------------------------------------------------------------------------------------
// Segments
// ------------------------------------------------------------------------------------------------------------

fn segment_rule(nested: Vec<String>) -> BoxedStrategy<Value> {
    (
        select(RULE_IDS),
        prop_oneof![
            1 => vec(clause(nested.clone()), 0..=0),
            4 => vec(clause(nested.clone()), 1..=1),
            1 => vec(clause(nested), 2..=2),
        ],
        option::weighted(0.5, prop_oneof![8 => 0..=100_000_i64, 1 => Just(-1000_i64)]),
        option::weighted(0.5, select(&["user", "org"][..])),
    )
        .prop_flat_map(|(id, clauses, weight, kind)| (Just((id, clauses, weight, kind)), bucket_by(kind.is_some())))
        .prop_map(|((id, clauses, weight, kind), bucket_by)| {
            let mut r = json!({"id": id, "clauses": clauses});
            if let Some(w) = weight {
                r["weight"] = json!(w);
            }
            if let Some(k) = kind {
                r["rolloutContextKind"] = json!(k);
            }
            if let Some(b) = bucket_by {
                r["bucketBy"] = json!(b);
            }
            r
        })
        .boxed()
}

fn segment(index: usize, cyclic: bool) -> BoxedStrategy<Value> {
    let org_targets = || {
        prop_oneof![
            1 => Just(Vec::new()),
            1 => keys(ORG_KEYS).prop_map(|ks| vec![json!({"contextKind": "org", "values": ks})]),
        ]
    };
    (
        keys(USER_KEYS),
        keys(USER_KEYS),
        org_targets(),
        org_targets(),
        vec(segment_rule(segment_pool(Some(index), cyclic)), 0..=2),
        select(SALTS),
    )
        .prop_map(move |(included, excluded, included_contexts, excluded_contexts, rules, salt)| {
            json!({
                "key": SEGMENT_KEYS[index], "version": 1, "salt": salt,
                "included": included, "excluded": excluded,
                "includedContexts": included_contexts, "excludedContexts": excluded_contexts,
                "rules": rules, "unbounded": false, "deleted": false,
            })
        })
        .boxed()
}

// ------------------------------------------------------------------------------------------------------------
// Worlds: an environment's flags and segments, and the contexts to evaluate every flag for.
// ------------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct World {
    flags: Vec<Value>,
    segments: Vec<Value>,
    contexts: Vec<Value>,
}

impl World {
    fn to_json(&self) -> String {
        serde_json::to_string_pretty(&json!({
            "flags": self.flags, "segments": self.segments, "contexts": self.contexts,
        }))
        .unwrap()
    }
}

fn world(cyclic: bool) -> BoxedStrategy<World> {
    let flags: Vec<_> = (0..FLAG_KEYS.len()).map(|i| flag(i, cyclic)).collect();
    let segments: Vec<_> = (0..SEGMENT_KEYS.len()).map(|i| segment(i, cyclic)).collect();
    (1..=FLAG_KEYS.len(), 0..=SEGMENT_KEYS.len(), flags, segments, vec(context(), 1..=4))
        .prop_map(|(nf, ns, mut flags, mut segments, contexts)| {
            flags.truncate(nf);
            segments.truncate(ns);
            World { flags, segments, contexts }
        })
        .boxed()
}

// ------------------------------------------------------------------------------------------------------------
// The two engines
// ------------------------------------------------------------------------------------------------------------

/// LaunchDarkly's `Store` hands out owned flags and segments.
#[derive(Default)]
struct LdStore {
    flags: HashMap<String, ld::Flag>,
    segments: HashMap<String, ld::Segment>,
}

impl ld::Store for LdStore {
    fn flag(&self, flag_key: &str) -> Option<ld::Flag> {
        self.flags.get(flag_key).cloned()
    }

    fn segment(&self, segment_key: &str) -> Option<ld::Segment> {
        self.segments.get(segment_key).cloned()
    }
}

struct Stores {
    pennant: pn::MemoryStore,
    official: LdStore,
}

fn load(flags: &[Value], segments: &[Value]) -> Result<Stores, String> {
    let mut pennant = pn::MemoryStore::default();
    let mut official = LdStore::default();
    for f in flags {
        let pf: pn::Flag = serde_json::from_value(f.clone()).map_err(|e| format!("Pennant rejects flag {f}: {e}"))?;
        let lf: ld::Flag = serde_json::from_value(f.clone()).map_err(|e| format!("official rejects flag {f}: {e}"))?;
        official.flags.insert(lf.key.clone(), lf);
        pennant.insert_flag(pf);
    }
    for s in segments {
        let ps: pn::Segment =
            serde_json::from_value(s.clone()).map_err(|e| format!("Pennant rejects segment {s}: {e}"))?;
        let ls: ld::Segment =
            serde_json::from_value(s.clone()).map_err(|e| format!("official rejects segment {s}: {e}"))?;
        official.segments.insert(ls.key.clone(), ls);
        pennant.insert_segment(ps);
    }
    Ok(Stores { pennant, official })
}

/// An evaluation result in comparable form: numbers as f64 (the official engine stores them so), the reason as
/// LaunchDarkly JSON without false-valued optional fields.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    value: Option<Value>,
    variation_index: Option<i64>,
    reason: Value,
}

impl Outcome {
    fn reason_kind(&self) -> &str {
        self.reason["kind"].as_str().unwrap_or("")
    }

    fn is_malformed(&self) -> bool {
        self.value.is_none()
            && self.variation_index.is_none()
            && self.reason == json!({"kind": "ERROR", "errorKind": "MALFORMED_FLAG"})
    }
}

fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect()),
        other => other,
    }
}

fn reason_json(reason: impl serde::Serialize) -> Value {
    let mut r = serde_json::to_value(reason).unwrap();
    if let Value::Object(m) = &mut r {
        m.retain(|_, v| *v != json!(false));
    }
    r
}

/// One prerequisite evaluation Pennant reported: the prerequisite's key and its reason's kind.
#[derive(Debug, Clone)]
struct PrereqEvent {
    key: String,
    reason_kind: &'static str,
}

fn eval_pennant(store: &pn::MemoryStore, key: &str, context: &pn::Context) -> (Outcome, Vec<PrereqEvent>) {
    let flag = store.flag(key).unwrap();
    let mut events = Vec::new();
    let mut recorder = |e: pn::PrerequisiteEvent<'_>| {
        events.push(PrereqEvent { key: e.prerequisite_flag.key.clone(), reason_kind: e.detail.reason.kind() });
    };
    let d = pn::evaluate_with_recorder(store, flag, context, &mut recorder);
    let outcome = Outcome {
        value: d.value.cloned().map(numbers_as_f64),
        variation_index: d.variation_index.map(|i| i as i64),
        reason: reason_json(d.reason),
    };
    (outcome, events)
}

fn eval_official(store: &LdStore, key: &str, context: &ld::Context) -> Outcome {
    let flag = &store.flags[key];
    let d = ld::evaluate(store, flag, context, None);
    Outcome {
        value: d.value.map(|v| numbers_as_f64(serde_json::to_value(v).unwrap())),
        variation_index: d.variation_index.map(|i| i as i64),
        reason: reason_json(&d.reason),
    }
}

// ------------------------------------------------------------------------------------------------------------
// Known deviations of the official engine, detected per evaluation
// ------------------------------------------------------------------------------------------------------------

/// A rewrite of the data that means the same under the reference semantics but steers the official engine
/// clear of one of its deviations.
struct Rewrite {
    deviation: Deviation,
    flag: fn(&Value) -> Value,
    segment: fn(&Value) -> Value,
}

const REWRITES: &[Rewrite] = &[
    Rewrite {
        deviation: Deviation::SegmentRolloutKindAbsent,
        flag: Value::clone,
        segment: guard_weighted_segment_rules,
    },
    Rewrite {
        deviation: Deviation::NegativeSegmentWeight,
        flag: Value::clone,
        segment: clamp_negative_segment_weights,
    },
    Rewrite { deviation: Deviation::ShadowedTargets, flag: drop_shadowed_targets, segment: Value::clone },
];

/// Deviation 2: a guard clause `kind in [rolloutContextKind]` after a weighted segment rule's clauses. Under the
/// reference semantics it changes nothing (a context without that kind is not in the rollout anyway, and the
/// original clauses still run first, so their errors surface as before; rules with an invalid `bucketBy`, which
/// fail whatever the context, are left alone); it keeps the official engine from bucketing an absent context at 0
/// and matching.
fn guard_weighted_segment_rules(segment: &Value) -> Value {
    let mut s = segment.clone();
    for rule in s["rules"].as_array_mut().unwrap() {
        // An invalid bucketBy fails the evaluation before the context's kinds are looked at; the guard must not
        // hide that.
        let bad_reference = rule.get("rolloutContextKind").is_some()
            && rule
                .get("bucketBy")
                .and_then(Value::as_str)
                .is_some_and(|b| b.is_empty() || b.contains("//") || b.ends_with('/'));
        if rule.get("weight").is_some_and(|w| !w.is_null()) && !bad_reference {
            let kind = rule.get("rolloutContextKind").and_then(Value::as_str).unwrap_or("user").to_owned();
            let guard = json!({"attribute": "kind", "op": "in", "values": [kind], "negate": false});
            rule["clauses"].as_array_mut().unwrap().push(guard);
        }
    }
    s
}

/// Deviation 6: a negative segment rule weight includes nobody, exactly as a weight of 0 does.
fn clamp_negative_segment_weights(segment: &Value) -> Value {
    let mut s = segment.clone();
    for rule in s["rules"].as_array_mut().unwrap() {
        if rule.get("weight").and_then(Value::as_i64).is_some_and(|w| w < 0) {
            rule["weight"] = json!(0);
        }
    }
    s
}

/// Deviation 5: when `contextTargets` is present, only the first `targets` entry of each variation can ever be
/// consulted (through a user entry without values), so later entries with the same variation are dead under the
/// reference semantics and are dropped.
fn drop_shadowed_targets(flag: &Value) -> Value {
    let mut f = flag.clone();
    if f["contextTargets"].as_array().is_some_and(|t| !t.is_empty()) {
        let mut seen = Vec::new();
        f["targets"].as_array_mut().unwrap().retain(|t| {
            let first = !seen.contains(&t["variation"]);
            seen.push(t["variation"].clone());
            first
        });
    }
    f
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Deviation {
    /// 1: a prerequisite's own, confined error makes the official engine fail the whole evaluation.
    PrerequisiteError,
    /// 2: a weighted segment rule whose rollout kind the context lacks matches in the official engine.
    SegmentRolloutKindAbsent,
    /// 3: a prerequisite evaluated again after it failed its own prerequisites is a "cycle" to the official
    /// engine.
    PrerequisiteChainLeak,
    /// 4: the official engine's ERROR results from an out-of-range index keep that index.
    ErrorKeepsVariationIndex,
    /// 5: a user `contextTargets` entry without values consults every `targets` entry of its variation.
    ShadowedTargets,
    /// 6: a segment rule with a negative weight includes everybody in the official engine.
    NegativeSegmentWeight,
}

/// Deviations 1 and 3, recognised from the prerequisite evaluations Pennant reports (in evaluation order).
fn prerequisite_deviation(events: &[PrereqEvent]) -> Option<Deviation> {
    for (i, e) in events.iter().enumerate() {
        if e.reason_kind == "ERROR" {
            return Some(Deviation::PrerequisiteError);
        }
        // The official engine leaves a flag whose own prerequisites failed on its chain of flags being evaluated.
        if events[..i].iter().any(|p| p.key == e.key && p.reason_kind == "PREREQUISITE_FAILED") {
            return Some(Deviation::PrerequisiteChainLeak);
        }
    }
    None
}

#[derive(Debug, Default)]
struct Stats {
    evaluations: usize,
    compared: usize,
    reasons: BTreeMap<String, usize>,
    in_experiment: usize,
    /// Operators of every clause of every matched rule (a matched rule means each of its clauses matched).
    matched_ops: BTreeMap<String, usize>,
    deviations: BTreeMap<Deviation, usize>,
}

fn check_world(world: &World, stats: &mut Stats) -> Result<(), TestCaseError> {
    // Stage 0 is the generated data; each later stage applies one more rewrite. Pennant must give the same results
    // at every stage (the rewrites mean the same by the reference semantics); the official engine is compared at
    // the last stage, and a change between two of its stages counts against that rewrite's deviation.
    let mut flags = world.flags.clone();
    let mut segments = world.segments.clone();
    let mut stages = vec![load(&flags, &segments).map_err(TestCaseError::fail)?];
    for rewrite in REWRITES {
        flags = flags.iter().map(rewrite.flag).collect();
        segments = segments.iter().map(rewrite.segment).collect();
        stages.push(load(&flags, &segments).map_err(TestCaseError::fail)?);
    }
    for context in &world.contexts {
        let pn_context = pn::Context::from_value(context.clone())
            .map_err(|e| TestCaseError::fail(format!("Pennant rejects context {context}: {e}")))?;
        let ld_context: ld::Context = serde_json::from_value(context.clone())
            .map_err(|e| TestCaseError::fail(format!("official rejects context {context}: {e}")))?;
        for flag in &world.flags {
            let key = flag["key"].as_str().unwrap();
            stats.evaluations += 1;
            let (pennant, events) = eval_pennant(&stages[0].pennant, key, &pn_context);
            let mut official = eval_official(&stages[0].official, key, &ld_context);
            for (rewrite, stage) in REWRITES.iter().zip(&stages[1..]) {
                let (pennant_rewritten, _) = eval_pennant(&stage.pennant, key, &pn_context);
                prop_assert_eq!(
                    &pennant,
                    &pennant_rewritten,
                    "the rewrite for {:?} changed Pennant's result (flag {}, context {})",
                    rewrite.deviation,
                    key,
                    context
                );
                let official_rewritten = eval_official(&stage.official, key, &ld_context);
                if official_rewritten != official {
                    *stats.deviations.entry(rewrite.deviation).or_default() += 1;
                    official = official_rewritten;
                }
            }
            if let Some(deviation) = prerequisite_deviation(&events) {
                prop_assert!(
                    official.is_malformed(),
                    "{:?} should make the official engine report MALFORMED_FLAG; it gave {:?} (flag {}, context {})",
                    deviation,
                    official,
                    key,
                    context
                );
                *stats.deviations.entry(deviation).or_default() += 1;
                continue;
            }
            if official.reason_kind() == "ERROR" && official.value.is_none() && official.variation_index.is_some() {
                *stats.deviations.entry(Deviation::ErrorKeepsVariationIndex).or_default() += 1;
                official.variation_index = None;
            }
            prop_assert_eq!(&pennant, &official, "engines disagree on flag {} for context {}", key, context);
            stats.compared += 1;
            *stats.reasons.entry(pennant.reason_kind().to_owned()).or_default() += 1;
            if pennant.reason.get("inExperiment") == Some(&json!(true)) {
                stats.in_experiment += 1;
            }
            if let Some(index) = pennant.reason.get("ruleIndex").and_then(Value::as_u64) {
                for c in flag["rules"][index as usize]["clauses"].as_array().unwrap() {
                    *stats.matched_ops.entry(c["op"].as_str().unwrap().to_owned()).or_default() += 1;
                }
            }
        }
    }
    Ok(())
}

/// A property failure, shown as plain text (the shrunk world is pretty-printed JSON).
struct Failure(String);

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs `cases` random worlds (`PROPTEST_CASES` overrides; `PROPTEST_RNG_SEED` fixes the seed) and returns the
/// statistics.
fn run_property(cyclic: bool, cases: u32) -> Result<Stats, Failure> {
    let defaults = Config::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { defaults.cases } else { cases };
    let config = Config { cases, failure_persistence: None, ..defaults };
    let mut runner = TestRunner::new(config);
    let stats = RefCell::new(Stats::default());
    match runner.run(&world(cyclic), |w| check_world(&w, &mut stats.borrow_mut())) {
        Ok(()) => Ok(stats.into_inner()),
        Err(TestError::Fail(why, w)) => Err(Failure(format!("{why}\nminimal failing world:\n{}", w.to_json()))),
        Err(e) => Err(Failure(e.to_string())),
    }
}

#[test]
fn engines_agree_on_random_acyclic_data() {
    let start = std::time::Instant::now();
    let stats = run_property(false, 3_000).expect("the engines disagree");
    eprintln!("acyclic: {stats:#?}\nin {:?}", start.elapsed());
    // The generators must keep reaching every outcome, or the comparison proves little.
    for kind in ["OFF", "FALLTHROUGH", "TARGET_MATCH", "RULE_MATCH", "PREREQUISITE_FAILED", "ERROR"] {
        assert!(stats.reasons.get(kind).copied().unwrap_or(0) > 0, "no {kind} results: {stats:#?}");
    }
    assert!(stats.in_experiment > 0, "no experiment results: {stats:#?}");
    for op in OPS.iter().filter(|op| **op != "kind") {
        assert!(stats.matched_ops.get(*op).copied().unwrap_or(0) > 0, "no rule matched with {op}: {stats:#?}");
    }
    assert!(stats.compared * 10 > stats.evaluations * 9, "too many comparisons skipped: {stats:#?}");
}

#[test]
fn engines_agree_on_random_data_with_cycles() {
    let stats = run_property(true, 1_000).expect("the engines disagree");
    eprintln!("cyclic: {stats:#?}");
    assert!(stats.reasons.get("ERROR").copied().unwrap_or(0) > 0);
}

// ------------------------------------------------------------------------------------------------------------
// Each documented difference, fixed: Pennant's (reference) result, and the official engine's different one.
// ------------------------------------------------------------------------------------------------------------

/// A flag with variations ["off", "fall", "a", "b"], off variation 0 and fallthrough 1, plus `extra` fields, with
/// every field the official engine requires.
fn base_flag(key: &str, extra: Value) -> Value {
    let mut f = json!({
        "key": key, "version": 1, "on": true, "salt": "salt", "offVariation": 0,
        "fallthrough": {"variation": 1}, "variations": ["off", "fall", "a", "b"],
        "targets": [], "contextTargets": [], "rules": [], "prerequisites": [],
        "clientSide": false, "trackEvents": false, "trackEventsFallthrough": false, "deleted": false,
    });
    for (k, v) in extra.as_object().unwrap() {
        f[k] = v.clone();
    }
    f
}

fn base_segment(key: &str, rules: Value) -> Value {
    json!({"key": key, "version": 1, "salt": "salt", "included": [], "excluded": [], "rules": rules})
}

/// A rule serving variation 2 ("a") to members of segment `segment`.
fn segment_rule_json(segment: &str) -> Value {
    json!([{"id": "in-segment", "variation": 2, "trackEvents": false,
        "clauses": [{"attribute": "key", "op": "segmentMatch", "values": [segment], "negate": false}]}])
}

/// Evaluates `flag_key` in both engines: (Pennant, official), the official one exactly as it comes.
fn both(flags: &[Value], segments: &[Value], flag_key: &str, context: Value) -> (Outcome, Outcome) {
    let stores = load(flags, segments).unwrap();
    let (pennant, _) = eval_pennant(&stores.pennant, flag_key, &pn::Context::from_value(context.clone()).unwrap());
    let official = eval_official(&stores.official, flag_key, &serde_json::from_value(context).unwrap());
    (pennant, official)
}

fn outcome(value: Option<Value>, variation_index: Option<i64>, reason: Value) -> Outcome {
    Outcome { value: value.map(numbers_as_f64), variation_index, reason }
}

fn malformed() -> Outcome {
    outcome(None, None, json!({"kind": "ERROR", "errorKind": "MALFORMED_FLAG"}))
}

#[test]
fn deviation_1_a_prerequisite_with_its_own_error_just_fails() {
    // The prerequisite's fallthrough names variation 9 of 4.
    let flags = [
        base_flag("parent", json!({"prerequisites": [{"key": "child", "variation": 1}]})),
        base_flag("child", json!({"fallthrough": {"variation": 9}})),
    ];
    let user = json!({"kind": "user", "key": "u1"});
    let (pennant, official) = both(&flags, &[], "parent", user.clone());
    let failed = json!({"kind": "PREREQUISITE_FAILED", "prerequisiteKey": "child"});
    assert_eq!(pennant, outcome(Some(json!("off")), Some(0), failed));
    assert_eq!(official, malformed());
    // The prerequisite's own result is the same in both.
    let (pennant, official) = both(&flags, &[], "child", user);
    assert_eq!(pennant, malformed());
    assert_eq!(official, outcome(None, Some(9), malformed().reason), "(with deviation 4)");
}

#[test]
fn deviation_1_but_a_prerequisite_with_a_bad_clause_fails_everything_in_both() {
    let bad_clause = json!([{"id": "r", "variation": 0, "trackEvents": false,
        "clauses": [{"contextKind": "user", "attribute": "/", "op": "in", "values": ["x"], "negate": false}]}]);
    let flags = [
        base_flag("parent", json!({"prerequisites": [{"key": "child", "variation": 1}]})),
        base_flag("child", json!({ "rules": bad_clause })),
    ];
    let (pennant, official) = both(&flags, &[], "parent", json!({"kind": "user", "key": "u1"}));
    assert_eq!(pennant, malformed());
    assert_eq!(official, malformed());
}

#[test]
fn deviation_2_a_segment_rollout_for_an_absent_kind_includes_nobody() {
    let flags = [base_flag("f", json!({ "rules": segment_rule_json("s") }))];
    let segments =
        [base_segment("s", json!([{"id": "everyone", "clauses": [], "weight": 100_000, "rolloutContextKind": "org"}]))];
    let (pennant, official) = both(&flags, &segments, "f", json!({"kind": "user", "key": "u1"}));
    assert_eq!(pennant, outcome(Some(json!("fall")), Some(1), json!({"kind": "FALLTHROUGH"})));
    let rule_match = json!({"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "in-segment"});
    assert_eq!(official, outcome(Some(json!("a")), Some(2), rule_match.clone()));
    // With the org present both include it.
    let multi = json!({"kind": "multi", "user": {"key": "u1"}, "org": {"key": "o1"}});
    let (pennant, official) = both(&flags, &segments, "f", multi);
    assert_eq!(pennant, outcome(Some(json!("a")), Some(2), rule_match));
    assert_eq!(official, pennant);
}

#[test]
fn deviation_3_a_prerequisite_met_twice_is_not_a_cycle() {
    // "a" fails its own prerequisite (which does not exist) and serves its off variation 0, which is what "top"
    // and "b" require of it; "top" then meets "a" again through "b".
    let flags = [
        base_flag("top", json!({"prerequisites": [{"key": "a", "variation": 0}, {"key": "b", "variation": 1}]})),
        base_flag("a", json!({"prerequisites": [{"key": "no-such-flag", "variation": 0}]})),
        base_flag("b", json!({"prerequisites": [{"key": "a", "variation": 0}]})),
    ];
    let user = json!({"kind": "user", "key": "u1"});
    let (pennant, official) = both(&flags, &[], "top", user.clone());
    assert_eq!(pennant, outcome(Some(json!("fall")), Some(1), json!({"kind": "FALLTHROUGH"})));
    assert_eq!(official, malformed());
    // Evaluated on its own, "b" is fine in both.
    let (pennant, official) = both(&flags, &[], "b", user);
    assert_eq!(pennant, outcome(Some(json!("fall")), Some(1), json!({"kind": "FALLTHROUGH"})));
    assert_eq!(official, pennant);
}

#[test]
fn deviation_4_an_error_result_has_no_variation_index() {
    let flags = [
        base_flag("fallthrough", json!({"fallthrough": {"variation": 7}})),
        base_flag("off", json!({"on": false, "offVariation": 4})),
    ];
    let user = json!({"kind": "user", "key": "u1"});
    let (pennant, official) = both(&flags, &[], "fallthrough", user.clone());
    assert_eq!(pennant, malformed());
    assert_eq!(official, outcome(None, Some(7), malformed().reason));
    let (pennant, official) = both(&flags, &[], "off", user);
    assert_eq!(pennant, malformed());
    assert_eq!(official, outcome(None, Some(4), malformed().reason));
}

#[test]
fn deviation_5_a_user_context_target_without_values_uses_the_first_targets_entry_only() {
    let flags = [base_flag(
        "f",
        json!({
            "targets": [{"variation": 2, "values": ["u1"]}, {"variation": 2, "values": ["u2"]}],
            "contextTargets": [{"contextKind": "user", "variation": 2, "values": []}],
        }),
    )];
    let (pennant, official) = both(&flags, &[], "f", json!({"kind": "user", "key": "u2"}));
    assert_eq!(pennant, outcome(Some(json!("fall")), Some(1), json!({"kind": "FALLTHROUGH"})));
    assert_eq!(official, outcome(Some(json!("a")), Some(2), json!({"kind": "TARGET_MATCH"})));
    // Without contextTargets every targets entry counts, in both.
    let mut old_style = flags[0].clone();
    old_style["contextTargets"] = json!([]);
    let (pennant, official) = both(&[old_style], &[], "f", json!({"kind": "user", "key": "u2"}));
    assert_eq!(pennant, outcome(Some(json!("a")), Some(2), json!({"kind": "TARGET_MATCH"})));
    assert_eq!(official, pennant);
}

#[test]
fn deviation_6_a_negative_segment_rule_weight_includes_nobody() {
    let flags = [base_flag("f", json!({ "rules": segment_rule_json("s") }))];
    let segments = [base_segment("s", json!([{"id": "r", "clauses": [], "weight": -1000}]))];
    let (pennant, official) = both(&flags, &segments, "f", json!({"kind": "user", "key": "u1"}));
    assert_eq!(pennant, outcome(Some(json!("fall")), Some(1), json!({"kind": "FALLTHROUGH"})));
    let rule_match = json!({"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "in-segment"});
    assert_eq!(official, outcome(Some(json!("a")), Some(2), rule_match));
}

#[test]
fn pennant_bug_rule_match_without_rule_id() {
    let flags = [base_flag(
        "f",
        json!({"rules": [{"variation": 2, "trackEvents": false,
            "clauses": [{"attribute": "key", "op": "in", "values": ["u1"], "negate": false}]}]}),
    )];
    let (pennant, official) = both(&flags, &[], "f", json!({"kind": "user", "key": "u1"}));
    let want = outcome(Some(json!("a")), Some(2), json!({"kind": "RULE_MATCH", "ruleIndex": 0}));
    assert_eq!(official, want);
    assert_eq!(pennant, want);
}

#[test]
fn pennant_bug_in_compares_integers_beyond_2_pow_53_exactly() {
    // 9007199254740993 is not an f64: LaunchDarkly (Go's ldvalue, like the official Rust engine) reads it as
    // 9007199254740992, so the clause matches a context whose attribute is 9007199254740992.
    let flags = [base_flag(
        "f",
        json!({"rules": [{"id": "r", "variation": 2, "trackEvents": false,
            "clauses": [{"attribute": "n", "op": "in", "values": [9_007_199_254_740_993_i64], "negate": false}]}]}),
    )];
    let context = json!({"kind": "user", "key": "u1", "n": 9_007_199_254_740_992_i64});
    let (pennant, official) = both(&flags, &[], "f", context);
    let want = outcome(Some(json!("a")), Some(2), json!({"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "r"}));
    assert_eq!(official, want);
    assert_eq!(pennant, want);
}
