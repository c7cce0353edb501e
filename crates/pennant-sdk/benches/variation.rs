//! The cost of an evaluation through the client, Pennant's SDK side by side with LaunchDarkly's own Rust SDK
//! (crates.io `launchdarkly-server-sdk` 3.2.0), analytics events off and on.
//!
//! `cargo bench -p pennant-sdk --bench variation` — per call of `bool_variation` for one context; each id exists
//! as `pennant_…` and `launchdarkly_…`:
//!
//! - `…_events_off`: evaluation only, on a flag served by its fallthrough.
//! - `…_events_on`: the common path with events: the evaluation is counted for the summary event (the context was
//!   seen already). Pennant counts it in place; LaunchDarkly's SDK hands an event to its event thread, which counts
//!   it.
//! - `…_events_on/rules`: a flag with targets and three rules, the last of which matches.
//! - `…_events_on/new_context`: a different context each call (from a pool larger than the context-key capacity),
//!   so each call also yields an `index` event.
//! - `…_events_on/track_events`: a flag with `trackEvents`: each call yields a `feature` event (when the queue is
//!   full the excess is dropped, as in production under such load).
//!
//! Both clients get the same flags the same way: a local HTTP server in the benchmark serves them at
//! `/sdk/latest-all` (both poll it once; the next poll is an hour away) and accepts the events (flushed every hour:
//! nothing is delivered during the run). Both are initialised, and their answers checked, before measuring.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use launchdarkly_sdk_transport::HyperTransport;
use launchdarkly_server_sdk as ld;
use pennant_sdk::{Client, Config, Context};
use serde_json::{Value, json};

const HOUR: Duration = Duration::from_secs(3600);

fn flag(key: &str, extra: Value) -> Value {
    let mut flag = json!({"key": key, "version": 1, "on": true, "salt": key, "variations": [true, false],
        "fallthrough": {"variation": 0}, "offVariation": 1, "targets": [], "contextTargets": [], "rules": [],
        "prerequisites": [], "trackEvents": false, "trackEventsFallthrough": false, "clientSide": false,
        "deleted": false});
    flag.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    flag
}

fn clause(attribute: &str, op: &str, values: Value) -> Value {
    json!({"contextKind": "user", "attribute": attribute, "op": op, "values": values, "negate": false})
}

/// What both SDKs are served.
fn payload() -> Value {
    let rules = json!([
        {"id": "platinum", "variation": 1, "trackEvents": false, "clauses": [clause("plan", "in", json!(["platinum"]))]},
        {"id": "nz", "variation": 1, "trackEvents": false, "clauses": [clause("country", "in", json!(["nz", "au"]))]},
        {"id": "staff", "variation": 0, "trackEvents": false,
            "clauses": [clause("email", "endsWith", json!(["@example.com"])), clause("plan", "in", json!(["gold"]))]},
    ]);
    json!({
        "flags": {
            "flag": flag("flag", json!({})),
            "tracked": flag("tracked", json!({"trackEvents": true})),
            "rules": flag("rules", json!({"fallthrough": {"variation": 1}, "rules": rules,
                "targets": [{"variation": 1, "values": ["user-1", "user-2", "user-3"]}]})),
        },
        "segments": {}
    })
}

