#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The processor's recently-written contexts: an unchanged context seen again within the refresh window is not
//! written, a changed one is written at once, and after the window the context's last_seen moves on.

use std::time::Duration;

use bytes::Bytes;
use pennant_insights::{InputBatch, Processor, ProcessorOptions};
use pennant_store::testing::TestDb;
use pennant_store::{ContextQuery, DAY_MS, Store};
use serde_json::{Value, json};

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000;

fn batch(id: u64, events: Value) -> InputBatch<u64> {
    InputBatch {
        id,
        project: "p".into(),
        env: "e".into(),
        payload_id: None,
        received_at_ms: T0 + DAY_MS,
        body: Bytes::from(events.to_string()),
    }
}

fn index(at: i64, key: &str, plan: &str) -> Value {
    json!({"kind": "index", "creationDate": at, "context": {"kind": "user", "key": key, "name": "Dana Scully",
        "plan": plan}})
}

async fn last_seen(store: &Store, key: &str) -> i64 {
    store.get_context("p", "e", "user", key).await.unwrap().last_seen
}

async fn search(store: &Store, q: &str) -> Vec<String> {
    let page = store.list_contexts("p", "e", &ContextQuery { q: Some(q.into()), ..Default::default() }).await.unwrap();
    page.items.into_iter().map(|c| c.key).collect()
}

#[tokio::test]
async fn unchanged_context_within_the_window_is_not_written() {
    for db in TestDb::both().await.unwrap() {
        let store = &db.store;
        let p = Processor::new(store.clone(), ProcessorOptions::default());
        let r = p.process(&[batch(1, json!([index(T0 + 1_000, "dana", "gold")]))]).await.unwrap();
        assert_eq!((r.written.contexts, r.contexts_skipped), (1, 0), "{}", db.backend);

        // Seen again 30 s later, unchanged: nothing written, last_seen stays.
        let r = p.process(&[batch(2, json!([index(T0 + 31_000, "dana", "gold")]))]).await.unwrap();
        assert_eq!((r.written.batches, r.written.contexts, r.contexts_skipped), (1, 0, 1), "{}", db.backend);
        assert_eq!(last_seen(store, "dana").await, T0 + 1_000, "{}", db.backend);
        // An older sighting is not written either.
        let r = p.process(&[batch(3, json!([index(T0 + 500, "dana", "gold")]))]).await.unwrap();
        assert_eq!((r.written.contexts, r.contexts_skipped), (0, 1), "{}", db.backend);

        // A minute after the last write: written, last_seen moves on.
        let r = p.process(&[batch(4, json!([index(T0 + 61_000, "dana", "gold")]))]).await.unwrap();
        assert_eq!((r.written.contexts, r.contexts_skipped), (1, 0), "{}", db.backend);
        assert_eq!(last_seen(store, "dana").await, T0 + 61_000, "{}", db.backend);
        let r = p.process(&[batch(5, json!([index(T0 + 62_000, "dana", "gold")]))]).await.unwrap();
        assert_eq!((r.written.contexts, r.contexts_skipped), (0, 1), "{}: the window restarts", db.backend);

        // Another context, or the same key in another environment, is not confused with it.
        let mut other_env = batch(6, json!([index(T0 + 62_000, "dana", "gold")]));
        other_env.env = "e2".into();
        let r = p.process(&[other_env, batch(7, json!([index(T0 + 62_000, "fox", "gold")]))]).await.unwrap();
        assert_eq!((r.written.contexts, r.contexts_skipped), (2, 0), "{}", db.backend);
        assert_eq!(store.get_context("p", "e2", "user", "dana").await.unwrap().last_seen, T0 + 62_000);
    }
}

#[tokio::test]
async fn changed_context_is_written_at_once_and_searchable() {
    for db in TestDb::both().await.unwrap() {
        let store = &db.store;
        let p = Processor::new(store.clone(), ProcessorOptions::default());
        p.process(&[batch(1, json!([index(T0 + 1_000, "dana", "gold")]))]).await.unwrap();
        assert_eq!(search(store, "gold").await, ["dana"], "{}", db.backend);

        let r = p.process(&[batch(2, json!([index(T0 + 2_000, "dana", "platinum")]))]).await.unwrap();
        assert_eq!((r.written.contexts, r.contexts_skipped), (1, 0), "{}", db.backend);
        assert!(search(store, "gold").await.is_empty(), "{}", db.backend);
        assert_eq!(search(store, "platinum").await, ["dana"], "{}", db.backend);
        assert_eq!(search(store, "scully").await, ["dana"], "{}", db.backend);
        assert_eq!(last_seen(store, "dana").await, T0 + 2_000);

        // Back to the first version: different from the one last written, so written.
        let r = p.process(&[batch(3, json!([index(T0 + 3_000, "dana", "gold")]))]).await.unwrap();
        assert_eq!((r.written.contexts, r.contexts_skipped), (1, 0), "{}", db.backend);
        assert_eq!(search(store, "gold").await, ["dana"], "{}", db.backend);
        let dana = store.get_context("p", "e", "user", "dana").await.unwrap();
        assert_eq!((dana.attributes, dana.last_seen), (json!({"plan": "gold"}), T0 + 3_000));
    }
}

#[tokio::test]
async fn zero_window_or_cache_writes_every_sighting() {
    let db = TestDb::sqlite().await.unwrap();
    for (i, options) in [
        ProcessorOptions { context_refresh: Duration::ZERO, ..Default::default() },
        ProcessorOptions { context_cache: 0, ..Default::default() },
    ]
    .into_iter()
    .enumerate()
    {
        let p = Processor::new(db.store.clone(), options);
        let key = format!("k{i}");
        for (n, at) in [(1, T0 + 1_000), (2, T0 + 2_000)] {
            let r = p.process(&[batch(10 * i as u64 + n, json!([index(at, &key, "gold")]))]).await.unwrap();
            assert_eq!((r.written.contexts, r.contexts_skipped), (1, 0), "{options:?}");
            assert_eq!(last_seen(&db.store, &key).await, at);
        }
    }
}

#[tokio::test]
async fn a_round_with_a_processed_batch_remembers_nothing() {
    let db = TestDb::sqlite().await.unwrap();
    let store = &db.store;
    // Another processor (or an earlier life of this one) wrote batch 1.
    let earlier = Processor::new(store.clone(), ProcessorOptions::default());
    earlier.process(&[batch(1, json!([index(T0 + 1_000, "dana", "gold")]))]).await.unwrap();

    // Batch 1 is delivered again with a new one: its contexts were not written in this round, so they must not
    // be taken as written now.
    let p = Processor::new(store.clone(), ProcessorOptions::default());
    let r = p
        .process(&[batch(1, json!([index(T0 + 1_000, "dana", "gold")])), batch(2, json!([index(T0, "x", "y")]))])
        .await
        .unwrap();
    assert_eq!((r.written.batches, r.written.duplicates), (1, 1));
    let r = p.process(&[batch(3, json!([index(T0 + 5_000, "dana", "gold")]))]).await.unwrap();
    assert_eq!((r.written.contexts, r.contexts_skipped), (1, 0));
    assert_eq!(last_seen(store, "dana").await, T0 + 5_000);
}
