//! Pennant's evaluator against LaunchDarkly's official Rust engine (`launchdarkly-server-sdk-evaluation`),
//! side by side in one run, on the same flag, segment and context JSON.
//!
//! Each scenario's JSON is built once and parsed into both engines' types. Before anything is timed, both
//! engines evaluate every scenario and must agree on the value, the variation index and the reason, so the two
//! columns always measure the same work.
//!
//! Run with `cargo bench -p pennant-eval --bench eval` (add `-- <filter>` to run only some groups). After
//! criterion's own report, a Markdown table of median times is printed to stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use launchdarkly_server_sdk_evaluation as ld;
use pennant_eval as pn;
use pennant_eval::Store as _;
use serde_json::{Value, json};

/// The context key used everywhere; key lists put it last.
const CONTEXT_KEY: &str = "user-42";

/// Number of flags in the evaluate-all scenario.
const ALL_FLAGS: usize = 1_000;

/// LaunchDarkly's `Store` hands out owned flags and segments, so a lookup clones (as the SDK's in-memory store
/// does). Lookups of the flag under test do not go through it: the benchmark holds the flag, as an SDK does
/// after one map lookup.
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

/// One scenario's data: the first flag is the one evaluated, the others are prerequisites.
struct Scenario {
    /// Criterion group name (also the directory name under target/criterion).
    id: &'static str,
    /// Row label in the summary table.
    label: &'static str,
    flags: Vec<Value>,
    segments: Vec<Value>,
    /// The reason kind the scenario must produce, so that it exercises the path it claims to.
    expect_reason: &'static str,
}

/// Both engines loaded with the same JSON.
struct Loaded {
    pn_store: pn::MemoryStore,
    ld_store: LdStore,
    pn_context: pn::Context,
    ld_context: ld::Context,
}

impl Loaded {
    fn new(flags: &[Value], segments: &[Value], context: &Value) -> Loaded {
        let mut pn_store = pn::MemoryStore::default();
        let mut ld_store = LdStore::default();
        for f in flags {
            let pf: pn::Flag = serde_json::from_value(f.clone()).expect("Pennant parses the flag");
            let lf: ld::Flag = serde_json::from_value(f.clone()).expect("LaunchDarkly parses the flag");
            assert_eq!(pf.key, lf.key);
            ld_store.flags.insert(lf.key.clone(), lf);
            pn_store.insert_flag(pf);
        }
        for s in segments {
            let ps: pn::Segment = serde_json::from_value(s.clone()).expect("Pennant parses the segment");
            let ls: ld::Segment = serde_json::from_value(s.clone()).expect("LaunchDarkly parses the segment");
            ld_store.segments.insert(ls.key.clone(), ls);
            pn_store.insert_segment(ps);
        }
        let pn_context = pn::Context::from_value(context.clone()).expect("Pennant parses the context");
        let ld_context: ld::Context = serde_json::from_value(context.clone()).expect("LaunchDarkly parses the context");
        Loaded { pn_store, ld_store, pn_context, ld_context }
    }

    fn pn_flag(&self, key: &str) -> &pn::Flag {
        self.pn_store.flag(key).expect("flag in Pennant store")
    }

    fn ld_flag(&self, key: &str) -> &ld::Flag {
        self.ld_store.flags.get(key).expect("flag in LaunchDarkly store")
    }
}

/// Panics unless both engines produced the same value, variation index and reason.
fn assert_same(what: &str, p: &pn::Detail<'_>, l: &ld::Detail<&ld::FlagValue>) {
    let l_value = l.value.map(|v| serde_json::to_value(v).expect("serialise FlagValue"));
    let same_value = match (p.value, &l_value) {
        (None, None) => true,
        (Some(a), Some(b)) => pn::json_equal(a, b),
        _ => false,
    };
    assert!(same_value, "{what}: value differs: Pennant {:?}, LaunchDarkly {:?}", p.value, l_value);
    let l_index = l.variation_index.map(|i| usize::try_from(i).expect("non-negative variation index"));
    assert_eq!(p.variation_index, l_index, "{what}: variation index differs");
    let p_reason = serde_json::to_value(p.reason).expect("serialise Pennant reason");
    let l_reason = serde_json::to_value(&l.reason).expect("serialise LaunchDarkly reason");
    assert_eq!(p_reason, l_reason, "{what}: reason differs");
}

