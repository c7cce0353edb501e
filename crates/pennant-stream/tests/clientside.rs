//! Client-side (JavaScript) and mobile SDK endpoints: evalx polling, streams, CORS, secure mode, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use http_body_util::BodyExt;
use pennant_store::testing::TestDb;
use pennant_store::{Actor, Environment, FlagDoc, Project, Store};
use pennant_stream::{Hub, HubOptions, RelayOptions, StreamState, router, spawn_outbox_relay};
use serde_json::{Value, json};
use tower::ServiceExt;

fn actor() -> Actor {
    Actor::system("test")
}

fn b64(context: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(context.to_string())
}

fn report() -> Method {
    Method::from_bytes(b"REPORT").unwrap()
}

fn secure_hash(sdk_key: &str, fully_qualified_key: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(sdk_key.as_bytes()).unwrap();
    mac.update(fully_qualified_key.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Project `p`, environment `production`, and four flags, one per availability:
/// `both` (on, targets alice → false, fallthrough true), `js-only`, `mobile-only`, `server-only` (all off → false).
async fn setup(store: &Store) -> Environment {
    store.create_project(&actor(), Project { key: "p".into(), name: "P".into(), tags: vec![] }, "").await.unwrap();
    let env: Environment = serde_json::from_value(json!({"key": "production", "name": "Production"})).unwrap();
    let env = store.create_environment(&actor(), "p", env, "").await.unwrap().data;
    for (key, js, mobile) in
        [("both", true, true), ("js-only", true, false), ("mobile-only", false, true), ("server-only", false, false)]
    {
        let flag: FlagDoc = serde_json::from_value(json!({
            "key": key, "name": key, "variations": [{"value": true}, {"value": false}],
            "clientSideAvailability": {"usingEnvironmentId": js, "usingMobileKey": mobile},
        }))
        .unwrap();
        store.create_flag(&actor(), "p", flag, "").await.unwrap();
    }
    store
        .update_flag(&actor(), "p", "both", None, "", |d, _| {
            let config = d.environments.get_mut("production").unwrap();
            config.on = true;
            config.targets = vec![serde_json::from_value(json!({"variation": 1, "values": ["alice"]})).unwrap()];
            Ok(())
        })
        .await
        .unwrap();
    env
}

fn state(store: &Store, hub: Arc<Hub>, shutdown: tokio::sync::watch::Receiver<bool>) -> StreamState {
    StreamState { source: store.clone().into(), hub, shutdown }
}

fn app_for(store: &Store) -> axum::Router {
    router(state(store, Arc::new(Hub::new(64)), tokio::sync::watch::channel(false).1))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(app: &axum::Router, request: Request<Body>) -> Answer {
    let res = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    Answer { status: parts.status, headers: parts.headers, body }
}

async fn get(app: &axum::Router, path: &str, auth: Option<&str>) -> Answer {
    let mut req = Request::get(path);
    if let Some(key) = auth {
        req = req.header("Authorization", key);
    }
    send(app, req.body(Body::empty()).unwrap()).await
}

async fn report_json(app: &axum::Router, path: &str, auth: Option<&str>, body: &Value) -> Answer {
    let mut req = Request::builder().method(report()).uri(path).header("Content-Type", "application/json");
    if let Some(key) = auth {
        req = req.header("Authorization", key);
    }
    send(app, req.body(Body::from(body.to_string())).unwrap()).await
}

fn keys(evalx: &Value) -> BTreeSet<String> {
    evalx.as_object().unwrap().keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn evalx_for_client_side_id_and_mobile_key() {
    for db in TestDb::both().await.unwrap() {
        let env = setup(&db.store).await;
        let app = app_for(&db.store);
        let cid = env.client_side_id.as_str();
        let bob = json!({"kind": "user", "key": "bob"});
        let alice = json!({"kind": "user", "key": "alice"});

        // JavaScript: GET with the context in the path; only flags available to the client-side ID.
        let a = get(&app, &format!("/sdk/evalx/{cid}/contexts/{}", b64(&bob)), None).await;
        assert_eq!(a.status, StatusCode::OK, "{}: {}", db.backend, a.body);
        assert_eq!(a.headers["content-type"], "application/json");
        assert_eq!(keys(&a.body), set(&["both", "js-only"]), "{}", db.backend);
        assert_eq!(a.body["both"], json!({"value": true, "variation": 0, "version": 2, "flagVersion": 2}));
        assert_eq!(a.body["js-only"], json!({"value": false, "variation": 1, "version": 1, "flagVersion": 1}));
        // The evaluation is for that context.
        let a = get(&app, &format!("/sdk/evalx/{cid}/contexts/{}", b64(&alice)), None).await;
        assert_eq!((a.body["both"]["value"].clone(), a.body["both"]["variation"].clone()), (json!(false), json!(1)));
        // withReasons.
        let a = get(&app, &format!("/sdk/evalx/{cid}/contexts/{}?withReasons=true", b64(&alice)), None).await;
        assert_eq!(a.body["both"]["reason"], json!({"kind": "TARGET_MATCH"}));
        assert_eq!(a.body["js-only"]["reason"], json!({"kind": "OFF"}));
        let a = get(&app, &format!("/sdk/evalx/{cid}/contexts/{}?withReasons=false", b64(&alice)), None).await;
        assert!(a.body["both"].get("reason").is_none());
        // REPORT with the context as the body, and the legacy user forms.
        let a = report_json(&app, &format!("/sdk/evalx/{cid}/context?withReasons=true"), None, &bob).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body["both"]["reason"], json!({"kind": "FALLTHROUGH"}));
        assert_eq!(keys(&a.body), set(&["both", "js-only"]));
        let old_user = json!({"key": "alice", "custom": {"plan": "gold"}});
        let a = get(&app, &format!("/sdk/evalx/{cid}/users/{}", b64(&old_user)), None).await;
        assert_eq!((a.status, a.body["both"]["value"].clone()), (StatusCode::OK, json!(false)));
        let a = report_json(&app, &format!("/sdk/evalx/{cid}/user"), None, &old_user).await;
        assert_eq!((a.status, a.body["both"]["value"].clone()), (StatusCode::OK, json!(false)));
        // Goals: none.
        let a = get(&app, &format!("/sdk/goals/{cid}"), None).await;
        assert_eq!((a.status, a.body), (StatusCode::OK, json!([])));

        // Mobile: the key in Authorization (raw or `api_key `); only flags available to mobile keys.
        let mob = env.mobile_key.as_str();
        let a = get(&app, &format!("/msdk/evalx/contexts/{}", b64(&bob)), Some(mob)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(keys(&a.body), set(&["both", "mobile-only"]), "{}", db.backend);
        assert_eq!(a.body["both"]["value"], json!(true));
        let a = get(&app, &format!("/msdk/evalx/contexts/{}", b64(&alice)), Some(&format!("api_key {mob}"))).await;
        assert_eq!((a.status, a.body["both"]["value"].clone()), (StatusCode::OK, json!(false)));
        let a = report_json(&app, "/msdk/evalx/context?withReasons=true", Some(mob), &alice).await;
        assert_eq!((a.status, a.body["both"]["reason"].clone()), (StatusCode::OK, json!({"kind": "TARGET_MATCH"})));
        assert_eq!(keys(&a.body), set(&["both", "mobile-only"]));
        let a = get(&app, &format!("/msdk/evalx/users/{}", b64(&old_user)), Some(mob)).await;
        assert_eq!((a.status, a.body["both"]["value"].clone()), (StatusCode::OK, json!(false)));
        let a = report_json(&app, "/msdk/evalx/user", Some(mob), &old_user).await;
        assert_eq!((a.status, keys(&a.body)), (StatusCode::OK, set(&["both", "mobile-only"])));
        // A multi-kind context works too.
        let multi = json!({"kind": "multi", "user": {"key": "alice"}, "org": {"key": "acme"}});
        let a = get(&app, &format!("/msdk/evalx/contexts/{}", b64(&multi)), Some(mob)).await;
        assert_eq!((a.status, a.body["both"]["value"].clone()), (StatusCode::OK, json!(false)));
    }
}

#[tokio::test]
async fn bad_input_is_a_json_error_never_a_panic() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    let app = app_for(&db.store);
    let cid = env.client_side_id.as_str();
    let mob = env.mobile_key.as_str();
    let bob = json!({"key": "bob"});
    let enc = |bytes: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);

    // Malformed base64, not JSON, not an object, no key, bad kind, bad multi: 400 on every GET form.
    let bad_contexts = [
        "!!!not-base64!!!".to_owned(),
        "a".to_owned(),
        enc("not json"),
        enc("[1,2]"),
        enc(r#"{"kind":"user"}"#),
        enc(r#"{"kind":"user","key":""}"#),
        enc(r#"{"kind":"user","key":17}"#),
        enc(r#"{"name":"no key"}"#),
        enc(r#"{"kind":"kind","key":"x"}"#),
        enc(r#"{"kind":"multi"}"#),
        enc(r#"{"kind":"multi","user":{"name":"no key"}}"#),
    ];
    for ctx in &bad_contexts {
        for path in [
            format!("/sdk/evalx/{cid}/contexts/{ctx}"),
            format!("/sdk/evalx/{cid}/users/{ctx}"),
            format!("/eval/{cid}/{ctx}"),
        ] {
            let a = get(&app, &path, None).await;
            assert_eq!((a.status, a.body["code"].clone()), (StatusCode::BAD_REQUEST, json!("bad_request")), "{path}");
            assert!(a.body["message"].as_str().unwrap().contains("context"), "{}", a.body);
        }
        for path in [format!("/msdk/evalx/contexts/{ctx}"), format!("/meval/{ctx}")] {
            let a = get(&app, &path, Some(mob)).await;
            assert_eq!((a.status, a.body["code"].clone()), (StatusCode::BAD_REQUEST, json!("bad_request")), "{path}");
        }
    }
    // REPORT bodies: invalid JSON or a context without a key → 400; not declared JSON → 415.
    let js_reports = [format!("/sdk/evalx/{cid}/context"), format!("/sdk/evalx/{cid}/user"), format!("/eval/{cid}")];
    let mobile_reports = ["/msdk/evalx/context".to_owned(), "/msdk/evalx/user".to_owned(), "/meval".to_owned()];
    for (path, auth) in js_reports.iter().map(|p| (p, None)).chain(mobile_reports.iter().map(|p| (p, Some(mob)))) {
        for body in ["{", r#"{"kind":"user"}"#, "null", ""] {
            let mut req =
                Request::builder().method(report()).uri(path.as_str()).header("Content-Type", "application/json");
            if let Some(key) = auth {
                req = req.header("Authorization", key);
            }
            let a = send(&app, req.body(Body::from(body)).unwrap()).await;
            assert_eq!((a.status, a.body["code"].clone()), (StatusCode::BAD_REQUEST, json!("bad_request")), "{path}");
        }
        for content_type in [None, Some("text/plain"), Some("application/jsonx")] {
            let mut req = Request::builder().method(report()).uri(path.as_str());
            if let Some(t) = content_type {
                req = req.header("Content-Type", t);
            }
            if let Some(key) = auth {
                req = req.header("Authorization", key);
            }
            let a = send(&app, req.body(Body::from(bob.to_string())).unwrap()).await;
            assert_eq!(
                (a.status, a.body["code"].clone()),
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, json!("unsupported_media_type")),
                "{path} {content_type:?}"
            );
        }
        // A charset parameter is fine.
        let mut req = Request::builder()
            .method(report())
            .uri(path.as_str())
            .header("Content-Type", "application/json; charset=utf-8");
        if let Some(key) = auth {
            req = req.header("Authorization", key);
        }
        let res = app.clone().oneshot(req.body(Body::from(bob.to_string())).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        // Only REPORT (and the CORS preflight) on the REPORT paths.
        let mut req = Request::builder().method(Method::DELETE).uri(path.as_str());
        if let Some(key) = auth {
            req = req.header("Authorization", key);
        }
        let a = send(&app, req.body(Body::empty()).unwrap()).await;
        assert_eq!((a.status, a.body["code"].clone()), (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed")));
    }

    // Unknown environment IDs on the JavaScript routes → 404, including other kinds of credential.
    let ctx = b64(&bob);
    for id in ["nope", env.sdk_key.as_str(), mob] {
        for path in [
            format!("/sdk/evalx/{id}/contexts/{ctx}"),
            format!("/sdk/evalx/{id}/users/{ctx}"),
            format!("/sdk/goals/{id}"),
            format!("/eval/{id}/{ctx}"),
            format!("/ping/{id}"),
        ] {
            let a = get(&app, &path, None).await;
            assert_eq!((a.status, a.body["code"].clone()), (StatusCode::NOT_FOUND, json!("not_found")), "{path}");
        }
        let a = report_json(&app, &format!("/sdk/evalx/{id}/context"), None, &bob).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        let a = report_json(&app, &format!("/eval/{id}"), None, &bob).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
    // Missing or wrong mobile keys → 401, including other kinds of credential.
    for auth in [None, Some(""), Some("mob-nope"), Some(env.sdk_key.as_str()), Some(cid), Some("api_key ")] {
        for path in [format!("/msdk/evalx/contexts/{ctx}"), format!("/msdk/evalx/users/{ctx}"), format!("/meval/{ctx}")]
        {
            let a = get(&app, &path, auth).await;
            assert_eq!((a.status, a.body["code"].clone()), (StatusCode::UNAUTHORIZED, json!("unauthorized")), "{path}");
        }
        let a = get(&app, "/mping", auth).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        for path in ["/msdk/evalx/context", "/meval"] {
            let a = report_json(&app, path, auth, &bob).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
        }
    }
}

#[tokio::test]
async fn secure_mode_requires_the_context_hash_on_browser_routes() {
    for db in TestDb::both().await.unwrap() {
        let env = setup(&db.store).await;
        db.store
            .update_environment(&actor(), "p", "production", None, "", |e| {
                e.secure_mode = true;
                Ok(())
            })
            .await
            .unwrap();
        let app = app_for(&db.store);
        let cid = env.client_side_id.as_str();
        let bob = json!({"key": "bob"});
        let org = json!({"kind": "org", "key": "acme"});
        let multi = json!({"kind": "multi", "user": {"key": "bob"}, "org": {"key": "acme"}});
        for (context, fq_key) in [(&bob, "bob"), (&org, "org:acme"), (&multi, "org:acme:user:bob")] {
            let good = secure_hash(&env.sdk_key, fq_key);
            let path = format!("/sdk/evalx/{cid}/contexts/{}", b64(context));
            let a = get(&app, &format!("{path}?h={good}"), None).await;
            assert_eq!(a.status, StatusCode::OK, "{}: {fq_key} {}", db.backend, a.body);
            assert_eq!(keys(&a.body), set(&["both", "js-only"]));
            let a =
                report_json(&app, &format!("/sdk/evalx/{cid}/context?withReasons=true&h={good}"), None, context).await;
            assert_eq!(a.status, StatusCode::OK);
            let wrong_key = secure_hash(&env.mobile_key, fq_key);
            let wrong_context = secure_hash(&env.sdk_key, "somebody-else");
            for query in [
                "".to_owned(),
                "?h=".to_owned(),
                "?h=zz".to_owned(),
                format!("?h={wrong_key}"),
                format!("?h={wrong_context}"),
            ] {
                let a = get(&app, &format!("{path}{query}"), None).await;
                assert_eq!((a.status, a.body["code"].clone()), (StatusCode::FORBIDDEN, json!("forbidden")), "{query}");
                let a = get(&app, &format!("/eval/{cid}/{}{query}", b64(context)), None).await;
                assert_eq!(a.status, StatusCode::FORBIDDEN, "{query}");
            }
            let res = app
                .clone()
                .oneshot(Request::get(format!("/eval/{cid}/{}?h={good}", b64(context))).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        // Mobile keys are secret, so mobile routes need no hash.
        let a = get(&app, &format!("/msdk/evalx/contexts/{}", b64(&bob)), Some(&env.mobile_key)).await;
        assert_eq!(a.status, StatusCode::OK);
        // Without secure mode, no hash is needed (a fresh hub: the settings are read again).
        db.store
            .update_environment(&actor(), "p", "production", None, "", |e| {
                e.secure_mode = false;
                Ok(())
            })
            .await
            .unwrap();
        let a = get(&app_for(&db.store), &format!("/sdk/evalx/{cid}/contexts/{}", b64(&bob)), None).await;
        assert_eq!(a.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn cors_on_browser_routes_only() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    let app = app_for(&db.store);
    let cid = env.client_side_id.as_str();
    let ctx = b64(&json!({"key": "bob"}));
    let origin = "https://app.example.com";
    for (path, method) in [
        (format!("/sdk/evalx/{cid}/context"), "REPORT"),
        (format!("/sdk/evalx/{cid}/contexts/{ctx}"), "GET"),
        (format!("/eval/{cid}/{ctx}"), "GET"),
        (format!("/eval/{cid}"), "REPORT"),
        (format!("/sdk/goals/{cid}"), "GET"),
        (format!("/ping/{cid}"), "GET"),
    ] {
        let req = Request::builder()
            .method(Method::OPTIONS)
            .uri(path.as_str())
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method)
            .header("Access-Control-Request-Headers", "content-type,x-launchdarkly-user-agent,x-launchdarkly-wrapper")
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], origin, "{path}");
        assert_eq!(h["access-control-max-age"], "300");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let methods = h["access-control-allow-methods"].to_str().unwrap().to_ascii_uppercase();
        assert!(methods.contains("REPORT") && methods.contains("GET"), "{methods}");
        let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        for header in [
            "content-type",
            "x-launchdarkly-user-agent",
            "x-launchdarkly-payload-id",
            "x-launchdarkly-wrapper",
            "x-launchdarkly-event-schema",
            "x-launchdarkly-tags",
        ] {
            assert!(allowed.contains(header), "{header} not in {allowed}");
        }
    }
    // Actual requests echo the origin too (also on errors, so the browser can read them).
    let req = Request::get(format!("/sdk/evalx/{cid}/contexts/{ctx}")).header("Origin", origin).body(Body::empty());
    let res = app.clone().oneshot(req.unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["access-control-allow-origin"], origin);
    let req = Request::get(format!("/sdk/evalx/nope/contexts/{ctx}")).header("Origin", origin).body(Body::empty());
    let res = app.clone().oneshot(req.unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["access-control-allow-origin"], origin);
    // Mobile and server routes are not for browsers.
    let req = Request::get(format!("/msdk/evalx/contexts/{ctx}"))
        .header("Origin", origin)
        .header("Authorization", &env.mobile_key)
        .body(Body::empty());
    let res = app.clone().oneshot(req.unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

/// Reads SSE frames from a streaming body until a complete one arrives, with a deadline.
async fn next_frame(body: &mut Body, buffer: &mut String) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if frame.starts_with(':') {
                continue; // heartbeat
            }
            let event = frame.lines().find_map(|l| l.strip_prefix("event: ")).unwrap().to_owned();
            let data = frame.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let data = if data.trim().is_empty() { Value::Null } else { serde_json::from_str(data).unwrap() };
            return (event, data);
        }
        let chunk = tokio::time::timeout_at(deadline, body.frame()).await.expect("no frame before the deadline");
        let chunk = chunk.expect("the stream ended").unwrap();
        buffer.push_str(std::str::from_utf8(&chunk.into_data().unwrap()).unwrap());
    }
}

async fn open(app: &axum::Router, request: Request<Body>) -> (Body, String) {
    let res = app.clone().oneshot(request).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    (res.into_body(), String::new())
}

async fn ends(body: &mut Body) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("stream did not end") {
            None => break,
            Some(frame) => drop(frame.unwrap()),
        }
    }
}

#[tokio::test]
async fn client_streams_put_then_patch_and_delete_on_changes() {
    for db in TestDb::both().await.unwrap() {
        let env = setup(&db.store).await;
        let hub = Arc::new(Hub::new(64));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let app = router(state(&db.store, hub.clone(), stopped.clone()));
        let relay = spawn_outbox_relay(db.store.clone(), hub, stopped, RelayOptions::default());
        let cid = env.client_side_id.clone();
        let bob = json!({"key": "bob"});

        // JavaScript stream (GET, with reasons), mobile stream (REPORT), and the ping-only streams.
        let (mut js, mut js_buf) = open(
            &app,
            Request::get(format!("/eval/{cid}/{}?withReasons=true", b64(&bob))).body(Body::empty()).unwrap(),
        )
        .await;
        let (event, put) = next_frame(&mut js, &mut js_buf).await;
        assert_eq!(event, "put", "{}", db.backend);
        assert_eq!(keys(&put), set(&["both", "js-only"]));
        assert_eq!(
            put["both"],
            json!({"value": true, "variation": 0, "version": 2, "flagVersion": 2, "reason": {"kind": "FALLTHROUGH"}})
        );
        let (mut mobile, mut mobile_buf) = open(
            &app,
            Request::builder()
                .method(report())
                .uri("/meval")
                .header("Authorization", &env.mobile_key)
                .header("Content-Type", "application/json")
                .body(Body::from(bob.to_string()))
                .unwrap(),
        )
        .await;
        let (event, put) = next_frame(&mut mobile, &mut mobile_buf).await;
        assert_eq!((event.as_str(), keys(&put)), ("put", set(&["both", "mobile-only"])));
        assert!(put["both"].get("reason").is_none());
        let (mut ping, mut ping_buf) =
            open(&app, Request::get(format!("/ping/{cid}")).body(Body::empty()).unwrap()).await;
        assert_eq!(next_frame(&mut ping, &mut ping_buf).await.0, "ping");
        let (mut mping, mut mping_buf) =
            open(&app, Request::get("/mping").header("Authorization", &env.mobile_key).body(Body::empty()).unwrap())
                .await;
        assert_eq!(next_frame(&mut mping, &mut mping_buf).await.0, "ping");

        // A change to a flag the browser cannot see sends it nothing; the mobile stream gets a patch.
        db.store
            .update_flag(&actor(), "p", "mobile-only", None, "", |d, _| {
                d.environments.get_mut("production").unwrap().on = true;
                Ok(())
            })
            .await
            .unwrap();
        let (event, patch) = next_frame(&mut mobile, &mut mobile_buf).await;
        assert_eq!(event, "patch", "{}", db.backend);
        assert_eq!(patch, json!({"key": "mobile-only", "value": true, "variation": 0, "version": 2, "flagVersion": 2}));
        assert_eq!(next_frame(&mut ping, &mut ping_buf).await.0, "ping");
        assert_eq!(next_frame(&mut mping, &mut mping_buf).await.0, "ping");

        // A change the browser can see: a patch of that one entry, re-evaluated for its context. (The segment the
        // rule uses must exist; creating it, empty, changes nothing the browser sees.)
        let segment = serde_json::from_value(json!({"key": "beta", "name": "Beta"})).unwrap();
        db.store.create_segment(&actor(), "p", "production", segment, "").await.unwrap();
        db.store
            .update_flag(&actor(), "p", "js-only", None, "", |d, _| {
                let config = d.environments.get_mut("production").unwrap();
                config.on = true;
                // Bob is in segment `beta` → false; everyone else falls through → true.
                config.rules = vec![
                    serde_json::from_value(json!({
                        "id": "r1", "variation": 1,
                        "clauses": [{"attribute": "", "op": "segmentMatch", "values": ["beta"]}],
                    }))
                    .unwrap(),
                ];
                Ok(())
            })
            .await
            .unwrap();
        let (event, patch) = next_frame(&mut js, &mut js_buf).await;
        assert_eq!(event, "patch", "{}: the mobile-only change must not reach the browser", db.backend);
        assert_eq!(
            patch,
            json!({"key": "js-only", "value": true, "variation": 0, "version": 2, "flagVersion": 2,
                   "reason": {"kind": "FALLTHROUGH"}})
        );

        // A segment change alters bob's result without a new flag version: the patch's version still grows (SDKs
        // ignore patches that do not), while flagVersion stays the flag's.
        db.store
            .update_segment(&actor(), "p", "production", "beta", None, "", |d| {
                let mut segment = serde_json::to_value(&d.segment).unwrap();
                segment["included"] = json!(["bob"]);
                d.segment = serde_json::from_value(segment).unwrap();
                Ok(())
            })
            .await
            .unwrap();
        let (event, patch) = next_frame(&mut js, &mut js_buf).await;
        assert_eq!(event, "patch", "{}", db.backend);
        assert_eq!(
            patch,
            json!({"key": "js-only", "value": false, "variation": 1, "version": 3, "flagVersion": 2,
                   "reason": {"kind": "RULE_MATCH", "ruleIndex": 0, "ruleId": "r1"}})
        );

        // A flag taken away from browsers is a delete for them; deleting a flag is a delete for everyone.
        db.store
            .update_flag(&actor(), "p", "both", None, "", |d, _| {
                d.client_side_availability.using_environment_id = false;
                Ok(())
            })
            .await
            .unwrap();
        let (event, delete) = next_frame(&mut js, &mut js_buf).await;
        assert_eq!((event.as_str(), delete), ("delete", json!({"key": "both", "version": 3})), "{}", db.backend);
        let (event, patch) = next_frame(&mut mobile, &mut mobile_buf).await;
        assert_eq!(
            (event.as_str(), patch["key"].clone(), patch["version"].clone()),
            ("patch", json!("both"), json!(3))
        );
        db.store.delete_flag(&actor(), "p", "mobile-only", "").await.unwrap();
        let (event, delete) = next_frame(&mut mobile, &mut mobile_buf).await;
        assert_eq!((event.as_str(), delete["key"].clone()), ("delete", json!("mobile-only")), "{}", db.backend);
        assert!(delete["version"].as_u64().unwrap() > 2, "{delete}");

        // A new connection's put reflects everything so far.
        let (mut js2, mut js2_buf) =
            open(&app, Request::get(format!("/eval/{cid}/{}", b64(&bob))).body(Body::empty()).unwrap()).await;
        let (event, put) = next_frame(&mut js2, &mut js2_buf).await;
        assert_eq!(
            (event.as_str(), put),
            ("put", json!({"js-only": {"value": false, "variation": 1, "version": 2, "flagVersion": 2}}))
        );

        // Shutting down ends every stream.
        stop.send(true).unwrap();
        for body in [&mut js, &mut mobile, &mut ping, &mut mping, &mut js2] {
            ends(body).await;
        }
        relay.await.unwrap();
    }
}

#[tokio::test]
async fn a_slow_client_stream_is_closed_without_slowing_the_others() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    let hub = Arc::new(Hub::new(4));
    let app = router(state(&db.store, hub.clone(), tokio::sync::watch::channel(false).1));
    let path = format!("/eval/{}/{}", env.client_side_id, b64(&json!({"key": "bob"})));
    let (mut slow, _) = open(&app, Request::get(&path).body(Body::empty()).unwrap()).await;
    let (mut fast, mut fast_buf) = open(&app, Request::get(&path).body(Body::empty()).unwrap()).await;
    assert_eq!(next_frame(&mut fast, &mut fast_buf).await.0, "put");
    let channel = hub.existing(&pennant_stream::EnvId { project: "p".into(), env: "production".into() }).unwrap();
    // The slow connection reads nothing while more frames than its buffer holds are published; the fast one
    // keeps up (each frame makes it re-evaluate; nothing changed, so it only forwards the heartbeats).
    for _ in 0..10 {
        channel.publish(bytes::Bytes::from_static(b"event: patch\ndata: {}\n\n"));
        channel.publish(bytes::Bytes::from_static(b":\n\n"));
        let chunk = tokio::time::timeout(Duration::from_secs(5), fast.frame()).await.unwrap().unwrap().unwrap();
        assert_eq!(chunk.into_data().unwrap().as_ref(), b":\n\n");
    }
    let mut all = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), slow.frame()).await.unwrap() {
        all.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    let text = String::from_utf8(all).unwrap();
    assert!(text.starts_with("event: put"), "{text}");
    assert!(!text.contains(":\n\n"), "the slow stream ended instead of queueing: {text}");
    // The fast one is still open and live.
    channel.publish(bytes::Bytes::from_static(b":\n\n"));
    let chunk = tokio::time::timeout(Duration::from_secs(5), fast.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(chunk.into_data().unwrap().as_ref(), b":\n\n");
}

#[tokio::test]
async fn client_streams_end_at_the_maximum_connection_lifetime() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    let options = HubOptions { max_connection_lifetime: Some(Duration::from_millis(200)), ..HubOptions::default() };
    let app = router(state(&db.store, Arc::new(Hub::with_options(options)), tokio::sync::watch::channel(false).1));
    let bob = json!({"key": "bob"});
    for path in [format!("/eval/{}/{}", env.client_side_id, b64(&bob)), format!("/ping/{}", env.client_side_id)] {
        let (mut body, mut buffer) = open(&app, Request::get(&path).body(Body::empty()).unwrap()).await;
        let (event, _) = next_frame(&mut body, &mut buffer).await;
        assert!(event == "put" || event == "ping", "{path}: {event}");
        ends(&mut body).await;
    }
}
