//! The streaming and polling data sources against a scripted HTTP server: status rules, reconnection, read
//! timeouts, heartbeats, malformed data, large payloads in small chunks, ETags.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use pennant_sdk::{Client, Config, ConfigBuilder, Context, DataSourceErrorKind, DataSourceState, DataSourceStatus};
use serde_json::json;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(10);

/// What the server does with the next request.
enum Plan {
    /// Answer with this status.
    Status(StatusCode),
    /// Stream what the test sends; the stream ends when the test drops its sender.
    Stream(mpsc::UnboundedReceiver<Bytes>),
    /// Answer with this body and ETag, or 304 when the request's `If-None-Match` is that ETag.
    Poll { etag: &'static str, body: String },
}

#[derive(Default)]
struct Fake {
    requests: AtomicUsize,
    plans: Mutex<VecDeque<Plan>>,
    /// Requests' `Authorization` and `If-None-Match` headers, and the status answered.
    log: Mutex<Vec<(String, Option<String>, u16)>>,
}

impl Fake {
    fn plan(&self, plan: Plan) {
        self.plans.lock().unwrap().push_back(plan);
    }

    fn stream(&self) -> mpsc::UnboundedSender<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.plan(Plan::Stream(rx));
        tx
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn statuses(&self) -> Vec<u16> {
        self.log.lock().unwrap().iter().map(|(_, _, s)| *s).collect()
    }
}

async fn handle(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let auth = header("authorization").unwrap_or_default();
    let if_none_match = header("if-none-match");
    let plan = fake.plans.lock().unwrap().pop_front();
    let response = match plan {
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Some(Plan::Status(status)) => status.into_response(),
        Some(Plan::Stream(rx)) => {
            let frames = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
            });
            Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(frames)).unwrap()
        }
        Some(Plan::Poll { etag, body }) => {
            if if_none_match.as_deref() == Some(etag) {
                Response::builder().status(StatusCode::NOT_MODIFIED).header("etag", etag).body(Body::empty()).unwrap()
            } else {
                Response::builder().header("etag", etag).body(Body::from(body)).unwrap()
            }
        }
    };
    fake.log.lock().unwrap().push((auth, if_none_match, response.status().as_u16()));
    response
}

async fn serve() -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake::default());
    let app = Router::new().route("/all", get(handle)).route("/sdk/latest-all", get(handle)).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, addr)
}

fn config(addr: SocketAddr) -> ConfigBuilder {
    Config::builder("sdk-test-key")
        .service_uri(format!("http://{addr}"))
        .initial_reconnect_delay(Duration::from_millis(5))
        .max_reconnect_delay(Duration::from_millis(20))
}

fn put(flags: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: put\ndata: {}\n\n", json!({"path": "/", "data": {"flags": flags, "segments": {}}})))
}

fn flag(key: &str, version: u64, value: bool) -> serde_json::Value {
    json!({"key": key, "version": version, "on": true, "variations": [true, false],
        "fallthrough": {"variation": if value { 0 } else { 1 }}})
}

async fn wait_status(client: &Client, what: &str, f: impl Fn(&DataSourceStatus) -> bool) -> DataSourceStatus {
    let mut rx = client.data_source_status_receiver();
    let result = tokio::time::timeout(DEADLINE, rx.wait_for(|s| f(s))).await;
    let status = result.unwrap_or_else(|_| panic!("{what}: status is {:?}", client.data_source_status()));
    status.unwrap().clone()
}

/// Polls `f` until it is true, with a deadline.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not before the deadline");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn recoverable_statuses_are_retried_until_the_stream_opens() {
    let (fake, addr) = serve().await;
    for status in [503, 400, 408, 429, 500] {
        fake.plan(Plan::Status(StatusCode::from_u16(status).unwrap()));
    }
    let stream = fake.stream();
    stream.send(put(json!({"f": flag("f", 1, true)}))).unwrap();
    let client = Client::start(config(addr).build().unwrap()).unwrap();
    let mut status = client.data_source_status_receiver();
    assert!(client.wait_for_initialization(DEADLINE).await);
    assert_eq!(fake.statuses(), [503, 400, 408, 429, 500, 200]);
    let status = status.borrow_and_update().clone();
    assert_eq!(status.state, DataSourceState::Valid);
    let error = status.last_error.expect("the last failure is remembered");
    assert_eq!((error.kind, error.status_code), (DataSourceErrorKind::ErrorResponse, Some(500)));
    assert!(client.bool_variation(&Context::user("u"), "f", false));
    assert!(fake.log.lock().unwrap().iter().all(|(auth, _, _)| auth == "sdk-test-key"), "the SDK key is sent");
}

