//! The SDK against a real Pennant streaming node started in-process (store, hub, outbox relay, listener):
//! initialisation over streaming, evaluation identical to the engine's, changes within a second, reconnection
//! after a restart on the same port, a rejected key, polling with 304s, and the secure-mode hash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pennant_eval::{AllFlagsOptions, Store as _};
use pennant_sdk::{Client, Config, ConfigBuilder, Context, DataSourceState, EvaluationReason};
use pennant_store::testing::TestDb;
use pennant_store::{Actor, Environment, FlagDoc, Project, SegmentDoc, Store};
use pennant_stream::{Hub, HubOptions, RelayOptions, StreamState, router, serve, spawn_outbox_relay_with};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(10);

fn actor() -> Actor {
    Actor::system("test")
}

/// A project with one environment, a segment `beta` (user `u1`, and anyone with a `@beta.example` email) and a
/// string flag `f`: `beta` members get "b", French users "c", everyone else "a". Returns the environment.
async fn setup(store: &Store) -> Environment {
    store.create_project(&actor(), Project { key: "p".into(), name: "P".into(), tags: vec![] }, "").await.unwrap();
    let env: Environment =
        serde_json::from_value(json!({"key": "production", "name": "Production", "secureMode": true})).unwrap();
    let env = store.create_environment(&actor(), "p", env, "").await.unwrap().data;
    let segment: SegmentDoc = serde_json::from_value(json!({
        "key": "beta", "name": "Beta", "included": ["u1"],
        "rules": [{"id": "beta-email", "clauses": [
            {"contextKind": "user", "attribute": "email", "op": "endsWith", "values": ["@beta.example"]}]}]
    }))
    .unwrap();
    store.create_segment(&actor(), "p", "production", segment, "").await.unwrap();
    let flag: FlagDoc = serde_json::from_value(json!({
        "key": "f", "name": "F",
        "variations": [{"value": "a"}, {"value": "b"}, {"value": "c"}],
        "clientSideAvailability": {"usingEnvironmentId": true, "usingMobileKey": true}
    }))
    .unwrap();
    store.create_flag(&actor(), "p", flag, "").await.unwrap();
    store
        .update_flag(&actor(), "p", "f", None, "", |d, _| {
            let config = d.environments.get_mut("production").unwrap();
            config.on = true;
            config.fallthrough = serde_json::from_value(json!({"variation": 0})).unwrap();
            config.rules = serde_json::from_value(json!([
                {"id": "in-beta", "variation": 1, "clauses": [
                    {"attribute": "segmentMatch", "op": "segmentMatch", "values": ["beta"]}]},
                {"id": "french", "variation": 2, "clauses": [
                    {"contextKind": "user", "attribute": "country", "op": "in", "values": ["fr"]}]}
            ]))
            .unwrap();
            Ok(())
        })
        .await
        .unwrap();
    env
}

async fn set_fallthrough(store: &Store, variation: i64) {
    store
        .update_flag(&actor(), "p", "f", None, "", |d, _| {
            d.environments.get_mut("production").unwrap().fallthrough =
                serde_json::from_value(json!({"variation": variation})).unwrap();
            Ok(())
        })
        .await
        .unwrap();
}

