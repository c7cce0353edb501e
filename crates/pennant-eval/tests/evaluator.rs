//! Evaluation semantics, case by case (LaunchDarkly's Go engine is the reference).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pennant_eval::{
    AllFlagsOptions, Context, ContextError, Detail, ErrorKind, Flag, MAX_NESTING_DEPTH, MemoryStore, PrerequisiteEvent,
    Reason, Segment, ValueType, all_flags_state, bucket_value, evaluate, evaluate_with_recorder, variation_detail,
};
use serde_json::{Value, json};

fn flag(v: Value) -> Flag {
    serde_json::from_value(v).unwrap()
}

fn segment(v: Value) -> Segment {
    serde_json::from_value(v).unwrap()
}

fn ctx(v: Value) -> Context {
    Context::from_value(v).unwrap()
}

fn store(flags: Vec<Value>, segments: Vec<Value>) -> MemoryStore {
    let mut s = MemoryStore::default();
    flags.into_iter().for_each(|f| s.insert_flag(flag(f)));
    segments.into_iter().for_each(|g| s.insert_segment(segment(g)));
    s
}

fn eval<'a>(s: &'a MemoryStore, key: &str, c: &Context) -> Detail<'a> {
    use pennant_eval::Store;
    evaluate(s, s.flag(key).unwrap(), c)
}

fn reason_json(d: &Detail<'_>) -> Value {
    serde_json::to_value(d.reason).unwrap()
}

/// A flag with variations ["off", "fall", "a", "b"], off variation 0 and fallthrough 1, plus `extra` fields.
fn basic(key: &str, extra: Value) -> Value {
    let mut f = json!({"key": key, "version": 1, "on": true, "salt": "salt", "offVariation": 0,
        "fallthrough": {"variation": 1}, "variations": ["off", "fall", "a", "b"]});
    for (k, v) in extra.as_object().unwrap() {
        f[k] = v.clone();
    }
    f
}

fn user(key: &str) -> Context {
    ctx(json!({"kind": "user", "key": key}))
}

#[test]
fn off_flag_serves_off_variation_or_nothing() {
    let s =
        store(vec![basic("f", json!({"on": false})), basic("g", json!({"on": false, "offVariation": null}))], vec![]);
    let d = eval(&s, "f", &user("u"));
    assert_eq!((d.value, d.variation_index, d.reason), (Some(&json!("off")), Some(0), Reason::Off));
    let d = eval(&s, "g", &user("u"));
    assert_eq!((d.value, d.variation_index, d.reason), (None, None, Reason::Off));
}

#[test]
fn out_of_range_variations_are_malformed() {
    for extra in [
        json!({"on": false, "offVariation": 9}),
        json!({"on": false, "offVariation": -1}),
        json!({"fallthrough": {"variation": 4}}),
        json!({"fallthrough": {}}),
        json!({"fallthrough": {"rollout": {"variations": []}}}),
        json!({"fallthrough": {"rollout": {"variations": [{"variation": 7, "weight": 100000}]}}}),
    ] {
        let s = store(vec![basic("f", extra.clone())], vec![]);
        let d = eval(&s, "f", &user("u"));
        assert_eq!(d.reason, Reason::Error { error_kind: ErrorKind::MalformedFlag }, "{extra}");
        assert_eq!((d.value, d.variation_index), (None, None));
    }
}

#[test]
fn prerequisites_pass_fail_and_report_events() {
    let s = store(
        vec![
            basic("parent", json!({"prerequisites": [{"key": "p1", "variation": 2}, {"key": "p2", "variation": 1}]})),
            basic("p1", json!({"fallthrough": {"variation": 2}})),
            basic("p2", json!({})),
            basic("off-prereq", json!({"on": false, "offVariation": 2})),
            basic("needs-off", json!({"prerequisites": [{"key": "off-prereq", "variation": 2}]})),
            basic("needs-missing", json!({"prerequisites": [{"key": "nope", "variation": 0}]})),
            basic("needs-wrong", json!({"prerequisites": [{"key": "p1", "variation": 3}]})),
        ],
        vec![],
    );
    let mut events: Vec<(String, String, Option<usize>)> = Vec::new();
    let mut rec = |e: PrerequisiteEvent<'_>| {
        events.push((e.target_flag.key.clone(), e.prerequisite_flag.key.clone(), e.detail.variation_index))
    };
    use pennant_eval::Store;
    let d = evaluate_with_recorder(&s, s.flag("parent").unwrap(), &user("u"), &mut rec);
    assert_eq!(d.reason, Reason::Fallthrough { in_experiment: false });
    assert_eq!(events, vec![("parent".into(), "p1".into(), Some(2)), ("parent".into(), "p2".into(), Some(1))]);
    // An off prerequisite fails even when its off variation is the required one.
    let d = eval(&s, "needs-off", &user("u"));
    assert_eq!(d.reason, Reason::PrerequisiteFailed { prerequisite_key: "off-prereq" });
    assert_eq!(d.value, Some(&json!("off")));
    assert_eq!(eval(&s, "needs-missing", &user("u")).reason, Reason::PrerequisiteFailed { prerequisite_key: "nope" });
    assert_eq!(eval(&s, "needs-wrong", &user("u")).reason, Reason::PrerequisiteFailed { prerequisite_key: "p1" });
}

