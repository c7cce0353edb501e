//! The event endpoints on both backends, over the embedded queue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use pennant_events::{EmbeddedConfig, EmbeddedQueue, EventsConfig, EventsState, Queue, QueuedBatch, router};
use pennant_store::testing::TestDb;
use pennant_store::{Actor, Environment, Project, Store};
use serde_json::json;
use tower::ServiceExt;

const BATCH: &str = r#"[{"kind":"index","creationDate":1,"context":{"kind":"user","key":"u1"}},
    {"kind":"custom","creationDate":2,"key":"click","contextKeys":{"user":"u1"}}]"#;

async fn env(store: &Store, key: &str) -> Environment {
    let actor = Actor::system("test");
    if store.get_project("p").await.is_err() {
        store.create_project(&actor, Project { key: "p".into(), name: "P".into(), tags: vec![] }, "").await.unwrap();
    }
    let env: Environment = serde_json::from_value(json!({"key": key, "name": key})).unwrap();
    store.create_environment(&actor, "p", env, "").await.unwrap().data
}

async fn app(store: &Store, queue: EmbeddedConfig, config: EventsConfig) -> (axum::Router, EventsState) {
    let queue = Queue::Embedded(EmbeddedQueue::open(store.clone(), queue).await.unwrap());
    let state = EventsState::new(store.clone(), queue, config);
    (router(state.clone()), state)
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

fn post(path: &str, auth: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::post(path).header("Content-Type", "application/json");
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    req.body(body.into()).unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

async fn drain(state: &EventsState) -> Vec<QueuedBatch> {
    let batches = state.queue().pull(100, Duration::from_millis(10)).await.unwrap();
    let ids: Vec<u64> = batches.iter().map(|b| b.id).collect();
    state.queue().ack(&ids).await.unwrap();
    batches
}

#[tokio::test]
async fn server_mobile_and_browser_batches_are_queued() {
    for db in TestDb::both().await.unwrap() {
        let prod = env(&db.store, "production").await;
        let (app, state) = app(&db.store, EmbeddedConfig::default(), EventsConfig::default()).await;

        // Server SDK, plain and gzip, with and without the `api_key ` prefix.
        let mut req = post("/bulk", Some(&prod.sdk_key), BATCH);
        req.headers_mut().insert("X-LaunchDarkly-Event-Schema", "4".parse().unwrap());
        req.headers_mut().insert("X-LaunchDarkly-Payload-ID", "p-1".parse().unwrap());
        let (status, _, _) = send(&app, req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{}", db.backend);
        let mut req = post("/bulk", Some(&format!("api_key {}", prod.sdk_key)), gzip(BATCH.as_bytes()));
        req.headers_mut().insert("Content-Encoding", "gzip".parse().unwrap());
        assert_eq!(send(&app, req).await.0, StatusCode::ACCEPTED);

        // Mobile, every path.
        for path in ["/mobile", "/mobile/events", "/mobile/events/bulk"] {
            assert_eq!(send(&app, post(path, Some(&prod.mobile_key), BATCH)).await.0, StatusCode::ACCEPTED, "{path}");
        }
        // Browser.
        let path = format!("/events/bulk/{}", prod.client_side_id);
        assert_eq!(send(&app, post(&path, None, BATCH)).await.0, StatusCode::ACCEPTED);

        let batches = drain(&state).await;
        assert_eq!(batches.len(), 6, "{}", db.backend);
        for b in &batches {
            assert_eq!((b.project.as_str(), b.env.as_str()), ("p", "production"));
            assert_eq!(b.body, BATCH.as_bytes(), "gzip bodies are queued decompressed");
            assert!(b.received_at_ms > 0);
        }
        assert_eq!(batches[0].payload_id.as_deref(), Some("p-1"));
        assert_eq!(batches[0].schema, 4);
        assert_eq!(batches[1].payload_id, None);
        assert_eq!(batches[1].schema, 0);
        let stats = state.stats();
        assert_eq!((stats.accepted_batches, stats.accepted_events, stats.skipped_events), (6, 12, 0));
        assert_eq!(state.queue().depth().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn credentials_are_checked_per_route() {
    for db in TestDb::both().await.unwrap() {
        let prod = env(&db.store, "production").await;
        let (app, state) = app(&db.store, EmbeddedConfig::default(), EventsConfig::default()).await;
        for (path, auth) in [
            ("/bulk", None),
            ("/bulk", Some("sdk-nope")),
            ("/bulk", Some(prod.mobile_key.as_str())),
            ("/bulk", Some(prod.client_side_id.as_str())),
            ("/diagnostic", Some(prod.mobile_key.as_str())),
            ("/mobile", Some(prod.sdk_key.as_str())),
            ("/mobile/events/diagnostic", Some(prod.sdk_key.as_str())),
        ] {
            let (status, _, body) = send(&app, post(path, auth, BATCH)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["code"], "unauthorized");
        }
        for id in ["nope", prod.sdk_key.as_str(), prod.mobile_key.as_str()] {
            let (status, _, _) = send(&app, post(&format!("/events/bulk/{id}"), None, BATCH)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
        }
        assert!(drain(&state).await.is_empty());
    }
}

#[tokio::test]
async fn malformed_batches_are_rejected_and_bad_events_skipped() {
    for db in TestDb::both().await.unwrap() {
        let prod = env(&db.store, "production").await;
        let (app, state) = app(&db.store, EmbeddedConfig::default(), EventsConfig::default()).await;
        let key = Some(prod.sdk_key.as_str());
        for body in [&b"[{\"kind\":"[..], b"{\"kind\":\"custom\"}", b"", b"\xff"] {
            let (status, _, response) = send(&app, post("/bulk", key, body.to_vec())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
            let response: serde_json::Value = serde_json::from_slice(&response).unwrap();
            assert_eq!(response["code"], "malformed_events");
        }
        // Not gzip although it says so.
        let mut req = post("/bulk", key, BATCH);
        req.headers_mut().insert("Content-Encoding", "gzip".parse().unwrap());
        assert_eq!(send(&app, req).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(state.queue().depth().await.unwrap(), 0, "nothing queued");
        assert_eq!(state.stats().rejected_batches, 5);

        let mixed = r#"[{"kind":"custom","creationDate":1,"key":"k","contextKeys":{"user":"u"}},
            {"kind":"feature","creationDate":"bad"}, {"kind":"what"}, 7]"#;
        assert_eq!(send(&app, post("/bulk", key, mixed)).await.0, StatusCode::ACCEPTED);
        // A batch with nothing usable is answered 202 and not queued.
        assert_eq!(send(&app, post("/bulk", key, "[1, 2]")).await.0, StatusCode::ACCEPTED);
        assert_eq!(send(&app, post("/bulk", key, "[]")).await.0, StatusCode::ACCEPTED);
        let stats = state.stats();
        assert_eq!((stats.accepted_batches, stats.accepted_events, stats.skipped_events), (1, 1, 5));
        assert_eq!(drain(&state).await.len(), 1);
    }
}

#[tokio::test]
async fn retries_with_the_same_payload_id_are_queued_once() {
    for db in TestDb::both().await.unwrap() {
        let prod = env(&db.store, "production").await;
        let test = env(&db.store, "test").await;
        let (app, state) = app(&db.store, EmbeddedConfig::default(), EventsConfig::default()).await;
        let with_id = |key: &str, id: &str| {
            let mut req = post("/bulk", Some(key), BATCH);
            req.headers_mut().insert("X-LaunchDarkly-Payload-ID", id.parse().unwrap());
            req
        };
        for req in [
            with_id(&prod.sdk_key, "a"),
            with_id(&prod.sdk_key, "a"),
            with_id(&prod.sdk_key, "b"),
            with_id(&test.sdk_key, "a"),
        ] {
            assert_eq!(send(&app, req).await.0, StatusCode::ACCEPTED);
        }
        let batches = drain(&state).await;
        let got: Vec<(String, Option<String>)> = batches.into_iter().map(|b| (b.env, b.payload_id)).collect();
        assert_eq!(
            got,
            vec![
                ("production".into(), Some("a".into())),
                ("production".into(), Some("b".into())),
                ("test".into(), Some("a".into()))
            ],
            "{}",
            db.backend
        );
        assert_eq!(state.stats().duplicate_batches, 1);
    }
}

#[tokio::test]
async fn bodies_are_bounded() {
    let db = TestDb::sqlite().await.unwrap();
    let prod = env(&db.store, "production").await;
    let config = EventsConfig { max_body_bytes: 1024, ..EventsConfig::default() };
    let (app, state) = app(&db.store, EmbeddedConfig::default(), config).await;
    let big = format!(
        "[{}]",
        vec![r#"{"kind":"custom","creationDate":1,"key":"k","contextKeys":{"user":"u"}}"#; 40].join(",")
    );
    assert!(big.len() > 1024);
    let (status, _, body) = send(&app, post("/bulk", Some(&prod.sdk_key), big.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("too_large"));
    // Without Content-Length (streamed body).
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.clone().into_bytes())]);
    let (status, _, _) = send(&app, post("/bulk", Some(&prod.sdk_key), Body::from_stream(stream))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Small when compressed, too big once inflated.
    let compressed = gzip(big.as_bytes());
    assert!(compressed.len() < 1024);
    let mut req = post("/bulk", Some(&prod.sdk_key), compressed);
    req.headers_mut().insert("Content-Encoding", "gzip".parse().unwrap());
    assert_eq!(send(&app, req).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(state.queue().depth().await.unwrap(), 0);
    assert_eq!(state.stats().rejected_batches, 3);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    for db in TestDb::both().await.unwrap() {
        let prod = env(&db.store, "production").await;
        let queue = EmbeddedConfig { max_batches: 1, retry_after: Duration::from_secs(3), ..EmbeddedConfig::default() };
        let (app, state) = app(&db.store, queue, EventsConfig::default()).await;
        assert_eq!(send(&app, post("/bulk", Some(&prod.sdk_key), BATCH)).await.0, StatusCode::ACCEPTED);
        let (status, headers, body) = send(&app, post("/bulk", Some(&prod.sdk_key), BATCH)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers.get("retry-after").unwrap(), "3");
        assert!(String::from_utf8_lossy(&body).contains("queue_full"));
        let stats = state.stats();
        assert_eq!((stats.rejected_batches, stats.rejected_events), (1, 2));
        // Once the processor acknowledges, there is room again.
        assert_eq!(drain(&state).await.len(), 1);
        assert_eq!(send(&app, post("/bulk", Some(&prod.sdk_key), BATCH)).await.0, StatusCode::ACCEPTED);
    }
}

#[tokio::test]
async fn batches_a_processor_holds_unacknowledged_still_fill_the_queue() {
    // A lagging processor: it has pulled what was queued but not acknowledged it (still writing). Those batches
    // count against the bound until the acknowledgement, so the front door pushes back instead of queuing more.
    for db in TestDb::both().await.unwrap() {
        let prod = env(&db.store, "production").await;
        let queue = EmbeddedConfig { max_batches: 2, retry_after: Duration::from_secs(4), ..EmbeddedConfig::default() };
        let (app, state) = app(&db.store, queue, EventsConfig::default()).await;
        for _ in 0..2 {
            assert_eq!(send(&app, post("/bulk", Some(&prod.sdk_key), BATCH)).await.0, StatusCode::ACCEPTED);
        }
        let held = state.queue().pull(100, Duration::from_millis(10)).await.unwrap();
        assert_eq!(held.len(), 2, "{}", db.backend);
        assert_eq!(state.queue().depth().await.unwrap(), 2, "{}", db.backend);
        let (status, headers, _) = send(&app, post("/bulk", Some(&prod.sdk_key), BATCH)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", db.backend);
        assert_eq!(headers.get("retry-after").unwrap(), "4");
        // Nothing was queued behind the processor's back.
        assert!(state.queue().pull(100, Duration::from_millis(10)).await.unwrap().is_empty(), "{}", db.backend);

        // One acknowledged: room for exactly one more.
        state.queue().ack(&[held[0].id]).await.unwrap();
        assert_eq!(send(&app, post("/bulk", Some(&prod.sdk_key), BATCH)).await.0, StatusCode::ACCEPTED);
        assert_eq!(send(&app, post("/bulk", Some(&prod.sdk_key), BATCH)).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(state.stats().rejected_batches, 2, "{}", db.backend);
    }
}

#[tokio::test]
async fn browser_routes_answer_cors_and_the_gif() {
    let db = TestDb::sqlite().await.unwrap();
    let prod = env(&db.store, "production").await;
    let (app, state) = app(&db.store, EmbeddedConfig::default(), EventsConfig::default()).await;
    let path = format!("/events/bulk/{}", prod.client_side_id);

    let preflight = Request::options(&path)
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type,x-launchdarkly-payload-id")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&app, preflight).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), "https://app.example.com");
    assert!(headers.get("access-control-allow-methods").unwrap().to_str().unwrap().contains("POST"));
    let allowed = headers.get("access-control-allow-headers").unwrap().to_str().unwrap().to_lowercase();
    assert!(allowed.contains("x-launchdarkly-payload-id"), "{allowed}");
    assert_eq!(headers.get("access-control-max-age").unwrap(), "300");

    let mut req = post(&path, None, BATCH);
    req.headers_mut().insert("Origin", "https://app.example.com".parse().unwrap());
    let (status, headers, _) = send(&app, req).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), "https://app.example.com");

    let diag = format!("/events/diagnostic/{}", prod.client_side_id);
    let body = r#"{"kind":"diagnostic-init","id":{"diagnosticId":"x"},"creationDate":1}"#;
    assert_eq!(send(&app, post(&diag, None, body)).await.0, StatusCode::ACCEPTED);

    let d = base64::engine::general_purpose::STANDARD.encode(BATCH);
    let gif = Request::get(format!("/a/{}.gif?d={}", prod.client_side_id, d.replace('+', "%2B").replace('=', "%3D")))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app, gif).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("content-type").unwrap(), "image/gif");
    assert!(body.starts_with(b"GIF89a"));
    let gif = Request::get("/a/unknown.gif?d=W10=").body(Body::empty()).unwrap();
    assert_eq!(send(&app, gif).await.0, StatusCode::NOT_FOUND);

    let batches = drain(&state).await;
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1].body, BATCH.as_bytes());
    assert_eq!(state.stats().diagnostics, 1);
}

#[tokio::test]
async fn diagnostics_are_validated_and_counted() {
    let db = TestDb::sqlite().await.unwrap();
    let prod = env(&db.store, "production").await;
    let (app, state) = app(&db.store, EmbeddedConfig::default(), EventsConfig::default()).await;
    let body = r#"{"kind":"diagnostic","creationDate":2,"dataSinceDate":1,"droppedEvents":0}"#;
    assert_eq!(send(&app, post("/diagnostic", Some(&prod.sdk_key), body)).await.0, StatusCode::ACCEPTED);
    let (status, _, _) = send(&app, post("/mobile/events/diagnostic", Some(&prod.mobile_key), body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(send(&app, post("/diagnostic", Some(&prod.sdk_key), "[1]")).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(state.stats().diagnostics, 2);
    assert_eq!(state.queue().depth().await.unwrap(), 0, "diagnostics are not queued");
}
