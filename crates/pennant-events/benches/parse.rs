//! Event-batch parsing, side by side on the same bytes: plain `serde_json` derive with owned `String`s and
//! `serde_json::Value` for free-form JSON (the baseline a straightforward implementation would write), and Pennant's
//! borrowed model (`pennant_events::parse_batch`).
//!
//! `cargo bench -p pennant-events --bench parse` — reports events/s (`events/…`) and bytes/s (`bytes/…`).
//! Batches are realistic SDK flushes: one summary event (20 flags) plus a mix of index (30 %), feature (40 %) and
//! custom (30 %) events with user, org and multi-kind contexts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_debug_implementations)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use serde_json::{Value, json};

fn context(i: usize) -> Value {
    match i % 3 {
        0 => json!({"kind": "user", "key": format!("user-{i:06}"), "name": format!("User {i}"),
                    "email": format!("user{i}@example.com"), "country": "NZ", "plan": "gold"}),
        1 => json!({"kind": "org", "key": format!("org-{}", i % 97), "name": "Acme Ltd", "tier": 3,
                    "_meta": {"redactedAttributes": ["billingEmail"]}}),
        _ => json!({"kind": "multi", "user": {"key": format!("user-{i:06}"), "anonymous": true},
                    "device": {"key": format!("dev-{i}"), "os": "android", "version": "14.1"}}),
    }
}

/// A batch of `n` events: one summary and `n - 1` index/feature/custom events.
fn batch(n: usize) -> Vec<u8> {
    let now = 1_764_000_000_000_i64;
    let mut features = serde_json::Map::new();
    for f in 0..20 {
        features.insert(
            format!("flag-{f:02}-checkout-redesign"),
            json!({"default": false, "contextKinds": ["user", "org"], "counters": [
                {"variation": 0, "version": 12, "value": true, "count": 1234 + f},
                {"variation": 1, "version": 12, "value": false, "count": 87}]}),
        );
    }
    let mut events = vec![json!({"kind": "summary", "startDate": now - 60_000, "endDate": now, "features": features})];
    for i in 1..n {
        let t = now - i as i64;
        events.push(match i % 10 {
            0..=2 => json!({"kind": "index", "creationDate": t, "context": context(i)}),
            3..=6 => {
                json!({"kind": "feature", "creationDate": t, "key": format!("flag-{:02}-checkout-redesign", i % 20),
                "version": 12, "variation": i % 2, "value": i % 2 == 0, "default": false, "context": context(i),
                "reason": {"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "a4b1c2d3"}})
            }
            _ => json!({"kind": "custom", "creationDate": t, "key": "checkout-completed",
                "contextKeys": {"user": format!("user-{i:06}")}, "metricValue": 42.5 + i as f64,
                "data": {"cart": {"items": 3, "currency": "NZD"}}}),
        });
    }
    serde_json::to_vec(&events).unwrap()
}

// The baseline: what `#[derive(Deserialize)]` with owned types gives.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct OwnedEvent {
    kind: String,
    creation_date: Option<i64>,
    key: Option<String>,
    version: Option<u64>,
    variation: Option<u32>,
    value: Option<Value>,
    default: Option<Value>,
    context: Option<Value>,
    context_keys: Option<HashMap<String, String>>,
    reason: Option<Value>,
    start_date: Option<i64>,
    end_date: Option<i64>,
    features: Option<HashMap<String, OwnedFlagSummary>>,
    data: Option<Value>,
    metric_value: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct OwnedFlagSummary {
    default: Option<Value>,
    context_kinds: Option<Vec<String>>,
    counters: Vec<OwnedCounter>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct OwnedCounter {
    variation: Option<u32>,
    version: Option<u64>,
    value: Option<Value>,
    count: u64,
    unknown: Option<bool>,
}

fn bench(c: &mut Criterion) {
    for n in [100, 1000] {
        let body = batch(n);
        // Sanity: both parse everything.
        assert_eq!(pennant_events::parse_batch(&body).unwrap().events.len(), n);
        assert_eq!(serde_json::from_slice::<Vec<OwnedEvent>>(&body).unwrap().len(), n);
        eprintln!("batch of {n} events: {} bytes ({} bytes/event)", body.len(), body.len() / n);
        for (unit, throughput) in
            [("events", Throughput::Elements(n as u64)), ("bytes", Throughput::Bytes(body.len() as u64))]
        {
            let mut g = c.benchmark_group(format!("{unit}/batch_{n}"));
            g.throughput(throughput);
            g.measurement_time(Duration::from_secs(4));
            g.bench_function("serde_json_owned", |b| {
                b.iter(|| serde_json::from_slice::<Vec<OwnedEvent>>(black_box(&body)).unwrap().len())
            });
            g.bench_function("pennant_borrowed", |b| {
                b.iter(|| pennant_events::parse_batch(black_box(&body)).unwrap().events.len())
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