#[test]
fn prerequisite_cycles_and_errors() {
    let s = store(
        vec![
            basic("a", json!({"prerequisites": [{"key": "b", "variation": 1}]})),
            basic("b", json!({"prerequisites": [{"key": "a", "variation": 1}]})),
            basic("self", json!({"prerequisites": [{"key": "self", "variation": 1}]})),
            // The prerequisite's own result is an error confined to it: the parent's prerequisite just fails.
            basic("bad-index", json!({"fallthrough": {"variation": 99}})),
            basic("needs-bad-index", json!({"prerequisites": [{"key": "bad-index", "variation": 1}]})),
            // A bad clause in the prerequisite fails the whole evaluation.
            basic(
                "bad-clause",
                json!({"rules": [{"id": "r", "variation": 2,
                "clauses": [{"contextKind": "user", "attribute": "//", "op": "in", "values": ["x"]}]}]}),
            ),
            basic("needs-bad-clause", json!({"prerequisites": [{"key": "bad-clause", "variation": 1}]})),
        ],
        vec![],
    );
    let malformed = Reason::Error { error_kind: ErrorKind::MalformedFlag };
    assert_eq!(eval(&s, "a", &user("u")).reason, malformed);
    assert_eq!(eval(&s, "self", &user("u")).reason, malformed);
    assert_eq!(
        eval(&s, "needs-bad-index", &user("u")).reason,
        Reason::PrerequisiteFailed { prerequisite_key: "bad-index" }
    );
    assert_eq!(eval(&s, "needs-bad-clause", &user("u")).reason, malformed);
}

#[test]
fn very_deep_prerequisite_chains_are_malformed_not_a_crash() {
    let n = MAX_NESTING_DEPTH + 5;
    let flags = (0..n)
        .map(|i| {
            if i + 1 < n {
                basic(&format!("f{i}"), json!({"prerequisites": [{"key": format!("f{}", i + 1), "variation": 1}]}))
            } else {
                basic(&format!("f{i}"), json!({}))
            }
        })
        .collect();
    let s = store(flags, vec![]);
    assert_eq!(eval(&s, "f0", &user("u")).reason, Reason::Error { error_kind: ErrorKind::MalformedFlag });
    // Within the limit it evaluates.
    assert_eq!(eval(&s, &format!("f{}", n - 10), &user("u")).reason, Reason::Fallthrough { in_experiment: false });
}

#[test]
fn targets_and_context_targets_keep_their_order() {
    let f = basic(
        "f",
        json!({
            "targets": [{"variation": 2, "values": ["u1"]}, {"variation": 3, "values": ["u2"]}],
            "contextTargets": [
                {"contextKind": "org", "variation": 3, "values": ["o1"]},
                {"contextKind": "user", "variation": 2, "values": []},
                {"contextKind": "user", "variation": 3, "values": []}
            ]
        }),
    );
    let s = store(vec![f], vec![]);
    assert_eq!(eval(&s, "f", &user("u1")).value, Some(&json!("a")));
    assert_eq!(eval(&s, "f", &user("u2")).value, Some(&json!("b")));
    assert_eq!(eval(&s, "f", &user("zz")).reason, Reason::Fallthrough { in_experiment: false });
    // In a multi-kind context the org target comes first.
    let multi = ctx(json!({"kind": "multi", "user": {"key": "u1"}, "org": {"key": "o1"}}));
    let d = eval(&s, "f", &multi);
    assert_eq!((d.value, d.reason), (Some(&json!("b")), Reason::TargetMatch));
}