struct Node {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    /// A streaming node (listener with the lean stream path, router, outbox relay) on `listener`.
    fn start(store: &Store, listener: TcpListener) -> Node {
        let hub = Arc::new(Hub::with_options(HubOptions::default()));
        let (stop, stopped) = watch::channel(false);
        let state = StreamState { source: store.clone().into(), hub: hub.clone(), shutdown: stopped.clone() };
        // Only the store's own change notification wakes the relay: changes arrive as fast as they can.
        let relay = RelayOptions { poll_interval: Duration::from_secs(600), ..RelayOptions::default() };
        spawn_outbox_relay_with(store.clone(), hub, stopped.clone(), relay, None);
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, router(state.clone()), stopped, Some(state)));
        Node { addr, stop, server }
    }

    async fn on_free_port(store: &Store) -> Node {
        Node::start(store, TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    async fn shut_down(self) {
        self.stop.send(true).unwrap();
        self.server.await.unwrap().unwrap();
    }
}

fn config(addr: SocketAddr, sdk_key: &str) -> ConfigBuilder {
    Config::builder(sdk_key)
        .service_uri(format!("http://{addr}"))
        .initial_reconnect_delay(Duration::from_millis(10))
        .max_reconnect_delay(Duration::from_millis(100))
}

fn context(value: Value) -> Context {
    Context::from_value(value).unwrap()
}

#[tokio::test]
async fn streaming_evaluates_as_the_engine_does_and_sees_changes_within_a_second() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    let node = Node::on_free_port(&db.store).await;
    let client = Client::start(config(node.addr, &env.sdk_key).build().unwrap()).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await, "{:?}", client.data_source_status());
    assert_eq!(client.data_source_status().state, DataSourceState::Valid);

    // Every context evaluates exactly as the engine evaluates the server's own payload.
    let contexts = [
        (json!({"kind": "user", "key": "u1"}), "b", "in-beta"),
        (json!({"kind": "user", "key": "x", "email": "x@beta.example"}), "b", "in-beta"),
        (json!({"kind": "user", "key": "y", "country": "fr"}), "c", "french"),
        (json!({"kind": "user", "key": "z", "country": "de"}), "a", ""),
        (json!({"kind": "org", "key": "acme"}), "a", ""),
    ];
    let payload = db.store.sdk_payload("p", "production").await.unwrap();
    let flag = payload.flag("f").unwrap();
    for (value, want, rule) in &contexts {
        let ctx = context(value.clone());
        let engine = pennant_eval::evaluate(&payload, flag, &ctx);
        let sdk = client.string_variation_detail(&ctx, "f", "default");
        assert_eq!(sdk.value, *want, "{value}");
        assert_eq!(Some(&Value::String(sdk.value.clone())), engine.value, "{value}");
        assert_eq!(sdk.variation_index, engine.variation_index, "{value}");
        assert_eq!(sdk.reason.as_reason(), engine.reason, "{value}");
        if !rule.is_empty() {
            assert!(matches!(&sdk.reason, EvaluationReason::RuleMatch { rule_id, .. } if rule_id == rule), "{value}");
        }
        let options = AllFlagsOptions { with_reasons: true, ..AllFlagsOptions::default() };
        let engine_all = pennant_eval::all_flags_state(&payload, payload.flags(), &ctx, options);
        assert_eq!(
            serde_json::to_value(client.all_flags_state(&ctx, options)).unwrap(),
            serde_json::to_value(&engine_all).unwrap()
        );
    }

    // A flag change committed to the store reaches the client within a second.
    let mut changes = client.flag_changes();
    let other = context(json!({"kind": "user", "key": "z"}));
    let committed = Instant::now();
    set_fallthrough(&db.store, 2).await;
    let change = tokio::time::timeout(Duration::from_secs(1), changes.recv()).await.expect("within 1 s").unwrap();
    let latency = committed.elapsed();
    assert_eq!(change.key, "f");
    assert_eq!(client.string_variation(&other, "f", "default"), "c", "the new value is served once announced");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    eprintln!("commit → flag change notification: {latency:?}");

    // A segment change is announced as a change of the flag that uses it.
    let u1 = context(json!({"kind": "user", "key": "u1"}));
    db.store
        .update_segment(&actor(), "p", "production", "beta", None, "", |s| {
            s.segment.included = vec!["u2".into()];
            s.segment.reindex();
            Ok(())
        })
        .await
        .unwrap();
    let change = tokio::time::timeout(Duration::from_secs(1), changes.recv()).await.expect("within 1 s").unwrap();
    assert_eq!(change.key, "f", "f depends on the segment");
    assert_eq!(client.string_variation(&u1, "f", "default"), "c", "u1 left the segment; the fallthrough is now c");

    // The secure-mode hash is the one the server checks for client-side SDKs (`?h=`).
    let http = reqwest::Client::new();
    let report = reqwest::Method::from_bytes(b"REPORT").unwrap();
    let evalx = |hash: String, ctx: &Value| {
        http.request(report.clone(), format!("http://{}/sdk/evalx/{}/context?h={hash}", node.addr, env.client_side_id))
            .header("content-type", "application/json")
            .body(ctx.to_string())
            .send()
    };
    for (value, _, _) in &contexts {
        let hash = client.secure_mode_hash(&context(value.clone()));
        let response = evalx(hash, value).await.unwrap();
        assert_eq!(response.status(), 200, "{value}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["f"]["value"], json!(client.string_variation(&context(value.clone()), "f", "d")));
    }
    let wrong = client.secure_mode_hash(&context(json!({"kind": "user", "key": "someone-else"})));
    assert_eq!(evalx(wrong, &contexts[0].0).await.unwrap().status(), 403, "a hash for another context is refused");

    client.close().await;
    node.shut_down().await;
}

