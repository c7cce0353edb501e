//! The SDK endpoints on both backends: polling with ETags, streaming put/patch/delete fed by the outbox.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use pennant_store::testing::TestDb;
use pennant_store::{Actor, Environment, FlagDoc, Project, Store};
use pennant_stream::{Hub, RelayOptions, StreamState, router, spawn_outbox_relay};
use serde_json::{Value, json};
use tower::ServiceExt;

fn actor() -> Actor {
    Actor::system("test")
}

async fn setup(store: &Store) -> (String, String) {
    store.create_project(&actor(), Project { key: "p".into(), name: "P".into(), tags: vec![] }, "").await.unwrap();
    let env: Environment = serde_json::from_value(json!({"key": "production", "name": "Production"})).unwrap();
    let env = store.create_environment(&actor(), "p", env, "").await.unwrap().data;
    let flag: FlagDoc =
        serde_json::from_value(json!({"key": "f", "name": "F", "variations": [{"value": true}, {"value": false}]}))
            .unwrap();
    store.create_flag(&actor(), "p", flag, "").await.unwrap();
    (env.sdk_key, env.mobile_key)
}

async fn get(
    app: &axum::Router,
    path: &str,
    key: &str,
    etag: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(path).header("Authorization", key);
    if let Some(t) = etag {
        req = req.header("If-None-Match", t);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

/// Reads SSE frames from a streaming body until one matches, with a deadline.
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
            return (event, serde_json::from_str(data).unwrap());
        }
        let chunk = tokio::time::timeout_at(deadline, body.frame()).await.expect("no frame before the deadline");
        let chunk = chunk.unwrap().unwrap();
        buffer.push_str(std::str::from_utf8(&chunk.into_data().unwrap()).unwrap());
    }
}

#[tokio::test]
async fn polling_with_etags_and_credentials() {
    for db in TestDb::both().await.unwrap() {
        let (sdk_key, mobile_key) = setup(&db.store).await;
        let app = router(StreamState {
            source: db.store.clone().into(),
            hub: Arc::new(Hub::new(64)),
            shutdown: tokio::sync::watch::channel(false).1,
        });
        let (status, headers, body) = get(&app, "/sdk/latest-all", &sdk_key, None).await;
        assert_eq!(status, StatusCode::OK);
        let payload: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(payload["flags"]["f"]["version"], json!(1), "{}", db.backend);
        assert_eq!(payload["segments"], json!({}));
        let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
        assert_eq!(get(&app, "/sdk/latest-all", &sdk_key, Some(&etag)).await.0, StatusCode::NOT_MODIFIED);
        assert_eq!(get(&app, "/sdk/latest-all", &format!("api_key {sdk_key}"), None).await.0, StatusCode::OK);
        let (status, _, body) = get(&app, "/sdk/flags/f", &sdk_key, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["key"], json!("f"));
        assert_eq!(get(&app, "/sdk/flags/nope", &sdk_key, None).await.0, StatusCode::NOT_FOUND);
        let (_, _, flags) = get(&app, "/sdk/flags", &sdk_key, None).await;
        assert!(serde_json::from_slice::<Value>(&flags).unwrap().get("f").is_some());
        for bad in ["sdk-nope", mobile_key.as_str(), ""] {
            let (status, _, body) = get(&app, "/sdk/latest-all", bad, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
            assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["code"], json!("unauthorized"));
        }
        // After a change the ETag changes (the relay invalidates the snapshot).
        let hub = Arc::new(Hub::new(64));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let app = router(StreamState { source: db.store.clone().into(), hub: hub.clone(), shutdown: stopped.clone() });
        let relay = spawn_outbox_relay(db.store.clone(), hub, stopped, RelayOptions::default());
        let (_, headers, _) = get(&app, "/sdk/latest-all", &sdk_key, None).await;
        let first = headers.get("etag").unwrap().clone();
        db.store
            .update_flag(&actor(), "p", "f", None, "", |d, _| {
                d.environments.get_mut("production").unwrap().on = true;
                Ok(())
            })
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, headers, body) = get(&app, "/sdk/latest-all", &sdk_key, None).await;
            if headers.get("etag").unwrap() != first {
                assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["flags"]["f"]["on"], json!(true));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the payload never changed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(true).unwrap();
        relay.await.unwrap();
    }
}

