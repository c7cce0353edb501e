//! The realistic SDK batches both parser benchmarks read, and the owned-types baseline model.
#![allow(dead_code)]

use std::collections::HashMap;

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
pub fn batch(n: usize) -> Vec<u8> {
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
pub struct OwnedEvent {
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
