//! Runs LaunchDarkly's SDK test-harness evaluation data (kept outside the repository) through the engine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

const DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/conformance/launchdarkly-eval");

#[test]
fn data_expands_to_528_cases_from_19_files() {
    let suites = pennant_conformance::load_dir(DATA_DIR).expect("load the shared conformance data");
    let files: BTreeSet<&str> = suites.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(files.len(), 19, "files: {files:?}");
    let cases: usize = suites.iter().map(|s| s.cases.len()).sum();
    assert_eq!(cases, 528);

    // Spot checks on the parameter expansion: 4 x 4 x 2 combinations, the first list varying fastest.
    let date_equal: Vec<_> = suites.iter().filter(|s| s.file == "operators-date-equal.yml").collect();
    assert_eq!(date_equal.len(), 32);
    assert_eq!(
        date_equal[1].display_name(),
        "operators-date-equal.yml: operators - date - equal \
         [VALUE1=\"2017-12-06T07:00:00.000Z\", VALUE2=\"2017-12-06T00:00:00.000-07:00\", OPERATOR=\"before\"]"
    );
    assert_eq!(date_equal[3].params[0].1, serde_json::json!(1_512_543_600_000_i64));
    assert_eq!(date_equal[3].cases[0].display_name(), "1512543600000 before 2017-12-06T00:00:00.000-07:00 fails");
    // `on:` stays a key named "on".
    let flag = &date_equal[0].flags["test-compare-value1"];
    assert_eq!(flag["on"], serde_json::json!(true));
    assert_eq!(flag["key"], serde_json::json!("test-compare-value1"));
    assert_eq!(flag["version"], serde_json::json!(1));
}

#[test]
fn engine_passes_every_case() {
    let suites = pennant_conformance::load_dir(DATA_DIR).expect("load the shared conformance data");
    let report = pennant_conformance::run(&suites);
    for result in report.failures() {
        if let Some(failure) = &result.failure {
            eprintln!(
                "FAIL {} :: {}\n  call:     {}_variation(default: {})\n  problems: {}\n  expected: {}\n  actual:   {}",
                result.suite,
                result.case,
                pennant_conformance::value_type_name(failure.value_type),
                failure.default,
                failure.problems.join("; "),
                failure.expected,
                failure.actual
            );
        }
    }
    assert_eq!(report.total(), 528);
    assert_eq!(report.failed(), 0, "{} passed, {} failed (failures above)", report.passed(), report.failed());
}
