//! Analytics events against a scripted events server that captures every `POST /bulk`: the headers LaunchDarkly's
//! SDKs send, gzip, the payload ID reused on the one retry, a refused key that stops events for good, dropped
//! payloads, flushing on an interval and on close, and dropping (and counting) when full.
//!
//! Every captured payload is also parsed with the front door's own parser (`pennant_events::parse_batch`), which must
//! read every event: the SDK and the server agree on the format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use pennant_sdk::{Client, Config, ConfigBuilder, Context, FlushError, TestData};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(10);
const SDK_KEY: &str = "sdk-events-test";

/// One captured post.
#[derive(Debug, Clone)]
struct Post {
    headers: HeaderMap,
    /// The events (decompressed and parsed).
    events: Vec<Value>,
    /// The status answered.
    status: u16,
}

impl Post {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn payload_id(&self) -> &str {
        self.header("x-launchdarkly-payload-id").unwrap()
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == kind).collect()
    }
}

#[derive(Default)]
struct Fake {
    /// Statuses to answer, in order; 202 when none is left.
    plan: Mutex<VecDeque<u16>>,
    posts: Mutex<Vec<Post>>,
    /// Bodies the front door's parser did not read whole.
    unreadable: Mutex<Vec<String>>,
}

impl Fake {
    fn plan(&self, statuses: &[u16]) {
        self.plan.lock().unwrap().extend(statuses);
    }

    fn posts(&self) -> Vec<Post> {
        let unreadable = self.unreadable.lock().unwrap();
        assert!(unreadable.is_empty(), "payloads the front door cannot read: {unreadable:?}");
        self.posts.lock().unwrap().clone()
    }
}

async fn bulk(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let mut json = Vec::new();
    if gzip {
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut json).unwrap();
    } else {
        json = body.to_vec();
    }
    let events: Vec<Value> = serde_json::from_slice(&json).unwrap_or_default();
    match pennant_events::parse_batch(&json) {
        Ok(batch) if batch.skipped == 0 && batch.events.len() == events.len() => {}
        other => fake.unreadable.lock().unwrap().push(format!("{other:?}: {}", String::from_utf8_lossy(&json))),
    }
    let status = fake.plan.lock().unwrap().pop_front().unwrap_or(202);
    fake.posts.lock().unwrap().push(Post { headers, events, status });
    StatusCode::from_u16(status).unwrap()
}

async fn serve() -> (Arc<Fake>, SocketAddr) {
    let fake = Arc::new(Fake::default());
    let app = Router::new().route("/bulk", post(bulk)).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, addr)
}

fn flags() -> TestData {
    let td = TestData::new();
    td.update(td.flag("plain").variation_for_all(true));
    td.update_flag_json(json!({"key": "tracked", "on": true, "trackEvents": true,
        "variations": ["a", "b"], "fallthrough": {"variation": 1}}))
        .unwrap();
    td.update_flag_json(json!({"key": "parent", "version": 1, "on": true, "variations": [false, true],
        "fallthrough": {"variation": 1}, "offVariation": 0, "prerequisites": [{"key": "tracked", "variation": 1}]}))
        .unwrap();
    td
}

fn config(addr: SocketAddr, td: &TestData) -> ConfigBuilder {
    Config::builder(SDK_KEY)
        .test_data(td)
        .events_uri(format!("http://{addr}"))
        .flush_interval(Duration::from_secs(3600))
}

async fn client(config: ConfigBuilder) -> Client {
    let client = Client::start(config.build().unwrap()).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    client
}