#[tokio::test]
async fn other_client_errors_stop_the_stream_for_good() {
    for status in [401, 403, 404, 405] {
        let (fake, addr) = serve().await;
        fake.plan(Plan::Status(StatusCode::from_u16(status).unwrap()));
        let client = Client::start(config(addr).build().unwrap()).unwrap();
        assert!(!client.wait_for_initialization(DEADLINE).await, "{status}: fails at once, without waiting");
        let off = wait_status(&client, "off", |s| s.state == DataSourceState::Off).await;
        assert_eq!(off.last_error.unwrap().status_code, Some(status));
        // Nothing else is asked of the server: the next request would have been answered 503 and logged.
        assert_eq!(fake.requests(), 1, "{status} is not retried");
        let detail = client.bool_variation_detail(&Context::user("u"), "f", true);
        assert_eq!(detail.reason.kind(), "ERROR");
    }
}

#[tokio::test]
async fn patches_and_deletes_arrive_on_the_open_stream_and_old_versions_are_ignored() {
    let (fake, addr) = serve().await;
    let stream = fake.stream();
    stream.send(put(json!({"f": flag("f", 5, true), "g": flag("g", 1, true)}))).unwrap();
    let client = Client::start(config(addr).build().unwrap()).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    let mut changes = client.flag_changes();
    let user = Context::user("u");
    let patch = |f: serde_json::Value| {
        Bytes::from(format!("event: patch\ndata: {}\n\n", json!({"path": "/flags/f", "data": f})))
    };
    stream.send(patch(flag("f", 4, false))).unwrap();
    stream.send(patch(flag("f", 6, false))).unwrap();
    let change = tokio::time::timeout(DEADLINE, changes.recv()).await.unwrap().unwrap();
    assert_eq!(change.key, "f", "only the newer patch is a change");
    assert!(!client.bool_variation(&user, "f", true));
    // Frames split anywhere, and comments between them, are fine.
    stream.send(Bytes::from_static(b":heartbeat\n\nevent: dele")).unwrap();
    stream.send(Bytes::from_static(b"te\ndata: {\"path\":\"/flags/g\",\"version\":2}\n")).unwrap();
    stream.send(Bytes::from_static(b"\n")).unwrap();
    let change = tokio::time::timeout(DEADLINE, changes.recv()).await.unwrap().unwrap();
    assert_eq!(change.key, "g");
    assert_eq!(client.bool_variation_detail(&user, "g", false).reason.kind(), "ERROR");
    assert_eq!(fake.requests(), 1, "one connection throughout");
}

