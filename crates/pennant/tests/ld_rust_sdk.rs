//! LaunchDarkly's own Rust server SDK (crates.io `launchdarkly-server-sdk` 3.2.0), unmodified, pointed at a
//! running `pennant serve`: it initialises over the stream, evaluates flags with rules, a segment and a rollout to
//! the same values as Pennant's engine, sees a flag change made through the REST API, and also works in polling
//! mode. Plain HTTP (the SDK is built without a TLS stack and given an HTTP transport).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, request};
use launchdarkly_sdk_transport::HyperTransport;
use launchdarkly_server_sdk::{
    Client, ConfigBuilder, Context, FlagValue, NullEventProcessorBuilder, PollingDataSourceBuilder,
    ServiceEndpointsBuilder, StreamingDataSourceBuilder,
};
use serde_json::{Value, json};

fn start_client(runtime: &tokio::runtime::Runtime, url: &str, sdk_key: &str, mode: &str) -> Client {
    let transport = HyperTransport::new().unwrap();
    let mut endpoints = ServiceEndpointsBuilder::new();
    endpoints.streaming_base_url(url).polling_base_url(url).events_base_url(url);
    let builder =
        ConfigBuilder::new(sdk_key).service_endpoints(&endpoints).event_processor(&NullEventProcessorBuilder::new());
    let builder = if mode == "stream" {
        let mut source = StreamingDataSourceBuilder::<HyperTransport>::new();
        source.transport(transport);
        builder.data_source(&source)
    } else {
        let mut source = PollingDataSourceBuilder::<HyperTransport>::new();
        source.transport(transport);
        builder.data_source(&source)
    };
    let client = Client::build(builder.build().unwrap()).unwrap();
    let initialized = runtime.block_on(async {
        client.start_with_default_executor();
        client.wait_for_initialization(Duration::from_secs(20)).await
    });
    assert_eq!(initialized, Some(true), "the SDK did not initialise in {mode} mode");
    client
}

fn sdk_context(spec: &Value) -> Context {
    serde_json::from_value(spec.clone()).unwrap_or_else(|e| panic!("LaunchDarkly's SDK refuses {spec}: {e}"))
}

/// Waits (with a deadline) until the SDK serves `value` for the context; returns how long it took.
fn wait_for(client: &Client, flag: &str, context: &Context, value: &str, deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < deadline {
        if client.variation(context, flag, FlagValue::Json(Value::Null)) == FlagValue::Str(value.to_owned()) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

#[test]
fn launchdarkly_rust_sdk_streams_and_polls_from_pennant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let url = server.url.clone();
    let token = server.field("admin token");
    let sdk_key = server.keys("production")[0].clone();
    let api = |method: &str, path: &str, body: Value| {
        let (s, b) = request(&url, method, path, &token, &[], Some(&body));
        assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
        b
    };

    // A segment, and a flag with a segment rule, an attribute rule and a 50/50 fallthrough rollout.
    api("POST", "/api/v2/segments/default/production", json!({"key": "beta", "name": "Beta", "included": ["u-beta"]}));
    api(
        "POST",
        "/api/v2/flags/default",
        json!({"key": "banner", "name": "Banner",
        "variations": [{"value": "red"}, {"value": "green"}, {"value": "blue"}]}),
    );
    api(
        "PATCH",
        "/api/v2/flags/default/banner",
        json!({"environmentKey": "production", "instructions": [
            {"kind": "addRule", "ruleId": "beta", "variation": 0,
             "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["beta"]}]},
            {"kind": "addRule", "ruleId": "staff", "variation": 1,
             "clauses": [{"contextKind": "user", "attribute": "email", "op": "endsWith", "values": ["@shop.example"]}]},
            {"kind": "updateFallthroughVariationOrRollout", "rollout": {"variations": [
                {"variation": 1, "weight": 50000}, {"variation": 2, "weight": 50000}]}},
            {"kind": "turnFlagOn"}
        ]}),
    );

    let mut contexts = vec![
        json!({"kind": "user", "key": "u-beta"}),
        json!({"kind": "user", "key": "someone", "email": "a@shop.example"}),
        json!({"kind": "multi", "user": {"key": "u-beta"}, "org": {"key": "acme"}}),
        json!({"kind": "org", "key": "acme"}),
    ];
    contexts.extend((0..20).map(|i| json!({"kind": "user", "key": format!("user-{i}")})));

    // What Pennant's own engine says, on the payload the SDK endpoints serve.
    let (status, payload) = request(&url, "GET", "/sdk/latest-all", &sdk_key, &[], None);
    assert_eq!(status, 200);
    let store = pennant_eval::MemoryStore::from_payload_json(payload.to_string().as_bytes()).unwrap();
    use pennant_eval::Store as _;
    let flag = store.flag("banner").unwrap();
    let expected: Vec<Value> = contexts
        .iter()
        .map(|c| {
            let context = pennant_eval::Context::from_value(c.clone()).unwrap();
            let d = pennant_eval::evaluate(&store, flag, &context);
            json!({"value": d.value, "variation": d.variation_index, "reason": d.reason})
        })
        .collect();
    let variations: std::collections::HashSet<String> = expected.iter().map(|e| e["value"].to_string()).collect();
    assert_eq!(variations.len(), 3, "the contexts exercise every variation: {expected:?}");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for mode in ["stream", "poll"] {
        let client = start_client(&runtime, &url, &sdk_key, mode);
        let got: Vec<Value> = contexts
            .iter()
            .map(|c| {
                let d = client.variation_detail(&sdk_context(c), "banner", FlagValue::Json(Value::Null));
                json!({"value": d.value, "variation": d.variation_index, "reason": d.reason})
            })
            .collect();
        assert_eq!(got, expected, "{mode}");
        if mode == "stream" {
            // A change through the REST API reaches the streaming SDK (the budget is one second; the assertion
            // allows a generous deadline, the latency is printed).
            let staff = sdk_context(&contexts[1]);
            let sent = Instant::now();
            api(
                "PATCH",
                "/api/v2/flags/default/banner",
                json!({"environmentKey": "production", "instructions": [{"kind": "turnFlagOff"}]}),
            );
            let api_took = sent.elapsed();
            let seen = wait_for(&client, "banner", &staff, "blue", Duration::from_secs(10));
            let seen = seen.expect("the Rust SDK never saw the change");
            println!(
                "flag change seen by the Rust SDK {:?} after the API call was sent (the call itself took {api_took:?})",
                api_took + seen
            );
            api(
                "PATCH",
                "/api/v2/flags/default/banner",
                json!({"environmentKey": "production", "instructions": [{"kind": "turnFlagOn"}]}),
            );
            let seen = wait_for(&client, "banner", &staff, "green", Duration::from_secs(10));
            assert!(seen.is_some(), "the Rust SDK never saw the flag turned back on");
        }
        client.close();
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    assert!(server.stop().success());
}