#[test]
fn rules_clauses_and_negation() {
    let rule = |id: &str, variation: i64, clauses: Value| json!({"id": id, "variation": variation, "clauses": clauses});
    let f = basic(
        "f",
        json!({"rules": [
            rule("missing-negated", 3, json!([{"attribute": "nothere", "op": "in", "values": ["x"], "negate": true}])),
            rule("groups", 2, json!([{"attribute": "groups", "op": "in", "values": ["admins"]}])),
            rule("empty-array-negated", 3, json!([{"attribute": "tags", "op": "in", "values": ["t"], "negate": true}])),
            rule("org-kind", 3, json!([{"attribute": "kind", "op": "startsWith", "values": ["or"]}])),
        ]}),
    );
    let s = store(vec![f], vec![]);
    let d = eval(&s, "f", &ctx(json!({"key": "u", "custom": {"groups": ["users", "admins"]}})));
    assert_eq!(d.reason, Reason::RuleMatch { rule_index: 1, rule_id: "groups", in_experiment: false });
    assert_eq!(reason_json(&d), json!({"kind": "RULE_MATCH", "ruleIndex": 1, "ruleId": "groups"}));
    let d = eval(&s, "f", &ctx(json!({"kind": "user", "key": "u", "tags": []})));
    assert_eq!(d.reason, Reason::RuleMatch { rule_index: 2, rule_id: "empty-array-negated", in_experiment: false });
    let d = eval(&s, "f", &ctx(json!({"kind": "multi", "user": {"key": "u"}, "org": {"key": "o"}})));
    assert_eq!(d.reason, Reason::RuleMatch { rule_index: 3, rule_id: "org-kind", in_experiment: false });
    assert_eq!(eval(&s, "f", &user("u")).reason, Reason::Fallthrough { in_experiment: false });
}

#[test]
fn attribute_references_and_context_kinds() {
    let f = basic(
        "f",
        json!({"rules": [
            {"id": "city", "variation": 2, "clauses": [{"contextKind": "org", "attribute": "/address/city",
                "op": "in", "values": ["Oslo"]}]},
            {"id": "literal", "variation": 3, "clauses": [{"attribute": "/address/city", "op": "in",
                "values": ["Bergen"]}]}
        ]}),
    );
    let s = store(vec![f], vec![]);
    let org = ctx(json!({"kind": "org", "key": "o", "address": {"city": "Oslo"}}));
    assert_eq!(eval(&s, "f", &org).value, Some(&json!("a")));
    // Without contextKind the attribute is a literal name, slashes and all.
    let legacy = ctx(json!({"key": "u", "custom": {"/address/city": "Bergen"}}));
    assert_eq!(eval(&s, "f", &legacy).value, Some(&json!("b")));
    // A user context is not looked at for an org clause.
    assert_eq!(
        eval(&s, "f", &ctx(json!({"kind": "user", "key": "u", "address": {"city": "Oslo"}}))).value,
        Some(&json!("fall"))
    );
}

#[test]
fn segments_membership_rules_nesting_and_cycles() {
    let segments = vec![
        json!({"key": "s", "version": 1, "salt": "ss", "included": ["in"], "excluded": ["out"],
            "includedContexts": [{"contextKind": "org", "values": ["o-in"]}],
            "excludedContexts": [{"contextKind": "org", "values": ["o-out"]}],
            "rules": [{"id": "r", "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@example.com"]}]}]}),
        json!({"key": "outer", "version": 1, "salt": "x", "rules": [{"id": "n", "clauses":
            [{"attribute": "", "op": "segmentMatch", "values": ["s"]}]}]}),
        json!({"key": "loop1", "version": 1, "rules": [{"clauses": [{"attribute": "", "op": "segmentMatch", "values": ["loop2"]}]}]}),
        json!({"key": "loop2", "version": 1, "rules": [{"clauses": [{"attribute": "", "op": "segmentMatch", "values": ["loop1"]}]}]}),
        json!({"key": "org-half", "version": 1, "salt": "h", "rules": [{"clauses": [], "weight": 100000,
            "rolloutContextKind": "org"}]}),
        json!({"key": "big", "version": 1, "unbounded": true, "generation": 2}),
    ];
    let seg_rule = |segs: Value| {
        json!({"rules": [{"id": "r", "variation": 2, "clauses":
        [{"attribute": "", "op": "segmentMatch", "values": segs}]}]})
    };
    let s = store(
        vec![
            basic("f", seg_rule(json!(["unknown-segment", "s"]))),
            basic("nested", seg_rule(json!(["outer"]))),
            basic("cycle", seg_rule(json!(["loop1"]))),
            basic("org-half", seg_rule(json!(["org-half"]))),
            basic("big", seg_rule(json!(["big"]))),
        ],
        segments,
    );
    let hit = |c: &Context, key: &str| eval(&s, key, c).variation_index == Some(2);
    assert!(hit(&user("in"), "f"));
    assert!(!hit(&user("out"), "f"));
    assert!(hit(&ctx(json!({"kind": "org", "key": "o-in"})), "f"));
    assert!(hit(&ctx(json!({"kind": "user", "key": "x", "email": "a@example.com"})), "f"));
    assert!(!hit(&ctx(json!({"kind": "user", "key": "out", "email": "a@example.com"})), "f"));
    assert!(!hit(
        &ctx(json!({"kind": "multi", "user": {"key": "x", "email": "a@example.com"}, "org": {"key": "o-out"}})),
        "f"
    ));
    assert!(hit(&user("in"), "nested"));
    assert_eq!(eval(&s, "cycle", &user("u")).reason, Reason::Error { error_kind: ErrorKind::MalformedFlag });
    // A weighted segment rule needs a context of its rollout kind.
    assert!(!hit(&user("u"), "org-half"));
    assert!(hit(&ctx(json!({"kind": "org", "key": "o"})), "org-half"));
    // Big segments need a membership store; without one they never match and say so.
    let d = eval(&s, "big", &user("u"));
    assert_eq!(d.variation_index, Some(1));
    assert_eq!(d.big_segments_status, Some(pennant_eval::BigSegmentsStatus::NotConfigured));
}

