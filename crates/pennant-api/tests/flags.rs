//! Flags and segments through the management API, on both backends: CRUD, JSON Patch with optimistic
//! concurrency, semantic-patch instructions, validation, copying between environments, the audit log and the
//! outbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::App;
use pennant_eval::{Context, Reason, Store as _, evaluate};
use serde_json::{Value, json};

const FLAGS: &str = "/api/v2/flags/p";

/// A flag with three string variations, defaulting to on → "a", off → "c".
fn abc_flag(key: &str) -> Value {
    json!({
        "key": key, "name": key.to_uppercase(), "tags": ["web"],
        "variations": [{"value": "a", "name": "A"}, {"value": "b"}, {"value": "c"}],
        "defaults": {"onVariation": 0, "offVariation": 2}
    })
}

/// A boolean flag with default defaults (on → true, off → false).
fn bool_flag(key: &str) -> Value {
    json!({"key": key, "name": key, "variations": [{"value": true}, {"value": false}]})
}

async fn create(app: &App, flag: Value) -> Value {
    let (s, f) = app.post(FLAGS, flag).await;
    assert_eq!(s, StatusCode::CREATED, "{f} ({})", app.backend());
    f
}

/// PATCH with an `If-Match` header.
async fn patch_if_match(app: &App, path: &str, if_match: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::PATCH)
        .uri(path)
        .header("Authorization", &app.admin)
        .header("Content-Type", "application/json")
        .header("If-Match", if_match)
        .body(Body::from(body.to_string()))
        .unwrap();
    app.send(req).await
}

/// Semantic patch on a flag in production; asserts success and returns the flag.
async fn instruct(app: &App, flag: &str, instructions: Value) -> Value {
    let body = json!({"environmentKey": "production", "comment": "by instruction", "instructions": instructions});
    let (s, f) = app.patch(&format!("{FLAGS}/{flag}"), body).await;
    assert_eq!(s, StatusCode::OK, "{f} ({})", app.backend());
    f
}

/// Semantic patch in production that must fail with `status` and `code`; returns the message and details.
async fn instruct_fails(app: &App, flag: &str, instructions: Value, status: StatusCode, code: &str) -> Value {
    let body = json!({"environmentKey": "production", "instructions": instructions});
    let (s, e) = app.patch(&format!("{FLAGS}/{flag}"), body).await;
    assert_eq!((s, e["code"].as_str()), (status, Some(code)), "{e} ({})", app.backend());
    e
}

async fn outbox_last(app: &App) -> i64 {
    app.db.store.outbox_after(0, 1000).await.unwrap().last().map_or(0, |r| r.id)
}

/// `(env, kind, key, version)` of the outbox rows written after `after`.
async fn outbox_since(app: &App, after: i64) -> Vec<(String, String, String, u64)> {
    let mut rows: Vec<_> = app
        .db
        .store
        .outbox_after(after, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.env_key, r.kind, r.key, r.version))
        .collect();
    rows.sort();
    rows
}

fn row(env: &str, kind: &str, key: &str, version: u64) -> (String, String, String, u64) {
    (env.into(), kind.into(), key.into(), version)
}

async fn audit(app: &App, kind: &str, key: &str) -> Vec<Value> {
    let (s, log) = app.get(&format!("/api/v2/auditlog?resourceKind={kind}&resourceKey={key}")).await;
    assert_eq!(s, StatusCode::OK, "{log}");
    log["items"].as_array().unwrap().clone()
}

fn keys(page: &Value) -> Vec<&str> {
    page["items"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap()).collect()
}

fn env_keys(flag: &Value) -> Vec<&str> {
    flag["environments"].as_object().unwrap().keys().map(String::as_str).collect()
}

/// Evaluates a flag as an SDK connected to production would, for a context given as JSON.
async fn evaluate_in_production(app: &App, flag: &str, context: Value) -> (Value, String) {
    let data = app.db.store.sdk_payload("p", "production").await.unwrap();
    let flag = data.flag(flag).expect("the flag is in the SDK payload");
    let context = Context::from_json(context.to_string().as_bytes()).unwrap();
    let detail = evaluate(&data, flag, &context);
    let reason = match detail.reason {
        Reason::RuleMatch { rule_id, .. } => format!("rule {rule_id}"),
        Reason::Fallthrough { .. } => "fallthrough".into(),
        Reason::TargetMatch => "target".into(),
        Reason::Off => "off".into(),
        Reason::PrerequisiteFailed { .. } => "prerequisite failed".into(),
        other => format!("{other:?}"),
    };
    (detail.value.cloned().unwrap_or(Value::Null), reason)
}

