//! LaunchDarkly's own Rust server SDK (crates.io `launchdarkly-server-sdk` 3.2.0), unmodified, pointed at a
//! running `pennant serve`: it initialises over the stream, evaluates flags with rules, a segment and a rollout to
//! the same values as Pennant's engine, sees a flag change made through the REST API, and also works in polling
//! mode. Plain HTTP (the SDK is built without a TLS stack and given an HTTP transport).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{SdkFixture, Server, request};
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
    let SdkFixture { url, token, sdk_key, contexts, expected } = SdkFixture::create(&server);
    let api = |method: &str, path: &str, body: Value| {
        let (s, b) = request(&url, method, path, &token, &[], Some(&body));
        assert!((200..300).contains(&s), "{method} {path}: {s} {b}");
        b
    };

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
