//! `pennant-load sse` against a real `pennant serve`: 200 streaming connections over 2 worker processes and 2
//! source addresses, 2 flag changes, and a reconnection storm; every connection must get every change and its
//! `put` back after the storm. Timings are printed, not asserted.
//!
//! The load tool is another crate's binary, so it is looked up next to this crate's `pennant` binary (where
//! `cargo test --workspace` builds it, since pennant-load has integration tests of its own), and built with cargo
//! if it is missing or older than its sources.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{Server, load_tool, request};
use serde_json::{Value, json};

#[test]
fn sse_load_tool_delivers_every_change_and_survives_a_storm() {
    let tool = load_tool();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let token = server.field("admin token");
    let sdk_key = server.keys("production")[0].clone();
    let (status, body) = request(
        &server.url,
        "POST",
        "/api/v2/flags/default",
        &token,
        &[],
        Some(&json!({"key": "load", "name": "Load", "variations": [{"value": true}, {"value": false}]})),
    );
    assert_eq!(status, 201, "{body}");

    let pid = server.child.id().to_string();
    let output = Command::new(&tool)
        .args(["sse", "--url", &server.url, "--sdk-key", &sdk_key, "--api-token", &token, "--flag", "load"])
        .args(["--connections", "200", "--processes", "2", "--sources", "127.0.0.2-127.0.0.3"])
        .args(["--rounds", "2", "--storm", "--server-pid", &pid, "--timeout", "60"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "pennant-load failed: {stderr}\n{stdout}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();

    assert_eq!(report["connections"], 200);
    assert_eq!(report["connected"], 200, "{report}");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    let mut versions = Vec::new();
    for r in rounds {
        assert_eq!(r["received"], 200, "{r}");
        assert_eq!(r["all_received"], true, "{r}");
        assert!(r["p50_ms"].is_number() && r["max_ms"].is_number(), "{r}");
        versions.push(r["version"].as_u64().unwrap());
    }
    assert!(versions[0] < versions[1], "each round is a new version: {versions:?}");
    assert_eq!(report["deliveries"], 400);
    assert_eq!(report["arrivals_stamped"], 400, "every delivery has the kernel's receive timestamp: {report}");
    let (arrival, read) = (&report["arrival_latency_p99_ms"], &report["latency_p99_ms"]);
    assert!(arrival.as_f64().unwrap() <= read.as_f64().unwrap(), "arrives before it is read: {report}");
    let (median, worst) = (&report["round_arrival_p99_median_ms"], &report["round_arrival_p99_max_ms"]);
    assert!(median.as_f64().unwrap() <= worst.as_f64().unwrap(), "{report}");
    assert!(stdout.contains("per change p99 to arrival: median"), "{stdout}");
    assert_eq!(report["storm"]["complete"], true, "{report}");
    assert_eq!(report["storm"]["connected"], 200, "{report}");
    assert!(report["server_rss_per_connection_bytes"].is_number(), "{report}");
    assert!(report["server_cpu_us_per_delivery"].is_number(), "{report}");
    assert!(stdout.contains("storm"), "the human table comes first: {stdout}");

    // The flag was toggled twice: it is back where it started (off).
    let (status, flag) = request(&server.url, "GET", "/api/v2/flags/default/load", &token, &[], None);
    assert_eq!(status, 200);
    assert_eq!(flag["environments"]["production"]["on"], false, "{flag}");
    // The rounds' changes went out through the lean fan-out, which times each frame.
    let (status, metrics) = common::http(&server.url, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let fanouts = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pennant_stream_fanout_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(fanouts.is_some_and(|n| n >= 2), "a fan-out per change: {fanouts:?}");
    assert!(server.stop().success());
}