#[tokio::test]
async fn after_a_restart_on_the_same_port_the_client_reconnects_and_serves_no_stale_value() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    let node = Node::on_free_port(&db.store).await;
    let addr = node.addr;
    let client = Client::start(config(addr, &env.sdk_key).build().unwrap()).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    let user = context(json!({"kind": "user", "key": "z"}));
    assert_eq!(client.string_variation(&user, "f", "default"), "a");
    let mut status = client.data_source_status_receiver();

    node.shut_down().await;
    let interrupted = tokio::time::timeout(DEADLINE, status.wait_for(|s| s.state == DataSourceState::Interrupted));
    assert!(interrupted.await.is_ok(), "the client notices the server is gone");
    // A change while the server is down: the client cannot know, and keeps serving what it has.
    set_fallthrough(&db.store, 1).await;
    assert_eq!(client.string_variation(&user, "f", "default"), "a", "the last known value while disconnected");
    assert!(client.initialized());

    let node = Node::start(&db.store, TcpListener::bind(addr).await.unwrap());
    let valid = tokio::time::timeout(DEADLINE, status.wait_for(|s| s.state == DataSourceState::Valid));
    assert!(valid.await.is_ok(), "reconnected: {:?}", client.data_source_status());
    // The reconnection's `put` was applied before the status became Valid: no stale value from here on.
    assert_eq!(client.string_variation(&user, "f", "default"), "b");
    let error = client.data_source_status().last_error.unwrap();
    assert_eq!(error.kind, pennant_sdk::DataSourceErrorKind::NetworkError, "{error:?}");

    client.close().await;
    node.shut_down().await;
}

#[tokio::test]
async fn a_wrong_sdk_key_turns_the_data_source_off() {
    let db = TestDb::sqlite().await.unwrap();
    setup(&db.store).await;
    let node = Node::on_free_port(&db.store).await;
    for source in ["streaming", "polling"] {
        let mut builder = config(node.addr, "sdk-wrong-key");
        if source == "polling" {
            builder = builder.polling(Duration::from_millis(10));
        }
        let client = Client::start(builder.build().unwrap()).unwrap();
        let started = Instant::now();
        assert!(!client.wait_for_initialization(DEADLINE).await, "{source}");
        assert!(started.elapsed() < Duration::from_secs(5), "{source}: fails fast, not at the timeout");
        let status = client.data_source_status();
        assert_eq!(status.state, DataSourceState::Off, "{source}");
        assert_eq!(status.last_error.unwrap().status_code, Some(401), "{source}");
        let detail = client.string_variation_detail(&Context::user("u1"), "f", "default");
        let not_ready = EvaluationReason::Error { error_kind: pennant_sdk::ErrorKind::ClientNotReady };
        assert_eq!((detail.value.as_str(), detail.reason), ("default", not_ready), "{source}");
    }
    node.shut_down().await;
}

#[tokio::test]
async fn polling_gets_304s_while_nothing_changes_and_sees_changes() {
    let db = TestDb::sqlite().await.unwrap();
    let env = setup(&db.store).await;
    // The node's router, behind a layer that counts the 304s it answers.
    let hub = Arc::new(Hub::with_options(HubOptions::default()));
    let (stop, stopped) = watch::channel(false);
    let state = StreamState { source: db.store.clone().into(), hub: hub.clone(), shutdown: stopped.clone() };
    let relay = RelayOptions { poll_interval: Duration::from_secs(600), ..RelayOptions::default() };
    spawn_outbox_relay_with(db.store.clone(), hub, stopped.clone(), relay, None);
    let not_modified = Arc::new(AtomicUsize::new(0));
    let counter = not_modified.clone();
    let app = router(state).layer(axum::middleware::map_response(move |response: axum::response::Response| {
        let counter = counter.clone();
        async move {
            if response.status() == 304 {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            response
        }
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut shutdown = stopped.clone();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .into_future(),
    );

    let client = Client::start(config(addr, &env.sdk_key).polling(Duration::from_millis(20)).build().unwrap()).unwrap();
    assert!(client.wait_for_initialization(DEADLINE).await);
    let user = context(json!({"kind": "user", "key": "z"}));
    assert_eq!(client.string_variation(&user, "f", "default"), "a");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut changes = client.flag_changes();
    while not_modified.load(Ordering::SeqCst) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no 304s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(changes.try_recv().is_err(), "a 304 changes nothing");

    set_fallthrough(&db.store, 2).await;
    let change = tokio::time::timeout(DEADLINE, changes.recv()).await.unwrap().unwrap();
    assert_eq!(change.key, "f");
    assert_eq!(client.string_variation(&user, "f", "default"), "c");
    let before = not_modified.load(Ordering::SeqCst);
    while not_modified.load(Ordering::SeqCst) < before + 2 {
        assert!(tokio::time::Instant::now() < deadline, "no 304s for the new ETag");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(changes.try_recv().is_err(), "the change was announced once");
    assert_eq!(client.data_source_status().state, DataSourceState::Valid);

    client.close().await;
    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
}