/// Polls `f` until it is true, with a deadline.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not before the deadline");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn events_are_posted_with_launchdarkly_headers_gzipped_and_readable_by_the_front_door() {
    let (fake, addr) = serve().await;
    let td = flags();
    let client = client(config(addr, &td).private_attributes(["email"])).await;
    let ann =
        Context::from_value(json!({"kind": "user", "key": "ann", "email": "ann@example.com", "plan": "gold"})).unwrap();
    let org = Context::from_value(json!({"kind": "org", "key": "acme"})).unwrap();
    for _ in 0..3 {
        assert!(client.bool_variation(&ann, "plain", false));
    }
    assert!(client.bool_variation(&org, "plain", false));
    assert_eq!(client.string_variation(&ann, "tracked", "d"), "b");
    assert!(client.bool_variation(&ann, "parent", false));
    assert!(client.bool_variation(&ann, "missing", true));
    client.track(&ann, "purchase", Some(json!({"total": 12})), Some(12.0));
    client.identify(&org);
    client.flush().await.unwrap();

    let posts = fake.posts();
    assert_eq!(posts.len(), 1);
    let post = &posts[0];
    assert_eq!(post.header("authorization"), Some(SDK_KEY));
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(post.header("x-launchdarkly-event-schema"), Some("4"));
    assert_eq!(post.header("content-encoding"), Some("gzip"));
    let id = post.payload_id();
    assert_eq!((id.len(), id.matches('-').count()), (36, 4), "a UUID: {id}");
    assert!(post.header("user-agent").unwrap().starts_with("PennantRustSDK/"));

    let index = post.of_kind("index");
    assert_eq!(index.len(), 2, "ann and acme, once each: {:?}", post.events);
    assert_eq!(
        index[0]["context"],
        json!({"kind": "user", "key": "ann", "plan": "gold",
        "_meta": {"redactedAttributes": ["email"]}})
    );
    let feature = post.of_kind("feature");
    assert_eq!(feature.len(), 2, "tracked, directly and as parent's prerequisite");
    assert_eq!(feature[0]["key"], "tracked");
    assert_eq!(
        (&feature[0]["value"], &feature[0]["default"], &feature[0]["variation"]),
        (&json!("b"), &json!("d"), &json!(1))
    );
    assert_eq!(feature[0].get("prereqOf"), None);
    assert_eq!(feature[1]["prereqOf"], "parent");
    let custom = post.of_kind("custom");
    assert_eq!(custom[0]["contextKeys"], json!({"user": "ann"}));
    assert_eq!((&custom[0]["data"], &custom[0]["metricValue"]), (&json!({"total": 12}), &json!(12.0)));
    let identify = post.of_kind("identify");
    assert_eq!(identify[0]["context"], json!({"kind": "org", "key": "acme"}));
    let summary = post.of_kind("summary");
    assert_eq!(summary.len(), 1);
    let features = &summary[0]["features"];
    assert_eq!(features["plain"]["contextKinds"], json!(["org", "user"]));
    assert_eq!(features["plain"]["counters"], json!([{"variation": 0, "version": 1, "value": true, "count": 4}]));
    assert_eq!(features["tracked"]["counters"], json!([{"variation": 1, "version": 1, "value": "b", "count": 2}]));
    assert_eq!(features["parent"]["counters"], json!([{"variation": 1, "version": 1, "value": true, "count": 1}]));
    assert_eq!(
        features["missing"],
        json!({"default": true, "contextKinds": ["user"],
        "counters": [{"unknown": true, "value": true, "count": 1}]})
    );
    assert!(summary[0]["startDate"].as_u64().unwrap() <= summary[0]["endDate"].as_u64().unwrap());

    // Nothing new: a flush posts nothing.
    client.flush().await.unwrap();
    assert_eq!(fake.posts().len(), 1);
    assert_eq!(client.dropped_events(), 0);
}

#[tokio::test]
async fn compression_can_be_turned_off() {
    let (fake, addr) = serve().await;
    let td = flags();
    let client = client(config(addr, &td).compress_events(false)).await;
    client.track(&Context::user("u"), "click", None, None);
    client.flush().await.unwrap();
    let posts = fake.posts();
    assert_eq!(posts[0].header("content-encoding"), None);
    assert_eq!(posts[0].events.len(), 2, "index and custom");
}

#[tokio::test]
async fn a_recoverable_failure_is_retried_once_after_a_second_with_the_same_payload_id() {
    let (fake, addr) = serve().await;
    let td = flags();
    let client = client(config(addr, &td)).await;
    let user = Context::user("u");

    fake.plan(&[503]);
    client.track(&user, "first", None, None);
    let started = Instant::now();
    client.flush().await.unwrap();
    let elapsed = started.elapsed();
    let posts = fake.posts();
    assert_eq!(posts.iter().map(|p| p.status).collect::<Vec<_>>(), [503, 202]);
    assert_eq!(posts[0].payload_id(), posts[1].payload_id(), "the retry reuses the payload ID");
    assert_eq!(posts[0].events, posts[1].events);
    assert!(elapsed >= Duration::from_millis(900), "the retry waits about a second: {elapsed:?}");

    // Failing twice drops the payload; the next one has a new ID.
    fake.plan(&[500, 429]);
    client.track(&user, "second", None, None);
    let error = client.flush().await.unwrap_err();
    assert!(matches!(&error, FlushError::Failed { message } if message.contains("429")), "{error}");
    client.track(&user, "third", None, None);
    client.flush().await.unwrap();
    let posts = fake.posts();
    assert_eq!(posts.len(), 5);
    assert_eq!(posts[2].payload_id(), posts[3].payload_id());
    assert_ne!(posts[3].payload_id(), posts[4].payload_id());
    assert_ne!(posts[0].payload_id(), posts[4].payload_id());
    assert_eq!(posts[4].of_kind("custom")[0]["key"], "third", "the dropped payload is not sent again");
}

