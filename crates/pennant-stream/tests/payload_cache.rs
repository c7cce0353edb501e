//! The shared SDK payload cache on a real Redis: a second node takes the payload the first one built, a change
//! is a new version (built once, by whichever node asks first), and cached payloads are byte for byte what a
//! node without the cache builds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use pennant_eval::Store as _;
use pennant_patterns::{RedisLayer, RemoteLayer};
use pennant_store::testing::TestDb;
use pennant_store::{Actor, Environment, FlagDoc, Project, Store};
use pennant_stream::{EnvId, Hub, HubOptions, payload_cache};
use serde_json::json;

fn actor() -> Actor {
    Actor::system("test")
}

fn redis_url() -> String {
    std::env::var("PENNANT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn setup(store: &Store) {
    store.create_project(&actor(), Project { key: "p".into(), name: "P".into(), tags: vec![] }, "").await.unwrap();
    let env: Environment = serde_json::from_value(json!({"key": "production", "name": "Production"})).unwrap();
    store.create_environment(&actor(), "p", env, "").await.unwrap();
    let flag: FlagDoc =
        serde_json::from_value(json!({"key": "f", "name": "F", "variations": [{"value": true}, {"value": false}]}))
            .unwrap();
    store.create_flag(&actor(), "p", flag, "").await.unwrap();
}

#[tokio::test]
async fn nodes_share_payloads_through_redis_and_each_change_is_built_once() {
    for db in TestDb::both().await.unwrap() {
        setup(&db.store).await;
        let prefix = format!("pennant-test-{}-{}:sdk-payload:", std::process::id(), db.backend);
        let layer = RedisLayer::connect(&redis_url(), prefix.clone(), Some(Duration::from_secs(60))).await.unwrap();
        // Two nodes: each has its own in-process layer, both share the Redis layer.
        let (cache_a, cache_b) = (payload_cache(Arc::new(layer.clone())), payload_cache(Arc::new(layer.clone())));
        let hub_a = Hub::with_payload_cache(HubOptions::default(), cache_a.clone());
        let hub_b = Hub::with_payload_cache(HubOptions::default(), cache_b.clone());
        let id = EnvId { project: "p".into(), env: "production".into() };
        let first_version = db.store.env_data_version("p", "production").await.unwrap();

        let a = hub_a.channel(&id).snapshot(&db.store.clone().into()).await.unwrap();
        let b = hub_b.channel(&id).snapshot(&db.store.clone().into()).await.unwrap();
        let (sa, sb) = (cache_a.stats(), cache_b.stats());
        assert_eq!((sa.l2_misses, sa.loads), (1, 1), "node A built the payload: {sa:?}");
        assert_eq!((sb.l2_hits, sb.loads), (1, 0), "node B took it from Redis: {sb:?}");
        assert_eq!((&a.payload, &a.etag), (&b.payload, &b.etag));
        let plain =
            Hub::with_options(HubOptions::default()).channel(&id).snapshot(&db.store.clone().into()).await.unwrap();
        assert_eq!(plain.payload, a.payload, "the cache changes nothing in what SDKs get");
        assert_eq!(a.data.flag("f").map(|f| f.on), Some(false));

        db.store
            .update_flag(&actor(), "p", "f", None, "", |d, _| {
                d.environments.get_mut("production").unwrap().on = true;
                Ok(())
            })
            .await
            .unwrap();
        let second_version = db.store.env_data_version("p", "production").await.unwrap();
        assert!(second_version.outbox_id > first_version.outbox_id, "a change is a new version");
        // What the relay does on a change.
        hub_a.channel(&id).invalidate();
        hub_b.channel(&id).invalidate();
        let b2 = hub_b.channel(&id).snapshot(&db.store.clone().into()).await.unwrap();
        let a2 = hub_a.channel(&id).snapshot(&db.store.clone().into()).await.unwrap();
        assert_eq!(a2.data.flag("f").map(|f| f.on), Some(true), "{}", db.backend);
        assert_eq!(a2.payload, b2.payload);
        assert_ne!(a2.etag, a.etag);
        assert_eq!((cache_a.stats().loads, cache_b.stats().loads), (1, 1), "B built the new version, A took it");

        for version in [first_version, second_version] {
            layer.delete(&format!("p/production@{version}")).await.unwrap();
        }
        assert!(layer.get(&format!("p/production@{second_version}")).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_re_created_environment_does_not_get_the_old_payload() {
    let db = TestDb::sqlite().await.unwrap();
    setup(&db.store).await;
    let v1 = db.store.env_data_version("p", "production").await.unwrap();
    assert!(db.store.env_data_version("p", "nope").await.is_err());
    db.store.delete_environment(&actor(), "p", "production", "").await.unwrap();
    let env: Environment = serde_json::from_value(json!({"key": "production", "name": "Production"})).unwrap();
    db.store.create_environment(&actor(), "p", env, "").await.unwrap();
    let v2 = db.store.env_data_version("p", "production").await.unwrap();
    assert_ne!(v1, v2);
}
