//! The SDK's analytics events through Pennant's real pipeline, in-process: the events front door
//! (`pennant_events::router` on the embedded queue, authenticating the SDK key against the store), then the insights
//! processor (`pennant_insights::Processor`) writing evaluation counts, the contexts index and custom events, read
//! back through the store's queries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pennant_events::{EmbeddedConfig, EmbeddedQueue, EventsConfig, EventsState, Queue};
use pennant_insights::{BatchQueue as _, EventQueue, Processor, ProcessorOptions};
use pennant_sdk::{Client, Config, Context, FlushError, TestData};
use pennant_store::testing::TestDb;
use pennant_store::{Actor, Environment, Project, Store};
use serde_json::json;

async fn environment(store: &Store) -> Environment {
    let actor = Actor::system("test");
    store.create_project(&actor, Project { key: "p".into(), name: "P".into(), tags: vec![] }, "").await.unwrap();
    let env: Environment = serde_json::from_value(json!({"key": "production", "name": "Production"})).unwrap();
    store.create_environment(&actor, "p", env, "").await.unwrap().data
}

/// The front door on a free local port; returns its URL and state.
async fn front_door(store: &Store) -> (String, EventsState) {
    let queue = Queue::Embedded(EmbeddedQueue::open(store.clone(), EmbeddedConfig::default()).await.unwrap());
    let state = EventsState::new(store.clone(), queue, EventsConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = pennant_events::router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

#[tokio::test]
async fn events_reach_the_insights_tables_through_the_front_door() {
    let db = TestDb::sqlite().await.unwrap();
    let env = environment(&db.store).await;
    let (url, state) = front_door(&db.store).await;

    let td = TestData::new();
    td.update(td.flag("checkout").variation_for_all(true));
    td.update_flag_json(json!({"key": "banner", "on": true, "trackEvents": true, "variations": ["red", "blue"],
        "fallthrough": {"variation": 1}}))
        .unwrap();
    let config = Config::builder(env.sdk_key.clone())
        .test_data(&td)
        .events_uri(url.clone())
        .flush_interval(Duration::from_secs(3600))
        .private_attributes(["email"])
        .build()
        .unwrap();
    let client = Client::start(config).unwrap();
    assert!(client.wait_for_initialization(Duration::from_secs(5)).await);

    let ann = Context::from_value(json!({"kind": "user", "key": "ann", "name": "Ann", "email": "ann@example.com",
        "plan": "gold"}))
    .unwrap();
    let acme = Context::from_value(json!({"kind": "org", "key": "acme", "name": "Acme"})).unwrap();
    for _ in 0..5 {
        assert!(client.bool_variation(&ann, "checkout", false));
    }
    assert!(client.bool_variation(&acme, "checkout", false));
    assert_eq!(client.string_variation(&ann, "banner", "none"), "blue");
    assert!(!client.bool_variation(&ann, "no-such-flag", false));
    client.track(&ann, "purchase", Some(json!({"items": 3})), Some(42.5));
    client.identify(&acme);
    client.flush().await.unwrap();

    // The front door queued one batch, with the SDK's payload ID and schema.
    let stats = state.stats();
    assert_eq!((stats.accepted_batches, stats.skipped_events, stats.rejected_batches), (1, 0, 0), "{stats:?}");
    let queue = EventQueue::new(state.queue().clone(), "embedded");
    let batches = queue.pull(100, Duration::from_millis(100)).await.unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0].project.as_str(), batches[0].env.as_str()), ("p", "production"));
    let payload_id = batches[0].payload_id.clone().expect("the SDK sends a payload ID");
    assert_eq!(payload_id.len(), 36);

    // The processor turns it into insights.
    let processor = Processor::new(db.store.clone(), ProcessorOptions::default());
    let report = processor.process(&batches).await.unwrap();
    assert_eq!(report.written.batches, 1, "{report:?}");
    queue.ack(batches.iter().map(|b| b.id.clone()).collect()).await.unwrap();

    let totals = db.store.eval_totals_since("p", "production", 0).await.unwrap();
    let count = |flag: &str, variation: i64| {
        totals.iter().find(|t| t.flag == flag && t.variation == variation).map_or(0, |t| t.count)
    };
    assert_eq!(count("checkout", 0), 6, "{totals:?}");
    assert_eq!(count("banner", 1), 1, "{totals:?}");

    let indexed = db.store.get_context("p", "production", "user", "ann").await.unwrap();
    assert_eq!(indexed.name.as_deref(), Some("Ann"));
    assert_eq!(indexed.redacted_attributes, ["email"], "the SDK redacted it");
    assert_eq!(indexed.attributes.get("email"), None, "{:?}", indexed.attributes);
    assert_eq!(indexed.attributes["plan"], "gold");
    let org = db.store.get_context("p", "production", "org", "acme").await.unwrap();
    assert_eq!(org.name.as_deref(), Some("Acme"));

    let custom = db.store.custom_events("p", "production", (0, i64::MAX), Some("purchase"), None, 10).await.unwrap();
    assert_eq!(custom.len(), 1);
    assert_eq!(custom[0].context_keys.get("user").map(String::as_str), Some("ann"));
    assert_eq!(custom[0].metric_value, Some(42.5));
    assert_eq!(custom[0].data, Some(json!({"items": 3})));

    client.close().await;
}

#[tokio::test]
async fn a_key_the_front_door_does_not_know_stops_events() {
    let db = TestDb::sqlite().await.unwrap();
    environment(&db.store).await;
    let (url, state) = front_door(&db.store).await;
    let td = TestData::new();
    td.update(td.flag("f").variation_for_all(true));
    let config = Config::builder("sdk-not-a-real-key").test_data(&td).events_uri(url).build().unwrap();
    let client = Client::start(config).unwrap();
    assert!(client.wait_for_initialization(Duration::from_secs(5)).await);
    client.bool_variation(&Context::user("u"), "f", false);
    assert_eq!(client.flush().await, Err(FlushError::Unauthorized { status: 401 }));
    client.track(&Context::user("u"), "x", None, None);
    assert_eq!(client.flush().await, Err(FlushError::Unauthorized { status: 401 }));
    assert_eq!(state.stats().accepted_batches, 0);
    client.close().await;
}