#[tokio::test]
async fn a_silent_stream_is_dropped_after_the_read_timeout_but_heartbeats_keep_it_open() {
    let (fake, addr) = serve().await;
    let first = fake.stream();
    first.send(put(json!({"f": flag("f", 1, true)}))).unwrap();
    let second = fake.stream();
    second.send(put(json!({"f": flag("f", 2, false)}))).unwrap();
    let config = config(addr).read_timeout(Duration::from_millis(300)).build().unwrap();
    let client = Client::start(config).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    let user = Context::user("u");
    assert!(client.bool_variation(&user, "f", false));
    // The first stream stays open but says nothing: the client gives up on it and reconnects.
    eventually("the reconnection's put", || !client.bool_variation(&user, "f", true)).await;
    assert_eq!(fake.requests(), 2);
    let error = client.data_source_status().last_error.unwrap();
    assert_eq!(error.kind, DataSourceErrorKind::NetworkError);
    assert!(error.message.contains("not even a heartbeat"), "{}", error.message);
    drop(first);

    // Heartbeats for three times the read timeout, then a patch: all on the second connection.
    let mut changes = client.flag_changes();
    for _ in 0..18 {
        second.send(Bytes::from_static(b":\n\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second
        .send(Bytes::from(format!(
            "event: patch\ndata: {}\n\n",
            json!({"path": "/flags/f", "data": flag("f", 3, true)})
        )))
        .unwrap();
    assert_eq!(tokio::time::timeout(DEADLINE, changes.recv()).await.unwrap().unwrap().key, "f");
    assert!(client.bool_variation(&user, "f", false));
    assert_eq!(fake.requests(), 2, "heartbeats kept the connection");
}

#[tokio::test]
async fn malformed_events_and_ended_streams_reconnect_and_start_again_from_a_put() {
    let (fake, addr) = serve().await;
    let first = fake.stream();
    first.send(Bytes::from_static(b"event: put\ndata: {\"data\": {\"flags\": [\n\n")).unwrap();
    let second = fake.stream();
    second.send(put(json!({"f": flag("f", 1, true)}))).unwrap();
    let third = fake.stream();
    third.send(put(json!({"f": flag("f", 2, false)}))).unwrap();
    let client = Client::start(config(addr).build().unwrap()).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    assert_eq!(fake.requests(), 2, "the malformed put was dropped and the client reconnected");
    assert_eq!(client.data_source_status().last_error.unwrap().kind, DataSourceErrorKind::InvalidData);
    let user = Context::user("u");
    assert!(client.bool_variation(&user, "f", false));

    // The server ends the stream: the client is interrupted, keeps serving what it has, and reconnects.
    let mut status = client.data_source_status_receiver();
    drop(second);
    let interrupted = tokio::time::timeout(DEADLINE, status.wait_for(|s| s.state == DataSourceState::Interrupted));
    assert!(interrupted.await.is_ok(), "Interrupted is reported");
    wait_status(&client, "valid again", |s| s.state == DataSourceState::Valid).await;
    assert!(!client.bool_variation(&user, "f", true), "the new put replaced the data");
    assert_eq!(fake.requests(), 3);
    drop(third);
}

#[tokio::test]
async fn a_large_put_in_small_chunks_is_read_whole_and_quickly() {
    let (fake, addr) = serve().await;
    let stream = fake.stream();
    let flags: serde_json::Map<String, serde_json::Value> =
        (0..20_000).map(|i| (format!("flag-{i}"), flag(&format!("flag-{i}"), 1, i % 2 == 0))).collect();
    let frame = put(serde_json::Value::Object(flags));
    assert!(frame.len() > 2_000_000, "{}", frame.len());
    for chunk in frame.chunks(997) {
        stream.send(Bytes::copy_from_slice(chunk)).unwrap();
    }
    let started = std::time::Instant::now();
    let client = Client::start(config(addr).build().unwrap()).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    let elapsed = started.elapsed();
    let user = Context::user("u");
    assert!(client.bool_variation(&user, "flag-19998", false));
    assert!(!client.bool_variation(&user, "flag-19999", true));
    assert_eq!(client.all_flags_state(&user, Default::default()).state().flags().len(), 20_000);
    // Quadratic re-scanning of the growing line would take seconds here.
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn polling_sends_the_etag_and_takes_304_as_current() {
    let (fake, addr) = serve().await;
    let body = |value: bool| json!({"flags": {"f": flag("f", 1 + u64::from(value), value)}}).to_string();
    fake.plan(Plan::Poll { etag: "\"v1\"", body: body(false) });
    for _ in 0..3 {
        fake.plan(Plan::Poll { etag: "\"v1\"", body: body(false) });
    }
    fake.plan(Plan::Status(StatusCode::SERVICE_UNAVAILABLE));
    fake.plan(Plan::Poll { etag: "\"v2\"", body: body(true) });
    let config = config(addr).polling(Duration::from_millis(20)).build().unwrap();
    let client = Client::start(config).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    let user = Context::user("u");
    eventually("the second version", || client.bool_variation(&user, "f", false)).await;
    let log = fake.log.lock().unwrap().clone();
    let seen: Vec<_> = log.iter().take(6).map(|(_, tag, status)| (tag.as_deref(), *status)).collect();
    assert_eq!(
        seen,
        [
            (None, 200),
            (Some("\"v1\""), 304),
            (Some("\"v1\""), 304),
            (Some("\"v1\""), 304),
            (Some("\"v1\""), 503),
            (Some("\"v1\""), 200),
        ]
    );
    assert_eq!(client.data_source_status().state, DataSourceState::Valid);
}

#[tokio::test]
async fn polling_stops_on_a_rejected_key() {
    let (fake, addr) = serve().await;
    fake.plan(Plan::Status(StatusCode::UNAUTHORIZED));
    let client = Client::start(config(addr).polling(Duration::from_millis(5)).build().unwrap()).unwrap();
    assert!(!client.wait_for_initialization(DEADLINE).await);
    assert_eq!(client.data_source_status().last_error.unwrap().status_code, Some(401));
    assert_eq!(fake.requests(), 1);
}

#[tokio::test]
async fn closing_the_client_ends_the_connection() {
    let (fake, addr) = serve().await;
    let stream = fake.stream();
    stream.send(put(json!({}))).unwrap();
    let client = Client::start(config(addr).build().unwrap()).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    client.close().await;
    assert_eq!(client.data_source_status().state, DataSourceState::Off);
    // The server notices: sending on the stream fails once the client has hung up.
    eventually("the connection closes", || stream.send(Bytes::from_static(b":\n\n")).is_err()).await;
    assert_eq!(fake.requests(), 1, "no reconnection after close");
}
