//! The relay between a real upstream Pennant node (store, outbox relay, SDK endpoints and events front door, in
//! process on real sockets) and SDKs: mirroring and changes, saved payloads, offline files, and events forwarded
//! in batches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use pennant_events::{EmbeddedConfig, EmbeddedQueue, EventsConfig, EventsState, Queue};
use pennant_relay::{EnvironmentConfig, Relay, RelayConfig, Upstream};
use pennant_sdk::{Client, Config, Context};
use pennant_store::testing::TestDb;
use pennant_store::{Actor, Environment, FlagDoc, Project, Store};
use pennant_stream::{Hub, StreamState, spawn_outbox_relay};
use serde_json::{Value, json};
use tokio::sync::watch;

fn actor() -> Actor {
    Actor::system("test")
}

/// A project with one environment and a boolean flag `f` that is off; returns the environment.
async fn setup(store: &Store) -> Environment {
    store.create_project(&actor(), Project { key: "p".into(), name: "P".into(), tags: vec![] }, "").await.unwrap();
    let env: Environment = serde_json::from_value(json!({"key": "production", "name": "Production"})).unwrap();
    let env = store.create_environment(&actor(), "p", env, "").await.unwrap().data;
    let flag: FlagDoc =
        serde_json::from_value(json!({"key": "f", "name": "F", "variations": [{"value": true}, {"value": false}],
            "clientSideAvailability": {"usingMobileKey": true, "usingEnvironmentId": true}}))
        .unwrap();
    store.create_flag(&actor(), "p", flag, "").await.unwrap();
    env
}

async fn set_on(store: &Store, on: bool) {
    store
        .update_flag(&actor(), "p", "f", None, "", |d, _| {
            d.environments.get_mut("production").unwrap().on = on;
            Ok(())
        })
        .await
        .unwrap();
}

