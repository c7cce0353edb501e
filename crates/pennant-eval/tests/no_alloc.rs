//! Evaluation allocates nothing on its common paths: the engine borrows results from the flag data and
//! preprocessed every set, regex, version and timestamp when the data was loaded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pennant_eval::{Context, Flag, MemoryStore, Segment, Store, evaluate};
use serde_json::{Value, json};

fn fixture() -> MemoryStore {
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let rule = |id: &str, clause: Value| json!({"id": id, "variation": 1, "clauses": [clause]});
    let base = |key: &str, extra: Value| {
        let mut f = json!({"key": key, "version": 1, "on": true, "salt": "s", "offVariation": 0,
            "fallthrough": {"variation": 0}, "variations": [false, true]});
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        serde_json::from_value::<Flag>(f).unwrap()
    };
    let mut s = MemoryStore::default();
    s.insert_flag(base("off", json!({"on": false})));
    s.insert_flag(base("fallthrough", json!({})));
    s.insert_flag(base(
        "rollout",
        json!({"fallthrough": {"rollout": {"kind": "experiment", "seed": 3, "variations": [
        {"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]}}}),
    ));
    s.insert_flag(base(
        "in",
        json!({"rules": [rule("r", json!({"attribute": "email", "op": "in", "values": ["a@b.c"]}))]}),
    ));
    s.insert_flag(base(
        "matches",
        json!({"rules": [rule("r", json!({"attribute": "email", "op": "matches", "values": ["@b\\.c$"]}))]}),
    ));
    s.insert_flag(base(
        "semver",
        json!({"rules": [rule("r", json!({"attribute": "version", "op": "semVerEqual", "values": ["2.1.0"]}))]}),
    ));
    s.insert_flag(base("after", json!({"rules": [rule("r", json!({"attribute": "created", "op": "after", "values": [1_500_000_000_000_u64]}))]})));
    s.insert_flag(base("targets", json!({"targets": [{"variation": 1, "values": keys}]})));
    s.insert_flag(base(
        "segment",
        json!({"rules": [rule("r", json!({"attribute": "", "op": "segmentMatch", "values": ["seg"]}))]}),
    ));
    s.insert_flag(base("prereq", json!({"prerequisites": [{"key": "fallthrough", "variation": 0}]})));
    s.insert_flag(base("multi-kind", json!({"contextTargets": [{"contextKind": "org", "variation": 1, "values": ["o"]}],
        "rules": [rule("r", json!({"contextKind": "org", "attribute": "/address/city", "op": "startsWith", "values": ["Os"]}))]})));
    s.insert_segment(serde_json::from_value::<Segment>(json!({"key": "seg", "version": 1, "included": keys})).unwrap());
    s
}

#[test]
fn common_paths_do_not_allocate() {
    let store = fixture();
    let user = Context::from_value(json!({"kind": "user", "key": "user-999", "email": "a@b.c", "version": "2.1",
        "created": 1_600_000_000_000_u64}))
    .unwrap();
    let multi = Context::from_value(json!({"kind": "multi", "user": {"key": "u"},
        "org": {"key": "x", "address": {"city": "Oslo"}}}))
    .unwrap();
    let flags = ["off", "fallthrough", "rollout", "in", "matches", "semver", "after", "targets", "segment", "prereq"];
    for key in flags {
        let flag = store.flag(key).unwrap();
        // Warm up once, then count.
        let _ = evaluate(&store, flag, &user);
        let info = allocation_counter::measure(|| {
            for _ in 0..10 {
                std::hint::black_box(evaluate(&store, flag, std::hint::black_box(&user)));
            }
        });
        assert_eq!(info.count_total, 0, "{key} allocated {} times", info.count_total);
    }
    let flag = store.flag("multi-kind").unwrap();
    assert_eq!(evaluate(&store, flag, &multi).variation_index, Some(1));
    let info = allocation_counter::measure(|| {
        std::hint::black_box(evaluate(&store, flag, &multi));
    });
    assert_eq!(info.count_total, 0);
    // The results are the matching ones, so the count above measured real work.
    for key in ["in", "matches", "semver", "after", "targets", "segment"] {
        assert_eq!(evaluate(&store, store.flag(key).unwrap(), &user).variation_index, Some(1), "{key}");
    }
}
