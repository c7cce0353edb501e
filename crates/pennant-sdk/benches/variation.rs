//! The cost of an evaluation through the client, with analytics events off and on.
//!
//! `cargo bench -p pennant-sdk --bench variation` — per call of `bool_variation` on a flag served by its
//! fallthrough, for one context:
//!
//! - `events_off`: evaluation only.
//! - `events_on`: the common path with events: the summary counter exists and the context was seen, so the call
//!   counts one evaluation and queues nothing.
//! - `events_on/new_context`: a different context each call (from a pool larger than the context-key capacity),
//!   so each call also copies the context and queues it for an `index` event.
//! - `events_on/track_events`: a flag with `trackEvents`: each call copies the context and queues a `feature`
//!   event (the queue fills and the excess is dropped and counted, as in production under such load).
//!
//! Events go to a closed local port with a flush interval of an hour: nothing is delivered during the run.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_debug_implementations)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use pennant_sdk::{Client, Config, Context, TestData};

fn client(runtime: &tokio::runtime::Runtime, td: &TestData, events: bool) -> Client {
    let config = Config::builder("sdk-bench")
        .test_data(td)
        .events_enabled(events)
        .events_uri("http://127.0.0.1:9")
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let client = Client::start(config).unwrap();
    assert!(runtime.block_on(client.wait_for_initialization(Duration::from_secs(5))));
    client
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let td = TestData::new();
    td.update(td.flag("flag").variation_for_all(true));
    td.update_flag_json(serde_json::json!({"key": "tracked", "version": 1, "on": true, "trackEvents": true,
        "variations": [true, false], "fallthrough": {"variation": 0}}))
        .unwrap();
    let off = client(&runtime, &td, false);
    let on = client(&runtime, &td, true);
    let user = Context::from_value(serde_json::json!({"kind": "user", "key": "user-42", "email": "a@example.com",
        "plan": "gold"}))
    .unwrap();
    assert!(off.bool_variation(&user, "flag", false));
    assert!(on.bool_variation(&user, "flag", false));
    let pool: Vec<Context> = (0..4096).map(|i| Context::user(&format!("user-{i}"))).collect();

    let mut g = c.benchmark_group("bool_variation");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("events_off", |b| b.iter(|| off.bool_variation(black_box(&user), black_box("flag"), false)));
    g.bench_function("events_on", |b| b.iter(|| on.bool_variation(black_box(&user), black_box("flag"), false)));
    let mut i = 0;
    g.bench_function("events_on/new_context", |b| {
        b.iter(|| {
            i = (i + 1) % pool.len();
            on.bool_variation(black_box(&pool[i]), black_box("flag"), false)
        })
    });
    g.bench_function("events_on/track_events", |b| {
        b.iter(|| on.bool_variation(black_box(&user), black_box("tracked"), false))
    });
    g.finish();
    eprintln!("events dropped (queue or buffer full) during the run: {}", on.dropped_events());
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(1), on.close()).await.ok();
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