#[test]
fn rollouts_and_experiments_bucket_like_launchdarkly() {
    // userKeyA buckets at 0.42157587 for hashKey.saltyA, 0.09801207 with seed 61.
    let rollout = |kind: &str, seed: Option<i64>, untracked: bool| {
        let mut r = json!({"kind": kind, "variations": [
            {"variation": 2, "weight": 42000, "untracked": untracked}, {"variation": 3, "weight": 58000}]});
        if let Some(seed) = seed {
            r["seed"] = json!(seed);
        }
        json!({"key": "hashKey", "version": 1, "on": true, "salt": "saltyA", "variations": ["off", "fall", "a", "b"],
            "fallthrough": {"rollout": r}})
    };
    assert!((bucket_value("hashKey", "saltyA", None, "userKeyA") - 0.421_575_87).abs() < 1e-7);
    let cases = [
        (rollout("rollout", None, false), Some(3), false),
        (rollout("experiment", None, false), Some(3), true),
        (rollout("experiment", Some(61), false), Some(2), true),
        (rollout("experiment", Some(61), true), Some(2), false),
    ];
    for (f, want_index, want_experiment) in cases {
        let s = store(vec![f.clone()], vec![]);
        let d = eval(&s, "hashKey", &user("userKeyA"));
        assert_eq!(d.variation_index, want_index, "{f}");
        assert_eq!(d.reason, Reason::Fallthrough { in_experiment: want_experiment }, "{f}");
    }
    // A context without the rollout's kind buckets at 0 (first variation) and is not in the experiment.
    let mut f = rollout("experiment", None, false);
    f["fallthrough"]["rollout"]["contextKind"] = json!("org");
    let s = store(vec![f], vec![]);
    let d = eval(&s, "hashKey", &user("userKeyA"));
    assert_eq!((d.variation_index, d.reason), (Some(2), Reason::Fallthrough { in_experiment: false }));
}

#[test]
fn bucket_by_attributes_and_invalid_references() {
    let f = |bucket_by: &str, context_kind: Option<&str>| {
        let mut r = json!({"bucketBy": bucket_by, "variations": [{"variation": 2, "weight": 42000}, {"variation": 3, "weight": 58000}]});
        if let Some(k) = context_kind {
            r["contextKind"] = json!(k);
        }
        json!({"key": "hashKey", "version": 1, "on": true, "salt": "saltyA", "variations": ["off", "fall", "a", "b"],
            "fallthrough": {"rollout": r}})
    };
    // Bucketing by an attribute holding "userKeyA" gives the same bucket as the key would.
    let c = ctx(json!({"kind": "user", "key": "zzz", "team": "userKeyA", "n": 33333, "f": 1.5}));
    let s = store(vec![f("team", None)], vec![]);
    assert_eq!(eval(&s, "hashKey", &c).variation_index, Some(3));
    // Non-integral numbers are not bucketable: bucket 0, first variation.
    let s = store(vec![f("f", None)], vec![]);
    assert_eq!(eval(&s, "hashKey", &c).variation_index, Some(2));
    let s = store(vec![f("//", Some("user"))], vec![]);
    assert_eq!(eval(&s, "hashKey", &c).reason, Reason::Error { error_kind: ErrorKind::MalformedFlag });
}