#[tokio::test]
async fn a_refused_sdk_key_stops_events_for_good() {
    for status in [401, 403] {
        let (fake, addr) = serve().await;
        let td = flags();
        let client = client(config(addr, &td)).await;
        let user = Context::user("u");
        fake.plan(&[status]);
        assert!(client.bool_variation(&user, "plain", false));
        assert_eq!(client.flush().await, Err(FlushError::Unauthorized { status }));
        assert_eq!(fake.posts().len(), 1, "{status} is not retried");

        // Evaluations go on; nothing is recorded or sent any more.
        assert!(client.bool_variation(&user, "plain", false));
        client.track(&user, "later", None, None);
        assert_eq!(client.flush().await, Err(FlushError::Unauthorized { status }));
        client.close().await;
        assert_eq!(fake.posts().len(), 1, "{status}: nothing more was posted");
        assert_eq!(client.dropped_events(), 0);
    }
}

#[tokio::test]
async fn other_client_errors_drop_the_payload_and_later_payloads_are_sent() {
    let (fake, addr) = serve().await;
    let td = flags();
    let client = client(config(addr, &td)).await;
    let user = Context::user("u");
    fake.plan(&[413]);
    client.track(&user, "too-big", None, None);
    let error = client.flush().await.unwrap_err();
    assert!(matches!(&error, FlushError::Failed { message } if message.contains("413")), "{error}");
    client.track(&user, "fine", None, None);
    client.flush().await.unwrap();
    let posts = fake.posts();
    assert_eq!(posts.iter().map(|p| p.status).collect::<Vec<_>>(), [413, 202], "413 is not retried");
}

#[tokio::test]
async fn events_are_sent_every_flush_interval() {
    let (fake, addr) = serve().await;
    let td = flags();
    let client = client(config(addr, &td).flush_interval(Duration::from_millis(50))).await;
    let user = Context::user("u");
    assert!(client.bool_variation(&user, "plain", false));
    eventually("the first automatic flush", || !fake.posts.lock().unwrap().is_empty()).await;
    client.track(&user, "later", None, None);
    eventually("the second automatic flush", || fake.posts.lock().unwrap().len() >= 2).await;
    let posts = fake.posts();
    assert_eq!(posts[0].of_kind("summary").len(), 1);
    assert_eq!(posts[1].of_kind("custom")[0]["key"], "later");
    client.close().await;
}

#[tokio::test]
async fn closing_sends_everything_queued_before_it_returns() {
    let (fake, addr) = serve().await;
    let td = flags();
    let client = client(config(addr, &td)).await;
    let users: Vec<Context> = (0..300).map(|i| Context::user(&format!("user-{i}"))).collect();
    for user in &users {
        assert!(client.bool_variation(user, "plain", false));
        client.track(user, "visit", None, None);
    }
    // No flush: close alone delivers everything.
    client.close().await;
    let posts = fake.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].of_kind("index").len(), 300);
    assert_eq!(posts[0].of_kind("custom").len(), 300);
    assert_eq!(posts[0].of_kind("summary")[0]["features"]["plain"]["counters"][0]["count"], 300);
    assert_eq!(client.dropped_events(), 0);

    // After close: evaluations work, nothing is recorded, close and flush do nothing more.
    assert!(client.bool_variation(&users[0], "plain", false));
    client.track(&users[0], "after", None, None);
    client.close().await;
    assert_eq!(client.flush().await, Err(FlushError::Closed));
    assert_eq!(fake.posts().len(), 1);
}

#[tokio::test]
async fn when_the_buffer_is_full_events_are_dropped_and_counted_and_evaluations_do_not_wait() {
    let (fake, addr) = serve().await;
    let td = flags();
    let client = client(config(addr, &td).events_capacity(20)).await;
    let user = Context::user("u");
    let started = Instant::now();
    for i in 0..5000 {
        client.track(&user, &format!("e{i}"), None, None);
        assert_eq!(client.string_variation(&user, "tracked", "d"), "b");
    }
    let elapsed = started.elapsed();
    client.close().await;
    let posts = fake.posts();
    let delivered: usize = posts.iter().map(|p| p.events.iter().filter(|e| e["kind"] != "summary").count()).sum();
    assert!(delivered <= 20 * posts.len(), "at most the capacity per payload: {delivered}");
    // 5000 custom, 5000 feature and 1 index event: each was delivered or counted as dropped.
    assert_eq!(delivered as u64 + client.dropped_events(), 10_001);
    assert!(client.dropped_events() > 0);
    // The summary counts every evaluation, dropped events or not.
    let counted: u64 = posts
        .iter()
        .flat_map(|p| p.of_kind("summary"))
        .map(|s| s["features"]["tracked"]["counters"][0]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 5000);
    eprintln!("10,001 events through a capacity of 20 in {elapsed:?}: {} dropped", client.dropped_events());
}

#[tokio::test]
async fn events_disabled_or_offline_send_nothing() {
    let (fake, addr) = serve().await;
    let td = flags();
    for builder in [config(addr, &td).events_enabled(false), config(addr, &td).offline(true)] {
        let client = client(builder).await;
        client.bool_variation(&Context::user("u"), "plain", false);
        client.track(&Context::user("u"), "x", None, None);
        client.flush().await.unwrap();
        client.close().await;
    }
    assert!(fake.posts().is_empty());
}