/// Serves `/sdk/latest-all` and accepts every other request (events, LaunchDarkly's diagnostic events).
async fn server() -> String {
    let body = payload().to_string();
    let app = axum::Router::new()
        .route(
            "/sdk/latest-all",
            axum::routing::get(move || {
                let body = body.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .fallback(|| async { axum::http::StatusCode::ACCEPTED });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn pennant(runtime: &tokio::runtime::Runtime, url: &str, events: bool) -> Client {
    let config = Config::builder("sdk-bench")
        .service_uri(url)
        .polling(HOUR)
        .events_enabled(events)
        .flush_interval(HOUR)
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let client = Client::start(config).unwrap();
    assert!(runtime.block_on(client.wait_for_initialization(Duration::from_secs(10))));
    client
}

fn launchdarkly(runtime: &tokio::runtime::Runtime, url: &str, events: bool) -> ld::Client {
    let _guard = runtime.enter();
    let mut endpoints = ld::ServiceEndpointsBuilder::new();
    endpoints.polling_base_url(url).streaming_base_url(url).events_base_url(url);
    let mut source = ld::PollingDataSourceBuilder::<HyperTransport>::new();
    source.transport(HyperTransport::new().unwrap()).poll_interval(HOUR);
    let builder = ld::ConfigBuilder::new("sdk-bench").service_endpoints(&endpoints).data_source(&source);
    let builder = if events {
        let mut processor = ld::EventProcessorBuilder::<HyperTransport>::new();
        processor.transport(HyperTransport::new().unwrap()).flush_interval(HOUR);
        builder.event_processor(&processor)
    } else {
        builder.event_processor(&ld::NullEventProcessorBuilder::new())
    };
    let client = ld::Client::build(builder.build().unwrap()).unwrap();
    client.start_with_default_executor();
    let initialized = runtime.block_on(client.wait_for_initialization(Duration::from_secs(10)));
    assert_eq!(initialized, Some(true), "LaunchDarkly's SDK did not initialise");
    client
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let url = runtime.block_on(server());
    let (pennant_off, pennant_on) = (pennant(&runtime, &url, false), pennant(&runtime, &url, true));
    let (ld_off, ld_on) = (launchdarkly(&runtime, &url, false), launchdarkly(&runtime, &url, true));

    let user_json = json!({"kind": "user", "key": "user-42", "email": "a@example.com", "plan": "gold"});
    let user = Context::from_value(user_json.clone()).unwrap();
    let ld_user: ld::Context = serde_json::from_value(user_json).unwrap();
    let keys: Vec<String> = (0..4096).map(|i| format!("user-{i}")).collect();
    let pool: Vec<Context> = keys.iter().map(|k| Context::user(k)).collect();
    let ld_pool: Vec<ld::Context> = keys.iter().map(|k| ld::ContextBuilder::new(k).build().unwrap()).collect();

    // Both serve the same answers, for the same reasons, before anything is measured.
    for key in ["flag", "tracked", "rules"] {
        for client in [&pennant_off, &pennant_on] {
            let detail = client.bool_variation_detail(&user, key, false);
            assert!(detail.value, "pennant {key}: {detail:?}");
            let reason = serde_json::to_value(&detail.reason).unwrap();
            for ld_client in [&ld_off, &ld_on] {
                let ld_detail = ld_client.bool_variation_detail(&ld_user, key, false);
                assert_eq!(ld_detail.value, Some(true), "launchdarkly {key}");
                assert_eq!(ld_detail.variation_index.map(|i| i as usize), detail.variation_index, "{key}");
                assert_eq!(serde_json::to_value(&ld_detail.reason).unwrap(), reason, "{key}");
            }
        }
    }
    assert!(!pennant_on.bool_variation(&pool[2], "rules", true), "targeted");
    assert!(!ld_on.bool_variation(&ld_pool[2], "rules", true), "targeted");

    let mut g = c.benchmark_group("bool_variation");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("pennant_events_off", |b| {
        b.iter(|| pennant_off.bool_variation(black_box(&user), black_box("flag"), false))
    });
    g.bench_function("launchdarkly_events_off", |b| {
        b.iter(|| ld_off.bool_variation(black_box(&ld_user), black_box("flag"), false))
    });
    g.bench_function("pennant_events_on", |b| {
        b.iter(|| pennant_on.bool_variation(black_box(&user), black_box("flag"), false))
    });
    g.bench_function("launchdarkly_events_on", |b| {
        b.iter(|| ld_on.bool_variation(black_box(&ld_user), black_box("flag"), false))
    });
    g.bench_function("pennant_events_on/rules", |b| {
        b.iter(|| pennant_on.bool_variation(black_box(&user), black_box("rules"), false))
    });
    g.bench_function("launchdarkly_events_on/rules", |b| {
        b.iter(|| ld_on.bool_variation(black_box(&ld_user), black_box("rules"), false))
    });
    let mut i = 0;
    g.bench_function("pennant_events_on/new_context", |b| {
        b.iter(|| {
            i = (i + 1) % pool.len();
            pennant_on.bool_variation(black_box(&pool[i]), black_box("flag"), false)
        })
    });
    g.bench_function("launchdarkly_events_on/new_context", |b| {
        b.iter(|| {
            i = (i + 1) % ld_pool.len();
            ld_on.bool_variation(black_box(&ld_pool[i]), black_box("flag"), false)
        })
    });
    g.bench_function("pennant_events_on/track_events", |b| {
        b.iter(|| pennant_on.bool_variation(black_box(&user), black_box("tracked"), false))
    });
    g.bench_function("launchdarkly_events_on/track_events", |b| {
        b.iter(|| ld_on.bool_variation(black_box(&ld_user), black_box("tracked"), false))
    });
    g.finish();
    eprintln!("pennant: events dropped (queue or buffer full) during the run: {}", pennant_on.dropped_events());
    ld_on.close();
    ld_off.close();
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), pennant_on.close()).await.ok();
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