#[test]
fn typed_variations_answer_like_an_sdk() {
    let s = store(
        vec![
            basic("f", json!({})),
            basic("off", json!({"on": false, "offVariation": null})),
            flag_with_number("n", 2.7),
        ],
        vec![],
    );
    let c = user("u");
    let default = json!("dflt");
    let d = variation_detail(&s, "missing", Ok(&c), &default, ValueType::String);
    assert_eq!((&*d.value, d.reason), (&default, Reason::Error { error_kind: ErrorKind::FlagNotFound }));
    let no = json!(false);
    let d = variation_detail(&s, "f", Ok(&c), &no, ValueType::Bool);
    assert_eq!(d.reason, Reason::Error { error_kind: ErrorKind::WrongType });
    assert_eq!(d.variation_index, None);
    let err = ContextError::EmptyMulti;
    let d = variation_detail(&s, "f", Err(&err), &default, ValueType::String);
    assert_eq!(d.reason, Reason::Error { error_kind: ErrorKind::UserNotSpecified });
    let d = variation_detail(&s, "off", Ok(&c), &default, ValueType::String);
    assert_eq!((&*d.value, d.reason), (&default, Reason::Off));
    let zero = json!(0);
    let d = variation_detail(&s, "n", Ok(&c), &zero, ValueType::Int);
    assert_eq!(*d.value, json!(2));
    let d = variation_detail(&s, "n", Ok(&c), &zero, ValueType::Double);
    assert_eq!(*d.value, json!(2.7));
}

fn flag_with_number(key: &str, n: f64) -> Value {
    json!({"key": key, "version": 1, "on": true, "variations": [n], "fallthrough": {"variation": 0}})
}

#[test]
fn evaluate_all_gives_the_evalx_document() {
    let s = store(
        vec![
            basic(
                "js",
                json!({"clientSide": true, "prerequisites": [{"key": "p", "variation": 1}], "trackEvents": true,
                "debugEventsUntilDate": 1_700_000_000_000_u64}),
            ),
            basic("p", json!({})),
            basic(
                "server-only",
                json!({"clientSideAvailability": {"usingMobileKey": false, "usingEnvironmentId": false}}),
            ),
            basic(
                "exp",
                json!({"clientSide": true, "fallthrough": {"rollout": {"kind": "experiment",
                "variations": [{"variation": 2, "weight": 100000}]}}}),
            ),
        ],
        vec![],
    );
    let c = user("u");
    let state = all_flags_state(&s, s.flags(), &c, AllFlagsOptions { client_side_only: true, ..Default::default() });
    let doc = serde_json::to_value(&state).unwrap();
    assert_eq!(
        doc,
        json!({
            "exp": {"value": "a", "variation": 2, "version": 1, "flagVersion": 1, "trackEvents": true,
                "trackReason": true, "reason": {"kind": "FALLTHROUGH", "inExperiment": true}},
            "js": {"value": "fall", "variation": 1, "version": 1, "flagVersion": 1, "trackEvents": true,
                "debugEventsUntilDate": 1_700_000_000_000_u64, "prerequisites": ["p"]}
        })
    );
    let state = all_flags_state(&s, s.flags(), &c, AllFlagsOptions { with_reasons: true, ..Default::default() });
    let doc = serde_json::to_value(&state).unwrap();
    assert_eq!(doc.as_object().unwrap().len(), 4);
    assert_eq!(doc["p"]["reason"], json!({"kind": "FALLTHROUGH"}));
    assert_eq!(state.get("server-only").unwrap().detail.value, Some(&json!("fall")));
}

#[test]
fn payload_and_bad_json() {
    let s = MemoryStore::from_payload_json(
        br#"{"flags":{"f":{"key":"f","on":true,"variations":[1],"fallthrough":{"variation":0}}},"segments":{}}"#,
    )
    .unwrap();
    assert_eq!(eval(&s, "f", &user("u")).value, Some(&json!(1)));
    assert!(MemoryStore::from_payload_json(b"{\"flags\": [").is_err());
    assert!(MemoryStore::from_payload_json(br#"{"flags":{"f":{"key":"f","rules":{"no":1}}}}"#).is_err());
}