fn context_json() -> Value {
    json!({
        "kind": "user",
        "key": CONTEXT_KEY,
        "name": "Alice",
        "email": "alice@example.com",
        "country": "us",
        "plan": "enterprise",
        "appVersion": "2.4.1",
        "createdAt": "2023-05-01T12:00:00Z",
        "groups": ["beta-testers", "staff"]
    })
}

/// `n` keys with the context's key last.
fn key_list(n: usize) -> Vec<String> {
    (0..n - 1).map(|i| format!("key-{i:05}")).chain([CONTEXT_KEY.to_owned()]).collect()
}

/// An on flag with boolean variations, the given rules, and a fixed fallthrough to `false`.
fn flag_with_rules(key: &str, rules: Value) -> Value {
    json!({
        "key": key, "version": 7, "on": true, "salt": format!("{key}-salt"),
        "variations": [false, true], "offVariation": 0,
        "targets": [], "contextTargets": [], "prerequisites": [],
        "rules": rules,
        "fallthrough": {"variation": 0},
        "trackEvents": false, "trackEventsFallthrough": false, "clientSide": false
    })
}

fn rule(id: &str, attribute: &str, op: &str, values: Value) -> Value {
    json!({"id": id, "variation": 1, "trackEvents": false,
        "clauses": [{"attribute": attribute, "op": op, "values": values, "negate": false}]})
}

fn target_flag(n: usize) -> Value {
    let mut flag = flag_with_rules("targeted", json!([]));
    flag["targets"] = json!([{"values": key_list(n), "variation": 1}]);
    flag
}

fn segment_flag_and_segment(n: usize) -> (Value, Value) {
    let flag = flag_with_rules("segmented", json!([rule("in-beta", "", "segmentMatch", json!(["beta"]))]));
    let segment = json!({"key": "beta", "version": 3, "salt": "beta-salt", "included": key_list(n),
        "excluded": [], "rules": [], "deleted": false});
    (flag, segment)
}

