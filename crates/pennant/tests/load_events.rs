//! `pennant-load events` against a real `pennant serve` (embedded SQLite store and queue): 200 batches of 50 events,
//! 8 in flight, 30 % gzipped; every batch must be accepted and the insights API must end up with exactly the
//! evaluations the summaries carried. Timings are printed, not asserted.
//!
//! The load tool is another crate's binary: found next to this crate's `pennant` binary, built with cargo if it is
//! missing or older than its sources (as in load_sse.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{Server, load_tool, request};
use serde_json::Value;

#[test]
fn events_load_tool_gets_every_batch_counted_once() {
    let tool = load_tool();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let token = server.field("admin token");
    let sdk_key = server.keys("production")[0].clone();

    let pid = server.child.id().to_string();
    let output = Command::new(&tool)
        .args(["events", "--url", &server.url, "--sdk-key", &sdk_key, "--api-token", &token])
        .args(["--flags", "12", "--batches", "200", "--events-per-batch", "50", "--concurrency", "8"])
        .args(["--gzip-ratio", "0.3", "--distinct-batches", "64", "--lag-timeout", "60", "--settle-ms", "300"])
        .args(["--server-pid", &pid])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "pennant-load failed: {stderr}\n{stdout}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();

    assert_eq!(report["batches_sent"], 200, "{report}");
    assert_eq!(report["batches_accepted"], 200, "{report}");
    assert_eq!(report["events_sent"], 10_000, "{report}");
    assert_eq!(report["events_accepted"], 10_000, "{report}");
    assert_eq!(report["rejected_503"], 0, "{report}");
    assert_eq!(report["other_status"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["counts_matched"], true, "{report}");
    assert_eq!(report["double_counted"], false, "{report}");
    assert!(report["lag_ms"].is_number(), "{report}");
    assert!(report["ack_p99_ms"].is_number() && report["ack_max_ms"].is_number(), "{report}");
    assert!(report["gzip_bytes_per_batch"].is_number(), "{report}");
    assert!(report["server_cpu_us_per_event"].is_number(), "{report}");
    assert!(report["server_rss_peak_bytes"].is_number(), "{report}");
    assert!(stdout.contains("queryable"), "the human table comes first: {stdout}");

    // Independently of the tool: the flags' totals add up to what the summaries carried.
    let sent = report["evaluations_sent"].as_u64().unwrap();
    assert!(sent > 0);
    let to = i64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap() + 3_600_000;
    let from = to - 4 * 3_600_000;
    let mut counted = 0;
    for i in 0..12 {
        let path = format!(
            "/api/v2/insights/default/production/flags/load-{i}/evaluations?granularity=minute&from={from}&to={to}"
        );
        let (status, series) = request(&server.url, "GET", &path, &token, &[], None);
        assert_eq!(status, 200, "{series}");
        counted += series["total"].as_u64().unwrap();
    }
    assert_eq!(counted, sent);
    // The index events reached the contexts index.
    let (status, contexts) =
        request(&server.url, "GET", "/api/v2/insights/default/production/contexts?limit=5", &token, &[], None);
    assert_eq!(status, 200, "{contexts}");
    assert_eq!(contexts["items"].as_array().unwrap().len(), 5, "{contexts}");
    assert!(server.stop().success());
}