#[tokio::test]
async fn create_list_and_get_flags() {
    for app in App::both().await {
        app.project().await;
        let before = outbox_last(&app).await;
        let f = create(&app, abc_flag("checkout")).await;
        assert_eq!((f["_version"].clone(), f["_archived"].clone()), (json!(1), json!(false)));
        assert_eq!(f["temporary"], json!(true));
        // Every environment starts off, serving the off variation, with the on variation as fallthrough.
        assert_eq!(env_keys(&f), ["production", "test"]);
        for env in ["production", "test"] {
            let c = &f["environments"][env];
            assert_eq!(c["on"], json!(false));
            assert_eq!(c["offVariation"], json!(2));
            assert_eq!(c["fallthrough"], json!({"variation": 0}));
            assert_eq!((c["rules"].clone(), c["targets"].clone()), (json!([]), json!([])));
            assert!(!c["salt"].as_str().unwrap().is_empty());
        }
        assert_ne!(f["environments"]["production"]["salt"], f["environments"]["test"]["salt"]);
        assert_eq!(
            outbox_since(&app, before).await,
            [row("production", "flag", "checkout", 1), row("test", "flag", "checkout", 1)]
        );
        // Without defaults: on → first variation, off → last.
        let b = create(
            &app,
            json!({"key": "banner", "name": "Banner", "tags": ["mobile"],
            "variations": [{"value": "x"}, {"value": "y"}]}),
        )
        .await;
        assert_eq!(b["environments"]["test"]["offVariation"], json!(1));
        assert_eq!(b["environments"]["test"]["fallthrough"], json!({"variation": 0}));
        // A configuration given for an environment is kept; the others get the defaults.
        let a = create(
            &app,
            json!({"key": "alpha", "name": "Alpha", "variations": [{"value": 1}, {"value": 2}],
            "environments": {"test": {"on": true, "fallthrough": {"variation": 1}, "offVariation": 0}}}),
        )
        .await;
        assert_eq!(a["environments"]["test"]["on"], json!(true));
        assert_eq!(a["environments"]["production"]["on"], json!(false));

        // Refusals.
        let (s, e) = app.post(FLAGS, abc_flag("checkout")).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("already_exists")));
        let (s, e) = app
            .post(
                FLAGS,
                json!({"key": "x", "name": "x", "variations": [{"value": 1}],
            "environments": {"staging": {}}}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")), "{e}");
        let (s, e) = app.post(FLAGS, json!({"key": "x", "name": "x", "variations": [{"value": 1}], "colour": 1})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
        let (s, e) = app
            .post(
                FLAGS,
                json!({"key": "x", "name": "x", "variations": [], "defaults": {"onVariation": 0,
            "offVariation": 0}}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")), "{e}");
        let (s, _) = app.post("/api/v2/flags/nope", bool_flag("x")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // Lists: filters, order, paging.
        let (s, page) = app.get(FLAGS).await;
        assert_eq!((s, page["totalCount"].clone()), (StatusCode::OK, json!(3)));
        assert_eq!(keys(&page), ["alpha", "banner", "checkout"]);
        let (_, page) = app.get(&format!("{FLAGS}?tag=web")).await;
        assert_eq!(keys(&page), ["checkout"]);
        let (_, page) = app.get(&format!("{FLAGS}?query=BAN")).await;
        assert_eq!(keys(&page), ["banner"]);
        let (_, page) = app.get(&format!("{FLAGS}?sort=-key")).await;
        assert_eq!(keys(&page), ["checkout", "banner", "alpha"]);
        let (_, first) = app.get(&format!("{FLAGS}?limit=2")).await;
        assert_eq!((keys(&first), first["totalCount"].clone()), (vec!["alpha", "banner"], json!(3)));
        let cursor = first["nextCursor"].as_str().expect("a next page");
        let (s, second) = app.get(&format!("{FLAGS}?limit=2&cursor={cursor}")).await;
        assert_eq!((s, keys(&second)), (StatusCode::OK, vec!["checkout"]), "{second}");
        assert!(second.get("nextCursor").is_none());
        let (s, e) = app.get(&format!("{FLAGS}?limit=0")).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (s, e) = app.get(&format!("{FLAGS}?colour=red")).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (s, _) = app.get("/api/v2/flags/nope").await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // ?env= narrows the environments shown, repeatable or comma-separated, with other parameters.
        let (_, page) = app.get(&format!("{FLAGS}?env=production&tag=web")).await;
        assert_eq!(keys(&page), ["checkout"]);
        assert_eq!(env_keys(&page["items"][0]), ["production"]);
        for query in ["env=production,test", "env=test&env=production"] {
            let (_, page) = app.get(&format!("{FLAGS}?{query}")).await;
            assert!(page["items"].as_array().unwrap().iter().all(|f| env_keys(f) == ["production", "test"]));
        }
        let (_, page) = app.get(&format!("{FLAGS}?env=staging")).await;
        assert_eq!(env_keys(&page["items"][0]), Vec::<&str>::new());

        // One flag.
        let (s, one) = app.get(&format!("{FLAGS}/checkout")).await;
        assert_eq!(
            (s, one["name"].clone(), env_keys(&one)),
            (StatusCode::OK, json!("CHECKOUT"), vec!["production", "test"])
        );
        assert_eq!(one["variations"][0], json!({"value": "a", "name": "A"}));
        let (_, one) = app.get(&format!("{FLAGS}/checkout?env=test")).await;
        assert_eq!(env_keys(&one), ["test"]);
        let (s, e) = app.get(&format!("{FLAGS}/checkout?archived=true")).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (s, e) = app.get(&format!("{FLAGS}/missing")).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));

        // Readers read, and cannot write; project-scoped tokens see only their projects.
        let reader = app.token("reader", &[]).await;
        assert_eq!(app.call(Method::GET, FLAGS, Some(&reader), None).await.0, StatusCode::OK);
        assert_eq!(app.call(Method::POST, FLAGS, Some(&reader), Some(bool_flag("r"))).await.0, StatusCode::FORBIDDEN);
        let other = app.token("writer", &["other"]).await;
        assert_eq!(app.call(Method::GET, FLAGS, Some(&other), None).await.0, StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn json_patch_with_if_match_audit_and_outbox() {
    for app in App::both().await {
        app.project().await;
        create(&app, bool_flag("f")).await;
        let path = format!("{FLAGS}/f");
        let on = json!([{"op": "replace", "path": "/environments/production/on", "value": true}]);

        // Turn it on in production, based on version 1.
        let before = outbox_last(&app).await;
        let (s, f) = patch_if_match(&app, &path, "\"1\"", json!({"patch": on, "comment": "launch"})).await;
        assert_eq!(s, StatusCode::OK, "{f}");
        assert_eq!(f["_version"], json!(2));
        assert_eq!(f["environments"]["production"]["on"], json!(true));
        assert_eq!(f["environments"]["test"]["on"], json!(false));
        // Only production's SDK view changed.
        assert_eq!(outbox_since(&app, before).await, [row("production", "flag", "f", 2)]);
        let log = audit(&app, "flag", "f").await;
        assert_eq!(log.len(), 2);
        assert_eq!((log[0]["action"].clone(), log[0]["comment"].clone()), (json!("update"), json!("launch")));
        assert_eq!(log[0]["diff"], json!([{"op": "replace", "path": "/environments/production/on", "value": true}]));
        assert_eq!(log[0]["actor"]["name"], json!("admin"));
        assert_eq!(log[1]["action"], json!("create"));

        // A stale version is refused and nothing is written.
        let off = json!([{"op": "replace", "path": "/environments/production/on", "value": false}]);
        let before = outbox_last(&app).await;
        let (s, e) = patch_if_match(&app, &path, "1", json!(off)).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("version_conflict")), "{e}");
        let (s, e) = app.patch(&path, json!({"patch": off, "version": 1})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("version_conflict")));
        let (s, e) = patch_if_match(&app, &path, "2", json!({"patch": off, "version": 1})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "disagreeing versions");
        let (_, f) = app.get(&path).await;
        assert_eq!((f["_version"].clone(), f["environments"]["production"]["on"].clone()), (json!(2), json!(true)));
        assert_eq!(audit(&app, "flag", "f").await.len(), 2);
        assert_eq!(outbox_since(&app, before).await, []);

        // Bad patches: a failing test op is a bad request; changing the key or breaking the shape is refused.
        let (s, e) = app.patch(&path, json!([{"op": "test", "path": "/name", "value": "nope"}])).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (s, _) = app.patch(&path, json!([{"op": "replace", "path": "/key", "value": "g"}])).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        let (s, e) = app.patch(&path, json!([{"op": "replace", "path": "/variations", "value": 3}])).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (s, e) = app.patch(&path, json!([{"op": "replace", "path": "/archived", "value": "yes"}])).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));

        // A rename changes no SDK view: a new version and an audit entry, no outbox row.
        let before = outbox_last(&app).await;
        let (s, f) = app.patch(&path, json!([{"op": "replace", "path": "/name", "value": "Renamed"}])).await;
        assert_eq!((s, f["_version"].clone()), (StatusCode::OK, json!(3)));
        assert_eq!(outbox_since(&app, before).await, []);
        // A patch that changes nothing writes nothing.
        let (s, f) = app.patch(&path, json!([{"op": "replace", "path": "/name", "value": "Renamed"}])).await;
        assert_eq!((s, f["_version"].clone()), (StatusCode::OK, json!(3)));

        // Archive and restore through JSON Patch's `archived` field.
        let (s, f) =
            patch_if_match(&app, &path, "3", json!([{"op": "replace", "path": "/archived", "value": true}])).await;
        assert_eq!((s, f["_archived"].clone(), f["_version"].clone()), (StatusCode::OK, json!(true), json!(4)));
        let (_, live) = app.get(FLAGS).await;
        assert_eq!(keys(&live), Vec::<&str>::new());
        let (_, archived) = app.get(&format!("{FLAGS}?archived=true")).await;
        assert_eq!(keys(&archived), ["f"]);
        let (s, f) = app.patch(&path, json!([{"op": "replace", "path": "/archived", "value": false}])).await;
        assert_eq!((s, f["_archived"].clone()), (StatusCode::OK, json!(false)));
        let actions: Vec<Value> = audit(&app, "flag", "f").await.iter().map(|e| e["action"].clone()).collect();
        assert_eq!(actions, [json!("restore"), json!("archive"), json!("update"), json!("update"), json!("create")]);

        // Delete: a tombstone version for every environment, and an audit entry.
        let before = outbox_last(&app).await;
        let (s, _) = app.delete(&format!("{path}?comment=cleanup")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert_eq!(outbox_since(&app, before).await, [row("production", "flag", "f", 6), row("test", "flag", "f", 6)]);
        let log = audit(&app, "flag", "f").await;
        assert_eq!((log[0]["action"].clone(), log[0]["comment"].clone()), (json!("delete"), json!("cleanup")));
        assert_eq!(app.get(&path).await.0, StatusCode::NOT_FOUND);
        assert_eq!(app.delete(&path).await.0, StatusCode::NOT_FOUND);
        assert_eq!(app.patch(&path, json!(off)).await.0, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn every_flag_instruction() {
    for app in App::both().await {
        app.project().await;
        create(&app, bool_flag("gate")).await;
        create(&app, abc_flag("f")).await;
        let (s, seg) = app
            .post(
                "/api/v2/segments/p/production",
                json!({"key": "beta", "name": "Beta",
            "included": ["beta-user"]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{seg}");
        let prod = |f: &Value| f["environments"]["production"].clone();

        // On, and three rules: at the end, before another, and with a generated ID.
        let before = outbox_last(&app).await;
        let f = instruct(
            &app,
            "f",
            json!([
                {"kind": "turnFlagOn"},
                {"kind": "addRule", "ruleId": "r1", "variation": 1,
                    "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@example.com"]}]},
                {"kind": "addRule", "ruleId": "r2", "beforeRuleId": "r1", "trackEvents": true,
                    "clauses": [{"contextKind": "org", "attribute": "tier", "op": "in", "values": ["gold"]}],
                    "rollout": {"contextKind": "org", "bucketBy": "key", "seed": 7,
                        "variations": [{"variation": 0, "weight": 60000}, {"variation": 2, "weight": 40000}]}},
                {"kind": "addRule", "variation": 2,
                    "clauses": [{"attribute": "key", "op": "segmentMatch", "values": ["beta"], "negate": false}]}
            ]),
        )
        .await;
        assert_eq!(f["_version"], json!(2), "one write for all instructions");
        assert_eq!(outbox_since(&app, before).await, [row("production", "flag", "f", 2)]);
        let c = prod(&f);
        assert_eq!(c["on"], json!(true));
        let generated = c["rules"][2]["id"].as_str().unwrap().to_owned();
        assert_eq!(generated.len(), 36, "a UUID-shaped id: {generated}");
        assert_eq!(
            c["rules"],
            json!([
                {"id": "r2", "trackEvents": true,
                    "clauses": [{"contextKind": "org", "attribute": "tier", "op": "in", "values": ["gold"], "negate": false}],
                    "rollout": {"contextKind": "org", "bucketBy": "key", "seed": 7,
                        "variations": [{"variation": 0, "weight": 60000}, {"variation": 2, "weight": 40000}]}},
                {"id": "r1", "variation": 1, "trackEvents": false,
                    "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@example.com"], "negate": false}]},
                {"id": generated, "variation": 2, "trackEvents": false,
                    "clauses": [{"attribute": "key", "op": "segmentMatch", "values": ["beta"], "negate": false}]}
            ])
        );
        assert_eq!(prod(&f)["on"], json!(true));
        assert_eq!(f["environments"]["test"]["on"], json!(false), "other environments are untouched");
        // SDKs see the rules: a matching context gets the rule's variation.
        let user = |key: &str, email: &str| json!({"kind": "user", "key": key, "email": email});
        assert_eq!(
            evaluate_in_production(&app, "f", user("u1", "ann@example.com")).await,
            (json!("b"), "rule r1".into())
        );
        assert_eq!(
            evaluate_in_production(&app, "f", user("u1", "ann@other.org")).await,
            (json!("a"), "fallthrough".into())
        );
        assert_eq!(
            evaluate_in_production(&app, "f", user("beta-user", "b@other.org")).await,
            (json!("c"), format!("rule {generated}"))
        );
        let org = json!({"kind": "org", "key": "acme", "tier": "gold"});
        let (value, reason) = evaluate_in_production(&app, "f", org).await;
        assert!(value == json!("a") || value == json!("c"), "{value}");
        assert_eq!(reason, "rule r2");
        // Same version, same result: the SDK payload carries the version written.
        let data = app.db.store.sdk_payload("p", "production").await.unwrap();
        assert_eq!(data.flag("f").unwrap().version, 2);

        // Change rules: clauses, what they serve, order, removal.
        let f = instruct(
            &app,
            "f",
            json!([
                {"kind": "updateRuleClauses", "ruleId": "r1",
                    "clauses": [{"attribute": "country", "op": "in", "values": ["NZ", "AU"]}]},
                {"kind": "updateRuleVariationOrRollout", "ruleId": "r2", "variation": 2},
                {"kind": "reorderRules", "ruleIds": ["r1", generated, "r2"]},
                {"kind": "removeRule", "ruleId": generated}
            ]),
        )
        .await;
        let rules = prod(&f)["rules"].clone();
        assert_eq!(
            rules.as_array().unwrap().iter().map(|r| r["id"].clone()).collect::<Vec<_>>(),
            [json!("r1"), json!("r2")]
        );
        assert_eq!(
            rules[0]["clauses"],
            json!([{"attribute": "country", "op": "in", "values": ["NZ", "AU"], "negate": false}])
        );
        assert_eq!((rules[1]["variation"].clone(), rules[1].get("rollout")), (json!(2), None));
        let (value, reason) =
            evaluate_in_production(&app, "f", json!({"kind": "user", "key": "k", "country": "NZ"})).await;
        assert_eq!((value, reason), (json!("b"), "rule r1".into()));
        // A rollout can replace a variation too.
        let f = instruct(
            &app,
            "f",
            json!([{"kind": "updateRuleVariationOrRollout", "ruleId": "r1",
            "rollout": {"variations": [{"variation": 0, "weight": 100000}]}}]),
        )
        .await;
        assert_eq!(prod(&f)["rules"][0]["rollout"], json!({"variations": [{"variation": 0, "weight": 100000}]}));
        assert!(prod(&f)["rules"][0].get("variation").is_none());

        // Individual targets: user keys in `targets`, other kinds in `contextTargets` (with a user placeholder so
        // SDKs keep evaluating the user targets).
        let f = instruct(
            &app,
            "f",
            json!([
                {"kind": "addTargets", "values": ["u1", "u2"], "variation": 0},
                {"kind": "addTargets", "values": ["acme"], "variation": 1, "contextKind": "org"},
                {"kind": "removeTargets", "values": ["u2"], "variation": 0, "contextKind": "user"}
            ]),
        )
        .await;
        assert_eq!(prod(&f)["targets"], json!([{"values": ["u1"], "variation": 0}]));
        assert_eq!(
            prod(&f)["contextTargets"],
            json!([{"contextKind": "org", "values": ["acme"], "variation": 1},
                {"contextKind": "user", "values": [], "variation": 0}])
        );
        assert_eq!(evaluate_in_production(&app, "f", user("u1", "x")).await, (json!("a"), "target".into()));
        assert_eq!(
            evaluate_in_production(&app, "f", json!({"kind": "org", "key": "acme"})).await,
            (json!("b"), "target".into())
        );
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "addTargets", "values": ["u1"], "variation": 2}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(e["message"].as_str().unwrap().contains("already targeted to variation 0"), "{e}");
        let f = instruct(
            &app,
            "f",
            json!([{"kind": "removeTargets", "values": ["acme"], "variation": 1,
            "contextKind": "org"}]),
        )
        .await;
        assert_eq!(prod(&f)["contextTargets"], json!([]), "placeholders go with the last other kind");
        let f = instruct(
            &app,
            "f",
            json!([{"kind": "replaceTargets", "targets": [
            {"variation": 2, "values": ["u9"]}, {"contextKind": "device", "variation": 1, "values": ["d1", "d2"]}]}]),
        )
        .await;
        assert_eq!(prod(&f)["targets"], json!([{"values": ["u9"], "variation": 2}]));
        assert_eq!(
            prod(&f)["contextTargets"],
            json!([{"contextKind": "device", "values": ["d1", "d2"], "variation": 1},
                {"contextKind": "user", "values": [], "variation": 2}])
        );

        // Fallthrough, off variation, prerequisites, off.
        instruct(&app, "gate", json!([{"kind": "turnFlagOn"}])).await;
        let f = instruct(
            &app,
            "f",
            json!([
                {"kind": "updateFallthroughVariationOrRollout",
                    "rollout": {"bucketBy": "email", "variations": [{"variation": 0, "weight": 50000},
                        {"variation": 1, "weight": 50000}]}},
                {"kind": "updateOffVariation", "variation": 1},
                {"kind": "addPrerequisite", "key": "gate", "variation": 0},
                {"kind": "updatePrerequisite", "key": "gate", "variation": 1}
            ]),
        )
        .await;
        assert_eq!(
            prod(&f)["fallthrough"],
            json!({"rollout": {"bucketBy": "email", "variations": [{"variation": 0, "weight": 50000},
                {"variation": 1, "weight": 50000}]}})
        );
        assert_eq!(prod(&f)["offVariation"], json!(1));
        assert_eq!(prod(&f)["prerequisites"], json!([{"key": "gate", "variation": 1}]));
        // "gate" is on and serves true (variation 0), not variation 1: the prerequisite fails.
        assert_eq!(
            evaluate_in_production(&app, "f", user("u9", "x")).await,
            (json!("b"), "prerequisite failed".into())
        );
        instruct(&app, "f", json!([{"kind": "updatePrerequisite", "key": "gate", "variation": 0}])).await;
        assert_eq!(evaluate_in_production(&app, "f", user("u9", "x")).await, (json!("c"), "target".into()));
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "addPrerequisite", "key": "gate", "variation": 0}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(e["message"].as_str().unwrap().contains("already a prerequisite"), "{e}");
        let f = instruct(
            &app,
            "f",
            json!([
                {"kind": "removePrerequisite", "key": "gate"},
                {"kind": "updateFallthroughVariationOrRollout", "variation": 2},
                {"kind": "turnFlagOff"}
            ]),
        )
        .await;
        assert_eq!(prod(&f)["prerequisites"], json!([]));
        assert_eq!(prod(&f)["fallthrough"], json!({"variation": 2}));
        assert_eq!(prod(&f)["on"], json!(false));
        assert_eq!(evaluate_in_production(&app, "f", user("u9", "x")).await, (json!("b"), "off".into()));
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "removePrerequisite", "key": "gate"}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(e["message"].as_str().unwrap().contains("not a prerequisite"), "{e}");

        // Flag-wide instructions need no environment; they change no SDK view.
        let before = outbox_last(&app).await;
        let (s, f) = app
            .patch(
                &format!("{FLAGS}/f"),
                json!({"comment": "tidy", "instructions": [
                    {"kind": "updateName", "value": "Checkout v2"},
                    {"kind": "updateDescription", "value": "The new checkout"},
                    {"kind": "addTags", "values": ["beta", "web", "q3"]},
                    {"kind": "removeTags", "values": ["q3"]}
                ]}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{f}");
        assert_eq!(
            (f["name"].clone(), f["description"].clone(), f["tags"].clone()),
            (json!("Checkout v2"), json!("The new checkout"), json!(["web", "beta"]))
        );
        assert_eq!(outbox_since(&app, before).await, []);
        let (_, page) = app.get(&format!("{FLAGS}?tag=beta")).await;
        assert_eq!(keys(&page), ["f"], "tags are indexed");

        // Archive and restore by instruction.
        let (s, f) = app.patch(&format!("{FLAGS}/f"), json!({"instructions": [{"kind": "archiveFlag"}]})).await;
        assert_eq!((s, f["_archived"].clone()), (StatusCode::OK, json!(true)));
        let (s, f) = app.patch(&format!("{FLAGS}/f"), json!({"instructions": [{"kind": "restoreFlag"}]})).await;
        assert_eq!((s, f["_archived"].clone()), (StatusCode::OK, json!(false)));
        let log = audit(&app, "flag", "f").await;
        assert_eq!(
            (log[0]["action"].clone(), log[1]["action"].clone(), log[2]["comment"].clone()),
            (json!("restore"), json!("archive"), json!("tidy"))
        );
        // Audit entries of instructions carry their comment and a diff.
        let turned_off = log.iter().find(|e| {
            e["diff"].as_array().unwrap().iter().any(|op| op["path"] == "/environments/production/on")
                && e["after"]["environments"]["production"]["on"] == json!(false)
        });
        assert_eq!(turned_off.unwrap()["comment"], json!("by instruction"));

        // Environment-specific instructions need an environment; the environment must exist.
        let (s, e) = app
            .patch(
                &format!("{FLAGS}/f"),
                json!({"instructions": [{"kind": "updateName", "value": "x"},
            {"kind": "turnFlagOn"}]}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        assert!(e["message"].as_str().unwrap().starts_with("instructions/1 (turnFlagOn)"), "{e}");
        let (s, e) = app
            .patch(
                &format!("{FLAGS}/f"),
                json!({"environmentKey": "staging",
            "instructions": [{"kind": "turnFlagOn"}]}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        // Both of variation and rollout, or neither, is a bad request.
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "updateFallthroughVariationOrRollout"}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(e["message"].as_str().unwrap().contains("exactly one"), "{e}");
        // Rule order must name every rule.
        instruct_fails(
            &app,
            "f",
            json!([{"kind": "reorderRules", "ruleIds": ["r1"]}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        instruct_fails(
            &app,
            "f",
            json!([{"kind": "addRule", "ruleId": "r1", "variation": 0, "clauses": []}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        let (s, e) = app.patch(&format!("{FLAGS}/f"), json!({"instructions": []})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
    }
}

#[tokio::test]
async fn instructions_apply_all_or_nothing() {
    for app in App::both().await {
        app.project().await;
        create(&app, abc_flag("f")).await;
        let path = format!("{FLAGS}/f");
        let before_outbox = outbox_last(&app).await;
        let before_log = audit(&app, "flag", "f").await.len();

        // The second instruction fails when applied: the first is not kept.
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "turnFlagOn"}, {"kind": "removeRule", "ruleId": "nope"}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert_eq!(e["message"], json!("instructions/1 (removeRule): no rule with id \"nope\""));
        // Unknown kinds and bad fields are refused before anything is applied, naming the instruction.
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "turnFlagOn"}, {"kind": "explode"}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(
            e["message"].as_str().unwrap().starts_with("instructions/1: unknown instruction kind \"explode\""),
            "{e}"
        );
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "turnFlagOn"},
            {"kind": "addTargets", "values": "u1", "variation": 0}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(e["message"].as_str().unwrap().starts_with("instructions/1 (addTargets): invalid type"), "{e}");
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "turnFlagOn"},
            {"kind": "updateOffVariation", "variation": 0, "variationId": "x"}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(e["message"].as_str().unwrap().contains("unknown field `variationId`"), "{e}");
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "turnFlagOn"}, {"value": "no kind"}]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(e["message"].as_str().unwrap().starts_with("instructions/1:"), "{e}");
        // The instructions are valid but the result is not: refused as a whole.
        let e = instruct_fails(
            &app,
            "f",
            json!([{"kind": "turnFlagOn"}, {"kind": "updateOffVariation", "variation": 9}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(
            e["details"][0].as_str().unwrap(),
            "environments/production/offVariation: variation index 9 is out of range (the flag has 3 variations)"
        );
        // A stale version.
        let (s, e) = app
            .patch(
                &path,
                json!({"environmentKey": "production", "version": 7, "instructions": [{"kind": "turnFlagOn"}]}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("version_conflict")));

        let (_, f) = app.get(&path).await;
        assert_eq!((f["_version"].clone(), f["environments"]["production"]["on"].clone()), (json!(1), json!(false)));
        assert_eq!(audit(&app, "flag", "f").await.len(), before_log, "no changelog entry");
        assert_eq!(outbox_since(&app, before_outbox).await, [], "no outbox row");

        // The same first instruction on its own, based on the current version, goes through.
        let (s, f) = patch_if_match(
            &app,
            &path,
            "1",
            json!({"environmentKey": "production",
            "instructions": [{"kind": "turnFlagOn"}]}),
        )
        .await;
        assert_eq!(
            (s, f["_version"].clone(), f["environments"]["production"]["on"].clone()),
            (StatusCode::OK, json!(2), json!(true))
        );
    }
}

#[tokio::test]
async fn malformed_flags_are_refused_with_details() {
    for app in App::both().await {
        app.project().await;
        create(&app, abc_flag("f")).await;
        create(&app, bool_flag("a")).await;
        create(&app, bool_flag("b")).await;
        let detail_of = |e: &Value, needle: &str| {
            let details = e["details"].as_array().unwrap();
            assert!(
                details.iter().any(|d| d.as_str().unwrap().contains(needle)),
                "{needle:?} not in {e} ({})",
                app.backend()
            );
        };
        let unprocessable =
            |ins: Value| instruct_fails(&app, "f", ins, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

        // A rule serving a variation the flag does not have.
        let e = unprocessable(json!([{"kind": "addRule", "variation": 5,
            "clauses": [{"attribute": "key", "op": "in", "values": ["x"]}]}]))
        .await;
        detail_of(&e, "environments/production/rules/0/variation: variation index 5 is out of range");
        // Rollout weights that do not add up to 100%.
        let e = unprocessable(json!([{"kind": "updateFallthroughVariationOrRollout",
            "rollout": {"variations": [{"variation": 0, "weight": 50000}, {"variation": 1, "weight": 40000}]}}]))
        .await;
        detail_of(&e, "environments/production/fallthrough/rollout/variations: weights add up to 90000, not 100000");
        // A segment that does not exist.
        let e = unprocessable(json!([{"kind": "addRule", "variation": 0,
            "clauses": [{"attribute": "key", "op": "segmentMatch", "values": ["ghosts"]}]}]))
        .await;
        detail_of(&e, "unknown segment \"ghosts\"");
        // An unknown prerequisite flag, and a prerequisite variation out of range.
        let e = unprocessable(json!([{"kind": "addPrerequisite", "key": "ghost", "variation": 0}])).await;
        detail_of(&e, "environments/production/prerequisites/0/key: unknown flag \"ghost\"");
        let e = unprocessable(json!([{"kind": "addPrerequisite", "key": "a", "variation": 4}])).await;
        detail_of(&e, "flag \"a\" has no variation 4");
        // A prerequisite cycle: a → b is fine, b → a closes the loop.
        instruct(&app, "a", json!([{"kind": "addPrerequisite", "key": "b", "variation": 0}])).await;
        let e = instruct_fails(
            &app,
            "b",
            json!([{"kind": "addPrerequisite", "key": "a", "variation": 0}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        detail_of(&e, "prerequisites form a cycle: b → a → b");
        // An unknown operator, and a malformed regular expression, through JSON Patch.
        let (s, e) = app
            .patch(
                &format!("{FLAGS}/f"),
                json!([{"op": "add", "path": "/environments/test/rules/-",
            "value": {"id": "r", "variation": 0, "clauses": [{"attribute": "email", "op": "looksLike", "values": []},
                {"attribute": "email", "op": "matches", "values": ["(unclosed"]}]}}]),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        detail_of(&e, "environments/test/rules/0/clauses/0/op: unknown operator \"looksLike\"");
        detail_of(&e, "environments/test/rules/0/clauses/1/values/0: not a valid regular expression");
        // At creation too.
        let (s, e) = app
            .post(
                FLAGS,
                json!({"key": "bad", "name": "Bad", "variations": [{"value": 1}],
            "defaults": {"onVariation": 3, "offVariation": 0}}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        detail_of(&e, "fallthrough/variation: variation index 3 is out of range");
        assert_eq!(app.get(&format!("{FLAGS}/bad")).await.0, StatusCode::NOT_FOUND);

        // Nothing was written to the refused flags.
        for (key, version) in [("f", 1), ("a", 2), ("b", 1)] {
            let (_, flag) = app.get(&format!("{FLAGS}/{key}")).await;
            assert_eq!(flag["_version"], json!(version), "{key}");
        }
        // A flag that is another's prerequisite cannot be deleted.
        let (s, e) = app.delete(&format!("{FLAGS}/b")).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")));
        assert_eq!(app.delete(&format!("{FLAGS}/a")).await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.delete(&format!("{FLAGS}/b")).await.0, StatusCode::NO_CONTENT);
    }
}

#[tokio::test]
async fn copy_configuration_between_environments() {
    for app in App::both().await {
        app.project().await;
        create(&app, bool_flag("gate")).await;
        create(&app, abc_flag("f")).await;
        instruct(
            &app,
            "f",
            json!([
                {"kind": "turnFlagOn"},
                {"kind": "addRule", "ruleId": "r1", "variation": 1,
                    "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@example.com"]}]},
                {"kind": "addTargets", "values": ["u1"], "variation": 0},
                {"kind": "addTargets", "values": ["acme"], "variation": 2, "contextKind": "org"},
                {"kind": "updateFallthroughVariationOrRollout", "variation": 1},
                {"kind": "updateOffVariation", "variation": 0},
                {"kind": "addPrerequisite", "key": "gate", "variation": 1}
            ]),
        )
        .await;
        let (s, f) = app
            .patch(
                &format!("{FLAGS}/f"),
                json!([
            {"op": "replace", "path": "/environments/production/trackEvents", "value": true},
            {"op": "replace", "path": "/environments/production/trackEventsFallthrough", "value": true}]),
            )
            .await;
        assert_eq!((s, f["_version"].clone()), (StatusCode::OK, json!(3)));
        let production = f["environments"]["production"].clone();
        let test_salt = f["environments"]["test"]["salt"].clone();

        let copy = format!("{FLAGS}/f/copy");
        let before = outbox_last(&app).await;
        let (s, copied) = app
            .post(
                &copy,
                json!({"source": {"key": "production"}, "target": {"key": "test"},
            "comment": "promote"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{copied}");
        assert_eq!(copied["_version"], json!(4));
        let mut expected = production.clone();
        expected["salt"] = test_salt.clone();
        assert_eq!(copied["environments"]["test"], expected, "everything but the salt");
        assert_eq!(copied["environments"]["production"], production, "the source is untouched");
        assert_eq!(outbox_since(&app, before).await, [row("test", "flag", "f", 4)]);
        let log = audit(&app, "flag", "f").await;
        assert_eq!((log[0]["action"].clone(), log[0]["comment"].clone()), (json!("update"), json!("promote")));
        assert!(
            log[0]["diff"]
                .as_array()
                .unwrap()
                .iter()
                .all(|op| op["path"].as_str().unwrap().starts_with("/environments/test/"))
        );

        // Only some parts; everything but some parts.
        let (_, f) = app
            .patch(
                &format!("{FLAGS}/f"),
                json!({"environmentKey": "production", "instructions": [
            {"kind": "turnFlagOff"}, {"kind": "removeRule", "ruleId": "r1"}]}),
            )
            .await;
        assert_eq!(f["_version"], json!(5));
        let (s, copied) = app
            .post(
                &copy,
                json!({"source": {"key": "production"}, "target": {"key": "test"},
            "includedActions": ["updateOn"]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(copied["environments"]["test"]["on"], json!(false));
        assert_eq!(copied["environments"]["test"]["rules"][0]["id"], json!("r1"), "rules were not included");
        let (s, copied) = app
            .post(
                &copy,
                json!({"source": {"key": "production"},
            "target": {"key": "test", "currentVersion": 6}, "excludedActions": ["updateOn", "updateTargets"]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{copied}");
        assert_eq!(copied["environments"]["test"]["rules"], json!([]));
        assert_eq!(copied["_version"], json!(7));

        // Refusals change nothing.
        for (body, status) in [
            (json!({"source": {"key": "production"}, "target": {"key": "production"}}), StatusCode::BAD_REQUEST),
            (json!({"source": {"key": "staging"}, "target": {"key": "test"}}), StatusCode::NOT_FOUND),
            (json!({"source": {"key": "production"}, "target": {"key": "staging"}}), StatusCode::NOT_FOUND),
            (
                json!({"source": {"key": "production"}, "target": {"key": "test"}, "includedActions": ["updateOn"],
                "excludedActions": ["updateRules"]}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"source": {"key": "production"}, "target": {"key": "test"}, "includedActions": ["updateSalt"]}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"source": {"key": "production"}, "target": {"key": "test", "currentVersion": 2}}),
                StatusCode::CONFLICT,
            ),
        ] {
            let (s, e) = app.post(&copy, body.clone()).await;
            assert_eq!(s, status, "{body} → {e}");
        }
        let (s, _) = app
            .post(
                &format!("{FLAGS}/missing/copy"),
                json!({"source": {"key": "production"},
            "target": {"key": "test"}}),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, f) = app.get(&format!("{FLAGS}/f")).await;
        assert_eq!(f["_version"], json!(7));
    }
}

#[tokio::test]
async fn segments_crud_instructions_and_use_by_flags() {
    for app in App::both().await {
        app.project().await;
        let segs = "/api/v2/segments/p/production";
        let before = outbox_last(&app).await;
        let (s, seg) = app
            .post(
                segs,
                json!({"key": "beta", "name": "Beta", "description": "Beta testers",
            "tags": ["qa"], "included": ["u1"]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{seg}");
        assert_eq!((seg["_version"].clone(), seg["version"].clone()), (json!(1), json!(1)));
        assert_eq!((seg["included"].clone(), seg["excluded"].clone()), (json!(["u1"]), json!([])));
        assert!(!seg["salt"].as_str().unwrap().is_empty());
        assert_eq!(outbox_since(&app, before).await, [row("production", "segment", "beta", 1)]);
        let (s, _) = app.post(segs, json!({"key": "alpha", "name": "Alpha"})).await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, e) = app.post(segs, json!({"key": "beta", "name": "Again"})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("already_exists")));
        let (s, e) = app.post(segs, json!({"key": "bad key", "name": "Bad"})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")));
        let (s, _) = app.post("/api/v2/segments/p/staging", json!({"key": "x", "name": "X"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        // Lists and reads, per environment.
        let (s, page) = app.get(segs).await;
        assert_eq!((s, keys(&page)), (StatusCode::OK, vec!["alpha", "beta"]));
        let (_, page) = app.get(&format!("{segs}?tag=qa")).await;
        assert_eq!(keys(&page), ["beta"]);
        let (_, page) = app.get("/api/v2/segments/p/test").await;
        assert_eq!(page["totalCount"], json!(0));
        assert_eq!(app.get("/api/v2/segments/p/staging").await.0, StatusCode::NOT_FOUND);
        let (s, one) = app.get(&format!("{segs}/beta")).await;
        assert_eq!((s, one["description"].clone()), (StatusCode::OK, json!("Beta testers")));
        assert_eq!(app.get("/api/v2/segments/p/test/beta").await.0, StatusCode::NOT_FOUND);

        // JSON Patch with If-Match.
        let path = format!("{segs}/beta");
        let (s, seg) =
            patch_if_match(&app, &path, "1", json!([{"op": "add", "path": "/excluded/-", "value": "u5"}])).await;
        assert_eq!((s, seg["_version"].clone(), seg["excluded"].clone()), (StatusCode::OK, json!(2), json!(["u5"])));
        let (s, e) = patch_if_match(&app, &path, "1", json!([{"op": "replace", "path": "/name", "value": "X"}])).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::CONFLICT, Some("version_conflict")));
        let (s, seg) = app.patch(&path, json!([{"op": "replace", "path": "/deleted", "value": true}])).await;
        assert_eq!((s, seg["deleted"].clone()), (StatusCode::OK, json!(false)), "a patch cannot make a tombstone");
        assert_eq!(seg["_version"], json!(2), "a patch that changes nothing writes nothing");

        // Instructions.
        let before = outbox_last(&app).await;
        let (s, seg) = app.patch(&path, json!({"comment": "widen", "instructions": [
            {"kind": "addIncludedTargets", "values": ["u2", "u3"]},
            {"kind": "addIncluded", "values": ["acme"], "contextKind": "org"},
            {"kind": "addExcludedTargets", "values": ["u4"], "contextKind": "user"},
            {"kind": "addExcluded", "values": ["evil"], "contextKind": "org"},
            {"kind": "removeIncludedTargets", "values": ["u1"]},
            {"kind": "removeExcluded", "values": ["u5"]},
            {"kind": "addRule", "ruleId": "sr1", "weight": 100000, "bucketBy": "key", "rolloutContextKind": "user",
                "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@example.com"]}]},
            {"kind": "addRule", "ruleId": "sr0", "beforeRuleId": "sr1",
                "clauses": [{"contextKind": "org", "attribute": "tier", "op": "in", "values": ["gold"]}]},
            {"kind": "updateName", "value": "Beta users"},
            {"kind": "updateDescription", "value": "Wider"},
            {"kind": "addTags", "values": ["web"]},
            {"kind": "removeTags", "values": ["qa"]}
        ]}))
        .await;
        assert_eq!(s, StatusCode::OK, "{seg}");
        assert_eq!(seg["_version"], json!(3));
        assert_eq!(outbox_since(&app, before).await, [row("production", "segment", "beta", 3)]);
        assert_eq!((seg["included"].clone(), seg["excluded"].clone()), (json!(["u2", "u3"]), json!(["u4"])));
        assert_eq!(seg["includedContexts"], json!([{"contextKind": "org", "values": ["acme"]}]));
        assert_eq!(seg["excludedContexts"], json!([{"contextKind": "org", "values": ["evil"]}]));
        assert_eq!(
            seg["rules"],
            json!([
                {"id": "sr0", "clauses": [{"contextKind": "org", "attribute": "tier", "op": "in", "values": ["gold"], "negate": false}]},
                {"id": "sr1", "weight": 100000, "bucketBy": "key", "rolloutContextKind": "user",
                    "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@example.com"], "negate": false}]}
            ])
        );
        assert_eq!(
            (seg["name"].clone(), seg["description"].clone(), seg["tags"].clone()),
            (json!("Beta users"), json!("Wider"), json!(["web"]))
        );
        let log = audit(&app, "segment", "beta").await;
        assert_eq!((log[0]["action"].clone(), log[0]["comment"].clone()), (json!("update"), json!("widen")));

        // A flag that uses the segment: SDKs see the new membership.
        create(&app, bool_flag("f")).await;
        instruct(
            &app,
            "f",
            json!([{"kind": "turnFlagOn"}, {"kind": "updateFallthroughVariationOrRollout", "variation": 1},
            {"kind": "addRule", "ruleId": "in-beta", "variation": 0,
                "clauses": [{"attribute": "key", "op": "segmentMatch", "values": ["beta"]}]}]),
        )
        .await;
        for (context, expected) in [
            (json!({"kind": "user", "key": "u2"}), (json!(true), "rule in-beta")),
            (json!({"kind": "user", "key": "u1"}), (json!(false), "fallthrough")),
            (json!({"kind": "user", "key": "u4", "email": "u4@example.com"}), (json!(false), "fallthrough")),
            (json!({"kind": "user", "key": "u9", "email": "u9@example.com"}), (json!(true), "rule in-beta")),
            (json!({"kind": "org", "key": "acme"}), (json!(true), "rule in-beta")),
            (json!({"kind": "org", "key": "evil", "tier": "gold"}), (json!(false), "fallthrough")),
            (json!({"kind": "org", "key": "other", "tier": "gold"}), (json!(true), "rule in-beta")),
        ] {
            assert_eq!(
                evaluate_in_production(&app, "f", context.clone()).await,
                (expected.0, expected.1.into()),
                "{context}"
            );
        }

        // Removing and failing.
        let (s, seg) = app.patch(&path, json!({"instructions": [
            {"kind": "removeRule", "ruleId": "sr0"},
            {"kind": "removeIncluded", "values": ["acme"], "contextKind": "org"},
            {"kind": "removeExcludedTargets", "values": ["u4"]},
            {"kind": "updateRuleClauses", "ruleId": "sr1", "clauses": [{"attribute": "country", "op": "in", "values": ["NZ"]}]}
        ]}))
        .await;
        assert_eq!(s, StatusCode::OK, "{seg}");
        assert_eq!((seg["includedContexts"].clone(), seg["excluded"].clone()), (json!([]), json!([])));
        assert_eq!(seg["rules"].as_array().unwrap().len(), 1);
        assert_eq!(seg["rules"][0]["clauses"][0]["attribute"], json!("country"));
        let (s, e) = app
            .patch(
                &path,
                json!({"instructions": [{"kind": "addIncluded", "values": ["u7"]},
            {"kind": "removeRule", "ruleId": "nope"}]}),
            )
            .await;
        assert_eq!(
            (s, e["message"].clone()),
            (StatusCode::BAD_REQUEST, json!("instructions/1 (removeRule): no rule with id \"nope\""))
        );
        let (s, e) = app.patch(&path, json!({"instructions": [{"kind": "turnFlagOn"}]})).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (s, e) = app
            .patch(
                &path,
                json!({"instructions": [{"kind": "addRule", "ruleId": "self",
            "clauses": [{"attribute": "key", "op": "segmentMatch", "values": ["beta"]}]}]}),
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")), "{e}");
        let (s, e) = app
            .patch(&path, json!({"environmentKey": "test", "instructions": [{"kind": "updateName", "value": "x"}]}))
            .await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (_, seg) = app.get(&path).await;
        assert_eq!((seg["_version"].clone(), seg["included"].clone()), (json!(4), json!(["u2", "u3"])));

        // Delete: refused while a flag uses it, then allowed.
        let (s, e) = app.delete(&path).await;
        assert_eq!((s, e["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")));
        assert!(e["message"].as_str().unwrap().contains("flag \"f\" uses segment \"beta\""), "{e}");
        instruct(&app, "f", json!([{"kind": "removeRule", "ruleId": "in-beta"}])).await;
        let before = outbox_last(&app).await;
        let (s, _) = app.delete(&format!("{path}?comment=gone")).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert_eq!(outbox_since(&app, before).await, [row("production", "segment", "beta", 5)]);
        assert_eq!(app.get(&path).await.0, StatusCode::NOT_FOUND);
        let log = audit(&app, "segment", "beta").await;
        assert_eq!((log[0]["action"].clone(), log[0]["comment"].clone()), (json!("delete"), json!("gone")));
        let reader = app.token("reader", &[]).await;
        assert_eq!(
            app.call(Method::DELETE, &format!("{segs}/alpha"), Some(&reader), None).await.0,
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test]
async fn openapi_lists_flag_and_segment_endpoints() {
    let app = App::new(pennant_store::testing::TestDb::sqlite().await.unwrap()).await;
    let (s, doc) = app.call(Method::GET, "/api/v2/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    for (path, methods) in [
        ("/flags/{projectKey}", &["get", "post"][..]),
        ("/flags/{projectKey}/{flagKey}", &["get", "patch", "delete"][..]),
        ("/flags/{projectKey}/{flagKey}/copy", &["post"][..]),
        ("/segments/{projectKey}/{envKey}", &["get", "post"][..]),
        ("/segments/{projectKey}/{envKey}/{segmentKey}", &["get", "patch", "delete"][..]),
    ] {
        for method in methods {
            assert!(doc["paths"][path].get(*method).is_some(), "{method} {path} missing from the OpenAPI document");
        }
    }
    for schema in ["FlagDoc", "SegmentDoc", "CopyFlag", "CopyAction"] {
        assert!(doc["components"]["schemas"].get(schema).is_some(), "schema {schema} missing");
    }
}
