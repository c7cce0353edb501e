#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The contexts index's full-text search through context upserts: a changed search text replaces the indexed
//! words, an unchanged one leaves the FTS5 index alone (SQLite, migration 0006).

use pennant_store::testing::TestDb;
use pennant_store::{BatchInsights, ContextQuery, ContextUpsert, Store};
use serde_json::{Value, json};

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000;

fn context(key: &str, name: &str, attributes: Value, seen_at: i64) -> ContextUpsert {
    let Value::Object(attributes) = attributes else { panic!("attributes must be an object") };
    ContextUpsert {
        kind: "user".into(),
        key: key.into(),
        name: Some(name.into()),
        attributes,
        redacted: Vec::new(),
        seen_at,
    }
}

async fn upsert(store: &Store, marker: &str, contexts: Vec<ContextUpsert>) {
    let mut b = BatchInsights::new(marker.into(), "p", "e", T0);
    for c in contexts {
        b.add_context(c);
    }
    let written = store.write_insights(&[b]).await.unwrap();
    assert_eq!(written.batches, 1);
}

async fn search(store: &Store, q: &str) -> Vec<String> {
    let page = store.list_contexts("p", "e", &ContextQuery { q: Some(q.into()), ..Default::default() }).await.unwrap();
    let mut keys: Vec<String> = page.items.into_iter().map(|c| c.key).collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn changed_search_text_replaces_the_indexed_words() {
    for db in TestDb::both().await.unwrap() {
        let store = &db.store;
        upsert(
            store,
            "q:1",
            vec![
                context("alice", "Alice Smith", json!({"plan": "gold", "city": "Oslo"}), T0 + 1),
                context("u-2", "Bob Jones", json!({"plan": "gold"}), T0 + 1),
            ],
        )
        .await;
        assert_eq!(search(store, "gold").await, ["alice", "u-2"], "{}", db.backend);

        // Alice's plan changes: the old word no longer finds her, the new one does, her other words still do.
        upsert(
            store,
            "q:2",
            vec![context("alice", "Alice Smith", json!({"plan": "platinum", "city": "Oslo"}), T0 + 2)],
        )
        .await;
        assert_eq!(search(store, "gold").await, ["u-2"], "{}", db.backend);
        assert_eq!(search(store, "platinum").await, ["alice"], "{}", db.backend);
        assert_eq!(search(store, "oslo smi").await, ["alice"], "{}", db.backend);
        let alice = store.get_context("p", "e", "user", "alice").await.unwrap();
        assert_eq!(alice.attributes, json!({"plan": "platinum", "city": "Oslo"}));
        assert_eq!((alice.first_seen, alice.last_seen), (T0 + 1, T0 + 2));

        // Seen again with the same attributes: last_seen moves, search is unchanged.
        upsert(
            store,
            "q:3",
            vec![context("alice", "Alice Smith", json!({"plan": "platinum", "city": "Oslo"}), T0 + 3)],
        )
        .await;
        assert_eq!(store.get_context("p", "e", "user", "alice").await.unwrap().last_seen, T0 + 3);
        assert_eq!(search(store, "platinum").await, ["alice"], "{}", db.backend);
        assert_eq!(search(store, "alice").await, ["alice"], "{}", db.backend);

        // A name-only change is searchable too.
        upsert(store, "q:4", vec![context("u-2", "Robert Jones", json!({"plan": "gold"}), T0 + 4)]).await;
        assert_eq!(search(store, "robert").await, ["u-2"], "{}", db.backend);
        assert!(search(store, "bob").await.is_empty(), "{}: the old name is gone", db.backend);
        assert_eq!(search(store, "jones").await, ["u-2"], "{}", db.backend);
    }
}

/// Rows in the FTS5 index's segment table: every transaction that writes the index adds a segment there.
async fn fts_data_rows(url: &str) -> i64 {
    let raw = Store::connect_raw(url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM insights_contexts_fts_data").fetch_one(&raw).await.unwrap();
    raw.close().await;
    n
}

#[tokio::test]
async fn unchanged_search_text_leaves_the_fts_index_alone() {
    let db = TestDb::sqlite().await.unwrap();
    let store = &db.store;
    let attrs = json!({"plan": "gold", "tier": 3});
    upsert(store, "q:1", vec![context("carol", "Carol King", attrs.clone(), T0 + 1)]).await;
    let before = fts_data_rows(db.url()).await;

    // A refresh with the same search text (a newer last_seen, the same attributes) writes no FTS segment.
    upsert(store, "q:2", vec![context("carol", "Carol King", attrs.clone(), T0 + 2)]).await;
    assert_eq!(fts_data_rows(db.url()).await, before, "an unchanged context rewrote its FTS row");
    assert_eq!(store.get_context("p", "e", "user", "carol").await.unwrap().last_seen, T0 + 2);
    assert_eq!(search(store, "carol gold").await, ["carol"]);

    // A changed search text does.
    upsert(store, "q:3", vec![context("carol", "Carol King", json!({"plan": "silver", "tier": 3}), T0 + 3)]).await;
    assert!(fts_data_rows(db.url()).await > before, "a changed context did not reach the FTS index");
    assert_eq!(search(store, "silver").await, ["carol"]);
    assert!(search(store, "gold").await.is_empty());
}
