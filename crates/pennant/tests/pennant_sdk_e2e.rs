//! Pennant's own Rust SDK (`pennant-sdk`) against a real `pennant serve`: it initialises over the stream and
//! evaluates as the server's engine does; a flag change made through the REST API reaches it within a second (its
//! value, and `flag_changes`); when the server is killed and restarted on the same port and data directory its
//! status goes `Interrupted` and back to `Valid`, and a change made after the restart is seen; its analytics events
//! are counted by the server's events pipeline, as the insights API shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{SdkFixture, Server, request};
use pennant_sdk::{Client, Config, Context, DataSourceErrorKind, DataSourceState};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

/// `pennant serve` on a given address (the restart must come back on the same port).
fn serve_on(listen: &str, data_dir: &Path) -> Server {
    Server::start_on(listen, &["--data-dir", data_dir.to_str().unwrap()])
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` until it returns something; fails at the deadline. Returns the value and how long it took.
async fn eventually<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(found) = check() {
            return (found, started.elapsed());
        }
        assert!(started.elapsed() < deadline, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn within<T>(deadline: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(deadline, future).await.expect("deadline passed")
}

/// The SDK's answers in the form `SdkFixture::expected` has (the engine's value, variation and reason).
fn answers(client: &Client, flag: &str, contexts: &[Value]) -> Vec<Value> {
    contexts
        .iter()
        .map(|c| {
            let d = client.json_variation_detail(&Context::from_value(c.clone()).unwrap(), flag, Value::Null);
            json!({"value": d.value, "variation": d.variation_index, "reason": d.reason})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pennant_sdk_streams_survives_a_restart_and_its_events_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let server = serve_on(&listen, dir.path());
    let SdkFixture { url, token, sdk_key, contexts, expected } = SdkFixture::create(&server);
    let api = |method: &str, path: &str, body: Value| {
        let (s, b) = request(&url, method, path, &token, &[], Some(&body));
        assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
        b
    };
    let banner = |instruction: &str| {
        api(
            "PATCH",
            "/api/v2/flags/default/banner",
            json!({"environmentKey": "production", "instructions": [{"kind": instruction}]}),
        )
    };

    let config = Config::builder(sdk_key.clone())
        .service_uri(url.clone())
        .initial_reconnect_delay(Duration::from_millis(100))
        .max_reconnect_delay(Duration::from_millis(500))
        .build()
        .unwrap();
    let client = Client::start(config).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await, "{:?}", client.data_source_status());
    assert_eq!(client.data_source_status().state, DataSourceState::Valid);
    assert_eq!(answers(&client, "banner", &contexts), expected, "the SDK evaluates as the server's engine");

    // A change through the REST API reaches the SDK within a second.
    let staff = Context::from_value(contexts[1].clone()).unwrap();
    assert_eq!(client.string_variation(&staff, "banner", "none"), "green");
    let mut changes = client.flag_changes();
    let sent = Instant::now();
    banner("turnFlagOff");
    let api_took = sent.elapsed();
    let (_, seen) = eventually("the flag turned off", DEADLINE, || {
        (client.string_variation(&staff, "banner", "none") == "blue").then_some(())
    })
    .await;
    println!("change seen {seen:?} after the API call returned (the call took {api_took:?})");
    assert!(seen < Duration::from_secs(1), "the change took {seen:?} to reach the SDK");
    assert_eq!(within(DEADLINE, changes.recv()).await.unwrap().key, "banner");

    // Killed (no graceful shutdown) and restarted on the same port and data directory.
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (interrupted, _) = eventually("Interrupted after the kill", DEADLINE, || {
        let status = client.data_source_status();
        (status.state == DataSourceState::Interrupted).then_some(status)
    })
    .await;
    assert_eq!(interrupted.last_error.unwrap().kind, DataSourceErrorKind::NetworkError);
    assert_eq!(client.string_variation(&staff, "banner", "none"), "blue", "the data is kept while interrupted");
    let server = serve_on(&listen, dir.path());
    assert_eq!(server.keys("production")[0], sdk_key, "the same data directory");
    let (_, reconnected) = eventually("Valid after the restart", DEADLINE, || {
        (client.data_source_status().state == DataSourceState::Valid).then_some(())
    })
    .await;
    println!("the SDK was Valid again {reconnected:?} after the new server printed its banner");

    // A change after the restart is seen: the SDK follows the new server, not a stale connection.
    let mut changes = client.flag_changes();
    banner("turnFlagOn");
    let (_, seen) = eventually("the flag turned on after the restart", DEADLINE, || {
        (client.string_variation(&staff, "banner", "none") == "green").then_some(())
    })
    .await;
    assert!(seen < Duration::from_secs(1), "the change after the restart took {seen:?} to reach the SDK");
    assert_eq!(within(DEADLINE, changes.recv()).await.unwrap().key, "banner");
    assert_eq!(answers(&client, "banner", &contexts), expected, "everything as the engine says again");

    // Analytics events: a flag evaluated only now (on the restarted server), with known counts per variation.
    api(
        "POST",
        "/api/v2/flags/default",
        json!({"key": "counted", "name": "Counted", "variations": [{"value": true}, {"value": false}]}),
    );
    let targeted: Vec<String> = (0..4).map(|i| format!("shopper-{i}")).collect();
    api(
        "PATCH",
        "/api/v2/flags/default/counted",
        json!({"environmentKey": "production", "instructions": [
            {"kind": "addTargets", "values": targeted, "variation": 1},
            {"kind": "updateFallthroughVariationOrRollout", "variation": 0},
            {"kind": "turnFlagOn"}
        ]}),
    );
    // Waits for the flag through the data, not through evaluations (which would be counted too).
    eventually("the new flag reached the SDK", DEADLINE, || {
        let data = client.flag_data();
        let has_targets = |f: &pennant_eval::Flag| !f.targets.is_empty() || !f.context_targets.is_empty();
        data.flags().any(|f| f.key == "counted" && f.on && has_targets(f)).then_some(())
    })
    .await;
    let shoppers: Vec<Context> = (0..12).map(|i| Context::user(&format!("shopper-{i}"))).collect();
    let mut by_variation = [0_i64; 2];
    for _ in 0..3 {
        for shopper in &shoppers {
            let detail = client.bool_variation_detail(shopper, "counted", true);
            by_variation[detail.variation_index.unwrap()] += 1;
        }
    }
    assert_eq!(by_variation, [24, 12], "the targeted shoppers get variation 1, the others the fallthrough");
    client.flush().await.unwrap();

    // The events front door queues them and the insights processor counts them: poll until they are queryable.
    let path = "/api/v2/insights/default/production/flags/counted/evaluations?granularity=minute";
    let (counts, took) = eventually("the evaluations counted by insights", DEADLINE, || {
        let (status, body) = request(&url, "GET", path, &token, &[], None);
        assert_eq!(status, 200, "{body}");
        (body["total"].as_i64().unwrap_or(0) >= 36).then_some(body)
    })
    .await;
    println!("insights counted the evaluations {took:?} after the flush");
    assert_eq!(counts["total"], 36, "every evaluation counted once: {counts}");
    assert_eq!(
        counts["totals"],
        json!([{"variation": 0, "count": 24}, {"variation": 1, "count": 12}]),
        "counted per variation: {counts}"
    );
    client.close().await;
    drop(server);
}