fn scenarios() -> Vec<Scenario> {
    let s = |id, label, flags, segments, expect_reason| Scenario { id, label, flags, segments, expect_reason };

    let mut off = flag_with_rules("off", json!([]));
    off["on"] = json!(false);

    let mut fixed = flag_with_rules("fixed", json!([]));
    fixed["fallthrough"] = json!({"variation": 1});

    let mut rollout = flag_with_rules("rollout", json!([]));
    rollout["fallthrough"] = json!({"rollout": {"variations": [
        {"variation": 0, "weight": 40000}, {"variation": 1, "weight": 60000}]}});

    let rule_in = flag_with_rules("rule-in", json!([rule("r0", "plan", "in", json!(["pro", "enterprise"]))]));

    // A mix of operators, none of which matches the context.
    let many: Vec<Value> = (0..100)
        .map(|i| {
            let id = format!("r{i}");
            match i % 4 {
                0 => rule(&id, "email", "endsWith", json!([format!("@corp{i}.example")])),
                1 => rule(&id, "country", "in", json!([format!("x{i}"), format!("y{i}")])),
                2 => rule(&id, "plan", "in", json!([format!("tier-{i}")])),
                _ => rule(&id, "email", "startsWith", json!([format!("admin{i}@")])),
            }
        })
        .collect();
    let many_rules = flag_with_rules("many-rules", Value::Array(many));

    let regex =
        flag_with_rules("regex", json!([rule("re", "email", "matches", json!([r"^[a-z0-9._%+-]+@example\.com$"]))]));
    let semver = flag_with_rules("semver", json!([rule("sv", "appVersion", "semVerEqual", json!(["2.4.1"]))]));
    // The context's createdAt is an RFC 3339 string; the clause value is Unix milliseconds (2020-09-13).
    let after = flag_with_rules("after", json!([rule("dt", "createdAt", "after", json!([1_600_000_000_000_u64]))]));

    let (seg_flag_1k, seg_1k) = segment_flag_and_segment(1_000);
    let (seg_flag_10k, seg_10k) = segment_flag_and_segment(10_000);

    let mut prereq_main = flag_with_rules("with-prereq", json!([]));
    prereq_main["prerequisites"] = json!([{"key": "prereq", "variation": 1}]);
    prereq_main["fallthrough"] = json!({"variation": 1});
    let mut prereq = flag_with_rules("prereq", json!([]));
    prereq["fallthrough"] = json!({"variation": 1});

    vec![
        s("01_off", "1. flag off", vec![off], vec![], "OFF"),
        s("02_fallthrough", "2. on, fixed fallthrough", vec![fixed], vec![], "FALLTHROUGH"),
        s("03_rollout", "3. fallthrough rollout (40/60)", vec![rollout], vec![], "FALLTHROUGH"),
        s("04_rule_in", "4. one `in` rule, matches", vec![rule_in], vec![], "RULE_MATCH"),
        s("05_100_rules", "5. 100 non-matching rules → fallthrough", vec![many_rules], vec![], "FALLTHROUGH"),
        s("06_regex", "6. `matches` (regex) rule", vec![regex], vec![], "RULE_MATCH"),
        s("07_semver", "7. `semVerEqual` rule", vec![semver], vec![], "RULE_MATCH"),
        s("08_after", "8. `after` (date) rule", vec![after], vec![], "RULE_MATCH"),
        s(
            "09_targets_1k",
            "9. target list, 1,000 keys (key is last)",
            vec![target_flag(1_000)],
            vec![],
            "TARGET_MATCH",
        ),
        s(
            "10_segment_1k",
            "10. segmentMatch, 1,000 included (key is last)",
            vec![seg_flag_1k],
            vec![seg_1k],
            "RULE_MATCH",
        ),
        s("11_prerequisite", "11. one prerequisite (passes)", vec![prereq_main, prereq], vec![], "FALLTHROUGH"),
        s(
            "13_targets_10k",
            "13. target list, 10,000 keys (key is last)",
            vec![target_flag(10_000)],
            vec![],
            "TARGET_MATCH",
        ),
        s(
            "14_segment_10k",
            "14. segmentMatch, 10,000 included (key is last)",
            vec![seg_flag_10k],
            vec![seg_10k],
            "RULE_MATCH",
        ),
    ]
}