#[tokio::test]
async fn streaming_put_then_patches_and_deletes() {
    for db in TestDb::both().await.unwrap() {
        let (sdk_key, _) = setup(&db.store).await;
        let hub = Arc::new(Hub::new(64));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let app = router(StreamState { source: db.store.clone().into(), hub: hub.clone(), shutdown: stopped.clone() });
        let relay = spawn_outbox_relay(db.store.clone(), hub.clone(), stopped, RelayOptions::default());

        let res = app
            .clone()
            .oneshot(Request::get("/all").header("Authorization", &sdk_key).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream; charset=utf-8");
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        let mut body = res.into_body();
        let mut buffer = String::new();
        let (event, put) = next_frame(&mut body, &mut buffer).await;
        assert_eq!(event, "put");
        assert_eq!(put["path"], json!("/"));
        assert_eq!(put["data"]["flags"]["f"]["on"], json!(false));

        db.store
            .update_flag(&actor(), "p", "f", None, "", |d, _| {
                d.environments.get_mut("production").unwrap().on = true;
                Ok(())
            })
            .await
            .unwrap();
        let (event, patch) = next_frame(&mut body, &mut buffer).await;
        assert_eq!((event.as_str(), patch["path"].clone()), ("patch", json!("/flags/f")), "{}", db.backend);
        assert_eq!((patch["data"]["on"].clone(), patch["data"]["version"].clone()), (json!(true), json!(2)));

        let segment = serde_json::from_value(json!({"key": "beta", "name": "Beta", "included": ["u1"]})).unwrap();
        db.store.create_segment(&actor(), "p", "production", segment, "").await.unwrap();
        let (event, patch) = next_frame(&mut body, &mut buffer).await;
        assert_eq!(
            (event.as_str(), patch["path"].clone(), patch["data"]["included"].clone()),
            ("patch", json!("/segments/beta"), json!(["u1"]))
        );

        db.store.delete_flag(&actor(), "p", "f", "").await.unwrap();
        let (event, delete) = next_frame(&mut body, &mut buffer).await;
        assert_eq!((event.as_str(), delete), ("delete", json!({"path": "/flags/f", "version": 3})));

        // A second connection's put reflects everything so far, from one rebuilt snapshot.
        let res = app
            .clone()
            .oneshot(Request::get("/all").header("Authorization", &sdk_key).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let mut body2 = res.into_body();
        let mut buffer2 = String::new();
        let (_, put) = next_frame(&mut body2, &mut buffer2).await;
        assert_eq!(put["data"]["flags"], json!({}));
        assert_eq!(put["data"]["segments"]["beta"]["version"], json!(1));
        // Shutting down ends every stream, so SDKs reconnect elsewhere.
        stop.send(true).unwrap();
        for b in [&mut body, &mut body2] {
            loop {
                match tokio::time::timeout(Duration::from_secs(5), b.frame())
                    .await
                    .expect("stream did not end on shutdown")
                {
                    None => break,
                    Some(frame) => drop(frame.unwrap()),
                }
            }
        }
        relay.await.unwrap();
    }
}

#[tokio::test]
async fn a_slow_reader_is_disconnected_without_slowing_the_others() {
    let db = TestDb::sqlite().await.unwrap();
    let (sdk_key, _) = setup(&db.store).await;
    let hub = Arc::new(Hub::new(4));
    let app = router(StreamState {
        source: db.store.clone().into(),
        hub: hub.clone(),
        shutdown: tokio::sync::watch::channel(false).1,
    });
    let res = app
        .clone()
        .oneshot(Request::get("/all").header("Authorization", &sdk_key).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let mut slow = res.into_body();
    let channel = hub.existing(&pennant_stream::EnvId { project: "p".into(), env: "production".into() }).unwrap();
    // The slow connection reads nothing while more frames than its buffer holds are published.
    for i in 0..10 {
        channel.publish(bytes::Bytes::from(format!("event: patch\ndata: {{\"n\":{i}}}\n\n")));
    }
    let mut all = Vec::new();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), slow.frame()).await.unwrap() {
        all.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    // It got its put, then the stream ended (the SDK will reconnect and get a fresh put).
    let text = String::from_utf8(all).unwrap();
    assert!(text.starts_with("event: put"));
    assert!(!text.contains("\"n\":0"), "the frames it fell behind on were dropped, not queued without bound");
}
