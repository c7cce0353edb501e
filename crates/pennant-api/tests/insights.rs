#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The insights query API on both backends: evaluation series, flag statuses, contexts (list, search, detail with
//! flag values), the custom-event NDJSON export, and error cases.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::App;
use http_body_util::BodyExt;
use pennant_store::{
    BatchInsights, ContextUpsert, CustomEventRecord, DAY_MS, Granularity, HOUR_MS, MINUTE_MS, NO_VARIATION,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const BASE: &str = "/api/v2/insights/p/production";

async fn seed(app: &App, now: i64) {
    app.project().await;
    for (key, on) in [("f", true), ("g", false)] {
        let (s, b) = app
            .post("/api/v2/flags/p", json!({"key": key, "name": key, "variations": [{"value": "a"}, {"value": "b"}]}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        if on {
            let (s, b) = app
                .patch(
                    &format!("/api/v2/flags/p/{key}"),
                    json!({"environmentKey": "production", "instructions": [
                        {"kind": "turnFlagOn"},
                        {"kind": "addRule", "clauses": [{"attribute": "plan", "op": "in", "values": ["gold"]}],
                         "variation": 1}
                    ]}),
                )
                .await;
            assert!(s == StatusCode::OK, "{b}");
        }
    }
    let minute = Granularity::Minute.bucket(now);
    let mut b = BatchInsights::new("m1".into(), "p", "production", now);
    b.add_count("f", 0, minute - 2 * MINUTE_MS, 5);
    b.add_count("f", 1, minute - 2 * MINUTE_MS, 3);
    b.add_count("f", 0, minute, 2);
    b.add_count("f", NO_VARIATION, minute, 1);
    b.add_count("f", 0, minute - 2 * DAY_MS, 100);
    for (key, name, plan, seen) in [("alice", "Alice Smith", "gold", now - 10), ("bob", "Bob Jones", "free", now - 20)]
    {
        let mut attributes = serde_json::Map::new();
        attributes.insert("plan".into(), json!(plan));
        b.add_context(ContextUpsert {
            kind: "user".into(),
            key: key.into(),
            name: Some(name.into()),
            attributes,
            redacted: vec!["email".into()],
            seen_at: seen,
        });
    }
    for i in 0..2500 {
        b.custom.push(CustomEventRecord {
            key: if i % 2 == 0 { "buy".into() } else { "view".into() },
            ts: now - 100_000 + i,
            context_keys: [("user".to_owned(), format!("u{i}"))].into_iter().collect(),
            data: (i == 0).then(|| json!({"cart": 3})),
            metric_value: Some(1.5),
        });
    }
    let written = app.db.store.write_insights(&[b]).await.unwrap();
    assert_eq!(written.batches, 1);
}

#[tokio::test]
async fn evaluation_series_and_statuses() {
    for app in App::both().await {
        let now = pennant_store::now_ms();
        seed(&app, now).await;
        let minute = Granularity::Minute.bucket(now);
        let to = minute + MINUTE_MS;
        let from = minute - 10 * MINUTE_MS;
        let (s, body) = app.get(&format!("{BASE}/flags/f/evaluations?granularity=minute&from={from}&to={to}")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 11, "{} {body}", app.backend());
        assert_eq!(body["buckets"].as_array().unwrap().len(), 2);
        assert_eq!(body["buckets"][0]["time"], minute - 2 * MINUTE_MS);
        assert_eq!(body["buckets"][0]["total"], 8);
        assert_eq!(
            body["buckets"][1]["variations"],
            json!([{"variation": -1, "count": 1}, {"variation": 0, "count": 2}])
        );
        assert_eq!(
            body["totals"],
            json!([{"variation": -1, "count": 1}, {"variation": 0, "count": 7}, {"variation": 1, "count": 3}])
        );

        let day_from = now - 5 * DAY_MS;
        let (s, body) = app.get(&format!("{BASE}/flags/f/evaluations?granularity=day&from={day_from}")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 111);
        let (_, body) =
            app.get(&format!("{BASE}/flags/f/evaluations?granularity=hour&from={}", now - 3 * HOUR_MS)).await;
        assert_eq!(body["total"], 11, "default hour buckets: {body}");
        let (_, body) = app.get(&format!("{BASE}/flags/nothing/evaluations")).await;
        assert_eq!(body["total"], 0);
        assert_eq!(body["buckets"], json!([]));

        // Errors.
        let (s, body) = app.get(&format!("{BASE}/flags/f/evaluations?from={to}&to={from}")).await;
        assert_eq!((s, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
        let (s, _) = app.get(&format!("{BASE}/flags/f/evaluations?granularity=minute&from=0&to={to}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "too many buckets");
        let (s, _) = app.get(&format!("{BASE}/flags/f/evaluations?granularity=week")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, body) = app.get("/api/v2/insights/p/nope/flags/f/evaluations").await;
        assert_eq!((s, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (s, _) = app.call(Method::GET, &format!("{BASE}/flag-statuses"), None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let other = app.token("reader", &["other"]).await;
        let (s, _) = app.call(Method::GET, &format!("{BASE}/flag-statuses"), Some(&other), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);

        // Statuses: f evaluated (several variations) → active; g never evaluated and created now → new.
        let (s, body) = app.get(&format!("{BASE}/flag-statuses")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["flagKey"], "f");
        assert_eq!(items[0]["status"], "active");
        assert_eq!(items[0]["evaluations"], 111);
        assert_eq!(items[0]["variationsServed"], json!([-1, 0, 1]));
        assert!(items[0]["lastEvaluated"].as_i64().unwrap() >= minute);
        assert_eq!(items[1]["status"], "new");
        assert!(items[1].get("lastEvaluated").is_none());
        let (s, body) = app.get(&format!("{BASE}/flag-statuses/g")).await;
        assert_eq!((s, body["status"].as_str()), (StatusCode::OK, Some("new")));
        let (s, _) = app.get(&format!("{BASE}/flag-statuses/zzz")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn contexts_list_search_and_detail() {
    for app in App::both().await {
        let now = pennant_store::now_ms();
        seed(&app, now).await;
        let (s, body) = app.get(&format!("{BASE}/contexts")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let keys: Vec<_> = body["items"].as_array().unwrap().iter().map(|c| c["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["alice", "bob"], "{}", app.backend());
        assert_eq!(body["items"][0]["redactedAttributes"], json!(["email"]));
        let (_, body) = app.get(&format!("{BASE}/contexts?q=jon")).await;
        assert_eq!(body["items"].as_array().unwrap().len(), 1);
        assert_eq!(body["items"][0]["key"], "bob");
        let (_, body) = app.get(&format!("{BASE}/contexts?q=gold%20smith")).await;
        assert_eq!(body["items"][0]["key"], "alice");
        let (_, body) = app.get(&format!("{BASE}/contexts?limit=1")).await;
        let next = body["next"].as_str().unwrap().to_owned();
        let (_, body) = app.get(&format!("{BASE}/contexts?limit=1&after={next}")).await;
        assert_eq!(body["items"][0]["key"], "bob");
        assert!(body.get("next").is_none());
        let (s, _) = app.get(&format!("{BASE}/contexts?limit=0")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = app.get(&format!("{BASE}/contexts?after=garbage")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        // Detail: alice has plan gold, so the rule serves variation 1 of f; g is off (off variation not set).
        let (s, body) = app.get(&format!("{BASE}/contexts/user/alice")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["context"]["name"], "Alice Smith");
        let flags = body["flags"].as_array().unwrap();
        assert_eq!(flags.len(), 2);
        assert_eq!(flags[0]["key"], "f");
        assert_eq!(flags[0]["value"], "b", "{body}");
        assert_eq!(flags[0]["reason"]["kind"], "RULE_MATCH");
        assert_eq!(flags[1]["reason"]["kind"], "OFF");
        let (_, body) = app.get(&format!("{BASE}/contexts/user/bob")).await;
        assert_eq!(body["flags"][0]["reason"]["kind"], "FALLTHROUGH", "{body}");
        let (s, body) = app.get(&format!("{BASE}/contexts/user/carol")).await;
        assert_eq!((s, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    }
}

#[tokio::test]
async fn custom_events_export_as_ndjson() {
    for app in App::both().await {
        let now = pennant_store::now_ms();
        seed(&app, now).await;
        let req = Request::builder()
            .uri(format!("{BASE}/custom-events?from={}&to={now}", now - 200_000))
            .header("Authorization", app.admin.clone())
            .body(Body::empty())
            .unwrap();
        let res = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/x-ndjson");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let lines: Vec<Value> = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2500, "{}: spans several store pages", app.backend());
        assert_eq!(lines[0]["key"], "buy");
        assert_eq!(lines[0]["data"], json!({"cart": 3}));
        assert_eq!(lines[0]["contextKeys"], json!({"user": "u0"}));
        assert!(lines.windows(2).all(|w| w[0]["creationDate"].as_i64() <= w[1]["creationDate"].as_i64()));

        let (s, body) =
            app.get(&format!("{BASE}/custom-events?key=view&from={}&to={}", now - 100_000, now - 99_990)).await;
        assert_eq!(s, StatusCode::OK);
        let text = body.as_str().unwrap_or_default().to_owned();
        assert_eq!(text.lines().count(), 5, "{body}");
        let (s, _) = app.get(&format!("{BASE}/custom-events?from=10&to=5")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = app.get("/api/v2/insights/p/nope/custom-events").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}