/// 1,000 flags shaped like a real environment, plus the segments they use. Per ten flags: 2 off, 3 fixed
/// fallthrough, 1 with a matching rule, 1 whose three rules all miss, 1 rollout, 1 experiment, 1 with a target
/// list and a segment rule; every 50th flag also has a prerequisite.
fn all_flags_data() -> (Vec<Value>, Vec<Value>) {
    let mut flags = Vec::with_capacity(ALL_FLAGS);
    for i in 0..ALL_FLAGS {
        let key = format!("flag-{i:04}");
        let three_rules = json!([
            rule("r0", "email", "endsWith", json!(["@other.example"])),
            rule("r1", "country", "in", json!(["de", "fr", "gb"])),
            rule("r2", "plan", "in", json!(["enterprise"])),
        ]);
        let mut flag = flag_with_rules(&key, json!([]));
        match i % 10 {
            0 | 1 => flag["on"] = json!(false),
            2..=4 => flag["fallthrough"] = json!({"variation": 1}),
            5 => {
                flag["rules"] = three_rules;
                flag["variations"] = json!(["control", "treatment"]);
            }
            6 => {
                let mut rules = three_rules;
                rules[2]["clauses"][0]["values"] = json!(["free"]);
                flag["rules"] = rules;
            }
            7 => {
                flag["variations"] = json!([1, 2, 3]);
                flag["fallthrough"] = json!({"rollout": {"variations": [
                    {"variation": 0, "weight": 33334}, {"variation": 1, "weight": 33333},
                    {"variation": 2, "weight": 33333}]}});
            }
            8 => {
                flag["variations"] = json!([{"color": "blue"}, {"color": "green"}]);
                flag["fallthrough"] = json!({"rollout": {"kind": "experiment", "seed": i, "variations": [
                    {"variation": 0, "weight": 50000}, {"variation": 1, "weight": 50000}]}});
            }
            _ => {
                let keys: Vec<String> = (0..20).map(|k| format!("key-{i}-{k}")).collect();
                flag["targets"] = json!([{"values": keys, "variation": 1}]);
                flag["rules"] = json!([rule("seg", "", "segmentMatch", json!([format!("seg-{}", i % 5)]))]);
            }
        }
        if i % 50 == 9 {
            // Flag i - 7 has a fixed fallthrough to variation 1, so the prerequisite passes.
            flag["prerequisites"] = json!([{"key": format!("flag-{:04}", i - 7), "variation": 1}]);
        }
        flags.push(flag);
    }
    // Five segments of 100 keys; only seg-0 contains the context.
    let segments = (0..5)
        .map(|s| {
            let mut included: Vec<String> = (0..100).map(|k| format!("seg{s}-key-{k}")).collect();
            if s == 0 {
                included[99] = CONTEXT_KEY.to_owned();
            }
            json!({"key": format!("seg-{s}"), "version": 1, "salt": format!("seg-{s}-salt"),
                "included": included, "excluded": [], "rules": []})
        })
        .collect();
    (flags, segments)
}

fn bench_scenario(c: &mut Criterion, scenario: &Scenario, context: &Value) {
    let loaded = Loaded::new(&scenario.flags, &scenario.segments, context);
    let key = scenario.flags[0]["key"].as_str().expect("flag key");
    let pn_flag = loaded.pn_flag(key);
    let ld_flag = loaded.ld_flag(key);
    let ld_store: &dyn ld::Store = &loaded.ld_store;

    let p = pn::evaluate(&loaded.pn_store, pn_flag, &loaded.pn_context);
    let l = ld::evaluate(ld_store, ld_flag, &loaded.ld_context, None);
    assert_same(scenario.id, &p, &l);
    assert_eq!(p.reason.kind(), scenario.expect_reason, "{}: scenario does not take the intended path", scenario.id);

    let mut group = c.benchmark_group(scenario.id);
    group.bench_function("pennant", |b| {
        b.iter(|| pn::evaluate(black_box(&loaded.pn_store), black_box(pn_flag), black_box(&loaded.pn_context)));
    });
    group.bench_function("launchdarkly", |b| {
        b.iter(|| ld::evaluate(black_box(ld_store), black_box(ld_flag), black_box(&loaded.ld_context), None));
    });
    group.finish();
}

