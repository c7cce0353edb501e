//! The management service end to end against the real binary: project → flag → rules → patch → conflict →
//! audit entries with diffs → webhook delivery to a local receiver, signed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Receiver, Server, request};
use serde_json::json;

#[test]
fn project_flag_rules_patch_conflict_audit_and_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let url = server.url.clone();
    let token = server.field("admin token");
    let call = |method: &str, path: &str, headers: &[(&str, &str)], body: Option<serde_json::Value>| {
        request(&url, method, path, &token, headers, body.as_ref())
    };

    let receiver = Receiver::start();
    let (s, hook) = call(
        "POST",
        "/api/v2/webhooks",
        &[],
        Some(json!({"name": "ops", "url": receiver.url, "filter": {"projects": ["shop"]}})),
    );
    assert_eq!(s, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();

    let (s, b) = call("POST", "/api/v2/projects", &[], Some(json!({"key": "shop", "name": "Shop"})));
    assert_eq!(s, 201, "{b}");
    let (s, b) = call(
        "POST",
        "/api/v2/projects/shop/environments",
        &[],
        Some(json!({"key": "production", "name": "Production"})),
    );
    assert_eq!(s, 201, "{b}");
    let (s, flag) = call(
        "POST",
        "/api/v2/flags/shop",
        &[],
        Some(json!({"key": "checkout", "name": "New checkout", "variations": [{"value": true}, {"value": false}]})),
    );
    assert_eq!((s, flag["_version"].clone()), (201, json!(1)), "{flag}");

    let rules = json!({"environmentKey": "production", "comment": "beta for staff", "instructions": [
        {"kind": "addRule", "ruleId": "staff", "variation": 0,
         "clauses": [{"contextKind": "user", "attribute": "email", "op": "endsWith", "values": ["@shop.example"]}]},
        {"kind": "turnFlagOn"}
    ]});
    let (s, flag) = call("PATCH", "/api/v2/flags/shop/checkout", &[("If-Match", "1")], Some(rules));
    assert_eq!((s, flag["_version"].clone()), (200, json!(2)), "{flag}");
    assert_eq!(flag["environments"]["production"]["on"], json!(true));

    // Someone still on version 1 gets a conflict, and nothing changes.
    let stale = json!([{"op": "replace", "path": "/environments/production/on", "value": false}]);
    let (s, e) = call("PATCH", "/api/v2/flags/shop/checkout", &[("If-Match", "1")], Some(stale));
    assert_eq!((s, e["code"].clone()), (409, json!("version_conflict")), "{e}");
    let (_, now) = call("GET", "/api/v2/flags/shop/checkout", &[], None);
    assert_eq!((now["_version"].clone(), now["environments"]["production"]["on"].clone()), (json!(2), json!(true)));

    let (s, log) = call("GET", "/api/v2/auditlog?resourceKind=flag&resourceKey=checkout", &[], None);
    assert_eq!(s, 200);
    let entries = log["items"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{log}");
    assert_eq!(
        (entries[0]["action"].clone(), entries[0]["comment"].clone()),
        (json!("update"), json!("beta for staff"))
    );
    let paths: Vec<&str> = entries[0]["diff"].as_array().unwrap().iter().filter_map(|op| op["path"].as_str()).collect();
    assert!(paths.contains(&"/environments/production/on"), "{paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("/environments/production/rules")), "{paths:?}");

    // The webhook receives the flag update, signed with its secret.
    let delivery = receiver.wait_for(Duration::from_secs(20), |r| {
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        body["resourceKey"] == "checkout" && body["action"] == "update"
    });
    let signature = delivery.headers.get("x-pennant-signature").unwrap();
    assert_eq!(signature, &pennant_api::webhooks::sign(&secret, &delivery.body));
    let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(body["scope"], json!("shop"));
    assert!(body["diff"].as_array().is_some_and(|d| !d.is_empty()));
    assert!(server.stop().success());
}