/// The upstream: a Pennant node's SDK endpoints (with the outbox relay) and events front door on one port.
struct UpstreamNode {
    url: String,
    events: EventsState,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_upstream(store: &Store) -> UpstreamNode {
    let hub = Arc::new(Hub::new(64));
    let (stop, stopped) = watch::channel(false);
    let state = StreamState { source: store.clone().into(), hub: hub.clone(), shutdown: stopped.clone() };
    spawn_outbox_relay(store.clone(), hub, stopped.clone(), pennant_stream::RelayOptions::default());
    let queue = Queue::Embedded(EmbeddedQueue::open(store.clone(), EmbeddedConfig::default()).await.unwrap());
    let events = EventsState::new(store.clone(), queue, EventsConfig::default());
    let app = pennant_stream::router(state.clone()).merge(pennant_events::router(events.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(pennant_stream::serve(listener, app, stopped, Some(state)));
    UpstreamNode { url, events, stop, server }
}

impl UpstreamNode {
    async fn stop(self) {
        self.stop.send_replace(true);
        self.server.await.unwrap().unwrap();
    }
}

/// A relay serving on a free port.
struct RunningRelay {
    relay: Relay,
    url: String,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_relay(config: RelayConfig) -> RunningRelay {
    let (stop, stopped) = watch::channel(false);
    let relay = Relay::start(config, stopped.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = pennant_relay::router(&relay);
    let server = tokio::spawn(pennant_stream::serve(listener, app, stopped, Some(relay.stream_state())));
    RunningRelay { relay, url, stop, server }
}

impl RunningRelay {
    async fn stop(self) {
        self.stop.send_replace(true);
        self.server.await.unwrap().unwrap();
        self.relay.close().await;
    }
}

fn environment(sdk_key: &str) -> EnvironmentConfig {
    EnvironmentConfig {
        name: "production".into(),
        sdk_key: sdk_key.into(),
        mobile_key: None,
        client_side_id: None,
        secure_mode: false,
        offline_file: None,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pennant-relay-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn get(url: &str, key: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new().get(url).header("authorization", key).send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An SDK client (streaming) on `url`, initialised.
async fn sdk(url: &str, key: &str, events: bool) -> Client {
    let config = Config::builder(key)
        .service_uri(url)
        .events_enabled(events)
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let client = Client::start(config).unwrap();
    assert!(client.wait_for_initialization(Duration::from_secs(10)).await, "{:?}", client.data_source_status());
    client
}

/// Polls `f` until it is true, for up to `seconds`.
async fn eventually(seconds: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sdks_on_the_relay_see_the_upstream_data_and_its_changes_and_their_events_reach_the_upstream() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    let upstream = start_upstream(&db.store).await;
    let data_dir = temp_dir("mirror");
    let with_keys = EnvironmentConfig {
        mobile_key: Some(env.mobile_key.clone()),
        client_side_id: Some(env.client_side_id.clone()),
        ..environment(&env.sdk_key)
    };
    let mut config = RelayConfig::new(Some(Upstream::single(&upstream.url)), vec![with_keys]);
    config.data_dir = Some(data_dir.clone());
    config.events_flush_interval = Duration::from_millis(50);
    let relay = start_relay(config).await;
    assert!(relay.relay.wait_for_data(Duration::from_secs(10)).await, "{:?}", relay.relay.status());

    // The relay's polling answer is the upstream's data.
    let (status, mirrored) = get(&format!("{}/sdk/latest-all", relay.url), &env.sdk_key).await;
    assert_eq!(status, StatusCode::OK);
    let (_, original) = get(&format!("{}/sdk/latest-all", upstream.url), &env.sdk_key).await;
    assert_eq!(mirrored, original);
    let (status, body) = get(&format!("{}/sdk/latest-all", relay.url), "sdk-unknown").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));

    // Mobile SDKs get their evaluated flags from the relay as from the upstream; a server key is not a mobile key.
    let context = "eyJraW5kIjoidXNlciIsImtleSI6InUxIn0"; // {"kind":"user","key":"u1"}, base64url
    let evalx = format!("/msdk/evalx/contexts/{context}");
    let (status, mobile) = get(&format!("{}{evalx}", relay.url), &env.mobile_key).await;
    assert_eq!(status, StatusCode::OK, "{mobile}");
    assert_eq!(mobile, get(&format!("{}{evalx}", upstream.url), &env.mobile_key).await.1);
    assert!(mobile.get("f").is_some(), "{mobile}");
    assert_eq!(get(&format!("{}{evalx}", relay.url), &env.sdk_key).await.0, StatusCode::UNAUTHORIZED);
    // So do JavaScript SDKs (client-side ID in the path).
    let js = format!("/sdk/evalx/{}/contexts/{context}", env.client_side_id);
    let (status, browser) = get(&format!("{}{js}", relay.url), "").await;
    assert_eq!(status, StatusCode::OK, "{browser}");
    assert_eq!(browser, get(&format!("{}{js}", upstream.url), "").await.1);
    assert!(browser.get("f").is_some(), "{browser}");

    // An SDK on the relay and one on the upstream agree, before and after a change.
    let direct = sdk(&upstream.url, &env.sdk_key, false).await;
    let relayed = sdk(&relay.url, &env.sdk_key, true).await;
    let user = Context::user("u1");
    let before = direct.bool_variation(&user, "f", true);
    assert_eq!(relayed.bool_variation(&user, "f", !before), before);
    set_on(&db.store, true).await;
    eventually(5, "the direct SDK to see the change", || direct.bool_variation(&user, "f", before) != before).await;
    let after = direct.bool_variation(&user, "f", before);
    eventually(5, "the relayed SDK to see the change", || relayed.bool_variation(&user, "f", before) == after).await;

    // The change was saved.
    let saved: Vec<_> = std::fs::read_dir(&data_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    eventually(5, "the saved payload to have the change", || {
        let payload: Value = serde_json::from_slice(&std::fs::read(&saved[0]).unwrap()).unwrap();
        payload["flags"]["f"]["on"] == json!(true)
    })
    .await;

    // Status.
    let status: Value = reqwest::get(format!("{}/status", relay.url)).await.unwrap().json().await.unwrap();
    assert_eq!(status["ready"], true);
    assert_eq!(status["environments"][0]["state"], "valid", "{status}");
    assert_eq!(status["environments"][0]["connections"], 1, "{status}");
    assert_eq!(reqwest::get(format!("{}/health", relay.url)).await.unwrap().status(), 200);

    // Events from the relayed SDK arrive at the upstream's front door, through the relay.
    for _ in 0..7 {
        relayed.bool_variation(&user, "f", false);
    }
    relayed.track(&user, "purchase", None, Some(3.0));
    relayed.flush().await.unwrap();
    let stats = upstream.events.stats();
    assert_eq!(stats.accepted_batches, 1, "{stats:?}");
    // One summary (7 evaluations), one index event, one custom event.
    assert_eq!(stats.accepted_events, 3, "{stats:?}");

    relayed.close().await;
    direct.close().await;
    relay.stop().await;
    upstream.stop().await;
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn a_restarted_relay_serves_its_saved_payload_while_the_upstream_is_down() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    set_on(&db.store, true).await;
    let upstream = start_upstream(&db.store).await;
    let upstream_url = upstream.url.clone();
    let data_dir = temp_dir("restart");
    let mut config = RelayConfig::new(Some(Upstream::single(&upstream_url)), vec![environment(&env.sdk_key)]);
    config.data_dir = Some(data_dir.clone());
    config.connect_timeout = Duration::from_millis(500);
    let relay = start_relay(config.clone()).await;
    assert!(relay.relay.wait_for_data(Duration::from_secs(10)).await);
    let (_, original) = get(&format!("{}/sdk/latest-all", relay.url), &env.sdk_key).await;
    relay.stop().await;
    upstream.stop().await;

    let relay = start_relay(config).await;
    assert!(relay.relay.wait_for_data(Duration::from_secs(1)).await, "the saved payload is served at once");
    let (status, served) = get(&format!("{}/sdk/latest-all", relay.url), &env.sdk_key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, original);
    let client = sdk(&relay.url, &env.sdk_key, false).await;
    assert!(client.bool_variation(&Context::user("u"), "f", false));
    let status = &relay.relay.status()[0];
    assert!(status.has_data && status.state == "initializing", "never reached the upstream: {status:?}");
    client.close().await;
    relay.stop().await;
    std::fs::remove_dir_all(data_dir).unwrap();
}

#[tokio::test]
async fn an_offline_relay_serves_a_file_and_follows_its_changes() {
    let dir = temp_dir("offline");
    let file = dir.join("payload.json");
    let payload = |value: bool, version: u64| {
        json!({"flags": {"g": {"key": "g", "version": version, "on": true, "variations": [value],
            "fallthrough": {"variation": 0}, "offVariation": 0, "salt": "s"}}, "segments": {}})
    };
    std::fs::write(&file, serde_json::to_vec(&payload(true, 1)).unwrap()).unwrap();
    let config = RelayConfig::new(
        None,
        vec![EnvironmentConfig { offline_file: Some(file.clone()), ..environment("sdk-offline") }],
    );
    let relay = start_relay(config).await;
    assert!(relay.relay.wait_for_data(Duration::from_secs(5)).await, "{:?}", relay.relay.status());
    let client = sdk(&relay.url, "sdk-offline", true).await;
    let user = Context::user("u");
    assert!(client.bool_variation(&user, "g", false));

    std::fs::write(&file, serde_json::to_vec(&payload(false, 2)).unwrap()).unwrap();
    eventually(10, "the file's change to reach the SDK", || !client.bool_variation(&user, "g", true)).await;
    // Events have nowhere to go: accepted (so SDKs do not retry) and dropped.
    client.flush().await.unwrap();
    client.close().await;
    relay.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// What a stand-in events service received.
#[derive(Debug, Default)]
struct Received {
    requests: Vec<(String, Option<String>, Value)>,
}

/// A stand-in upstream events service answering every request with `status`.
async fn fake_events_upstream(status: u16) -> (String, Arc<Mutex<Received>>) {
    use axum::extract::State;
    use axum::http::HeaderMap;
    use std::io::Read as _;
    let received = Arc::new(Mutex::new(Received::default()));
    let app = axum::Router::new()
        .route(
            "/{*path}",
            axum::routing::post(
                move |State(r): State<Arc<Mutex<Received>>>,
                      axum::extract::Path(path): axum::extract::Path<String>,
                      headers: HeaderMap,
                      body: bytes::Bytes| async move {
                    let mut json = Vec::new();
                    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut json).unwrap();
                    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_owned());
                    r.lock().unwrap().requests.push((path, auth, serde_json::from_slice(&json).unwrap()));
                    StatusCode::from_u16(status).unwrap()
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

async fn post_batch(relay: &str, key: &str, events: Value, payload_id: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{relay}/bulk"))
        .header("authorization", key)
        .header("x-launchdarkly-event-schema", "4")
        .header("x-launchdarkly-payload-id", payload_id)
        .json(&events)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn batches_posted_together_go_upstream_as_one_and_are_answered_after_it() {
    let (events_url, received) = fake_events_upstream(202).await;
    let upstream = Upstream { events_uri: events_url, ..Upstream::single("http://127.0.0.1:9") };
    let mut config = RelayConfig::new(Some(upstream), vec![environment("sdk-batch")]);
    config.events_flush_interval = Duration::from_millis(300);
    let relay = start_relay(config).await;
    let custom = |n: u64| json!({"kind": "custom", "key": "k", "creationDate": n, "context": {"key": "u"}});
    let (a, b, c) = tokio::join!(
        post_batch(&relay.url, "sdk-batch", json!([custom(1), custom(2)]), "p1"),
        post_batch(&relay.url, "sdk-batch", json!([custom(3)]), "p2"),
        post_batch(&relay.url, "sdk-unknown", json!([custom(4)]), "p3"),
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16(), c.status().as_u16()), (202, 202, 401));
    {
        let received = received.lock().unwrap();
        assert_eq!(received.requests.len(), 1, "one upstream request: {:?}", received.requests);
        let (path, auth, body) = &received.requests[0];
        assert_eq!((path.as_str(), auth.as_deref()), ("bulk", Some("sdk-batch")));
        let mut dates: Vec<u64> =
            body.as_array().unwrap().iter().map(|e| e["creationDate"].as_u64().unwrap()).collect();
        dates.sort_unstable();
        assert_eq!(dates, [1, 2, 3]);
    }
    // A retry of a delivered request is answered without forwarding it again.
    assert_eq!(post_batch(&relay.url, "sdk-batch", json!([custom(1), custom(2)]), "p1").await.status(), 202);
    assert_eq!(received.lock().unwrap().requests.len(), 1);
    // Bad input is refused by the relay itself.
    let bad = reqwest::Client::new()
        .post(format!("{}/bulk", relay.url))
        .header("authorization", "sdk-batch")
        .body("{\"not\": \"an array\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["code"], "malformed_events");
    relay.stop().await;
}

#[tokio::test]
async fn upstream_failures_are_passed_on_so_sdks_retry_or_stop() {
    for (upstream_status, expected) in [(503, 503), (401, 401)] {
        let (events_url, received) = fake_events_upstream(upstream_status).await;
        let upstream = Upstream { events_uri: events_url, ..Upstream::single("http://127.0.0.1:9") };
        let mut config = RelayConfig::new(Some(upstream), vec![environment("sdk-fail")]);
        config.events_flush_interval = Duration::from_millis(10);
        let relay = start_relay(config).await;
        let response = post_batch(&relay.url, "sdk-fail", json!([{"kind": "custom", "key": "k"}]), "p").await;
        assert_eq!(response.status(), expected);
        if expected == 503 {
            assert_eq!(response.headers()["retry-after"], "1");
            assert_eq!(received.lock().unwrap().requests.len(), 2, "retried once");
        } else {
            assert_eq!(received.lock().unwrap().requests.len(), 1, "a refusal is not retried");
        }
        let status = relay.relay.status();
        assert_eq!(status[0].state, "initializing", "{status:?}");
        relay.stop().await;
    }
}

#[tokio::test]
async fn a_wrong_sdk_key_upstream_shows_in_the_status() {
    let db = TestDb::sqlite().await.unwrap();
    setup(&db.store).await;
    let upstream = start_upstream(&db.store).await;
    let config = RelayConfig::new(Some(Upstream::single(&upstream.url)), vec![environment("sdk-wrong")]);
    let relay = start_relay(config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.relay.status()[0].state != "off" {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", relay.relay.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = &relay.relay.status()[0];
    assert!(!status.has_data);
    assert!(status.last_error.as_deref().unwrap_or("").contains("401"), "{status:?}");
    let health = reqwest::get(format!("{}/health", relay.url)).await.unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().await.unwrap()["waitingFor"], json!(["production"]));
    // SDKs of an environment without data are told to come back.
    let (status, body) = get(&format!("{}/sdk/latest-all", relay.url), "sdk-wrong").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready")));
    relay.stop().await;
    upstream.stop().await;
}