/// Evaluate-all. Pennant: `all_flags_state`, which filters deleted flags, sorts by key, evaluates each flag and
/// records its prerequisites (what the server's `evalx` endpoint and the SDK's all-flags call use). LaunchDarkly:
/// `evaluate` for each flag in the store, collecting the details, which is what its SDK's `all_flags_detail`
/// does (minus the SDK's clone of every flag up front, which is left out in LaunchDarkly's favour).
fn bench_all_flags(c: &mut Criterion, context: &Value) {
    let (flags, segments) = all_flags_data();
    let loaded = Loaded::new(&flags, &segments, context);
    let ld_store: &dyn ld::Store = &loaded.ld_store;

    let state = pn::all_flags_state(&loaded.pn_store, loaded.pn_store.flags(), &loaded.pn_context, Default::default());
    assert_eq!(state.flags().len(), ALL_FLAGS);
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for (key, ld_flag) in &loaded.ld_store.flags {
        let p = state.get(key).expect("flag in Pennant's all-flags state");
        let l = ld::evaluate(ld_store, ld_flag, &loaded.ld_context, None);
        assert_same(key, &p.detail, &l);
        *kinds.entry(p.detail.reason.kind()).or_default() += 1;
    }
    for kind in ["OFF", "FALLTHROUGH", "RULE_MATCH"] {
        assert!(kinds.get(kind).is_some_and(|&n| n > 0), "evaluate-all data never gives {kind}: {kinds:?}");
    }

    let mut group = c.benchmark_group("12_all_flags");
    group.bench_function("pennant", |b| {
        b.iter(|| {
            pn::all_flags_state(
                black_box(&loaded.pn_store),
                loaded.pn_store.flags(),
                black_box(&loaded.pn_context),
                pn::AllFlagsOptions::default(),
            )
        });
    });
    group.bench_function("launchdarkly", |b| {
        b.iter(|| {
            let context = black_box(&loaded.ld_context);
            let mut out = Vec::with_capacity(ALL_FLAGS);
            for flag in black_box(&loaded.ld_store.flags).values() {
                out.push((flag.key.as_str(), ld::evaluate(ld_store, flag, context, None)));
            }
            out
        });
    });
    group.finish();
}

/// Where criterion writes its results: as criterion itself decides, minus its `cargo metadata` call.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
    target.join("criterion")
}

/// The median in ns from this run's estimates, or `None` if the benchmark did not run this time.
fn median_ns(group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_dir().join(group).join(function).join("new/estimates.json");
    let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if modified < since {
        return None;
    }
    let estimates: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

fn fmt_ns(ns: f64) -> String {
    if ns < 100.0 { format!("{ns:.1}") } else { format!("{ns:.0}") }
}

fn print_table(rows: &[(&str, &str)], since: SystemTime) {
    let mut lines = Vec::new();
    let mut all_flags_note = None;
    for &(id, label) in rows {
        let (Some(p), Some(l)) = (median_ns(id, "pennant", since), median_ns(id, "launchdarkly", since)) else {
            continue;
        };
        let speedup = l / p;
        if id == "12_all_flags" {
            all_flags_note = Some(format!(
                "Evaluate-all totals: Pennant {:.1} µs, LaunchDarkly {:.1} µs per 1,000 flags.",
                p / 1_000.0,
                l / 1_000.0
            ));
            let per = ALL_FLAGS as f64;
            lines.push(format!("| {label} | {} | {} | {speedup:.1}× |", fmt_ns(p / per), fmt_ns(l / per)));
        } else {
            lines.push(format!("| {label} | {} | {} | {speedup:.1}× |", fmt_ns(p), fmt_ns(l)));
        }
    }
    if lines.is_empty() {
        return;
    }
    println!();
    println!("Median time per evaluation (criterion `median` point estimate):");
    println!();
    println!("| scenario | Pennant ns/eval | LaunchDarkly ns/eval | speed-up (LD/Pennant) |");
    println!("|---|---:|---:|---:|");
    for line in lines {
        println!("{line}");
    }
    if let Some(note) = all_flags_note {
        println!();
        println!("{note}");
    }
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args();

    let context = context_json();
    let scenarios = scenarios();
    for scenario in &scenarios[..11] {
        bench_scenario(&mut criterion, scenario, &context);
    }
    bench_all_flags(&mut criterion, &context);
    for scenario in &scenarios[11..] {
        bench_scenario(&mut criterion, scenario, &context);
    }
    criterion.final_summary();

    let mut rows: Vec<(&str, &str)> = scenarios.iter().map(|s| (s.id, s.label)).collect();
    rows.insert(11, ("12_all_flags", "12. evaluate-all, 1,000 mixed flags (ns **per flag**)"));
    print_table(&rows, started);
}
