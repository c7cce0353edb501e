#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A round's batches are written in transactions of at most `max_events` events; counts stay exact and a
//! redelivered round is skipped whole.

use bytes::Bytes;
use pennant_insights::{InputBatch, Processor, ProcessorOptions};
use pennant_store::testing::TestDb;
use pennant_store::{DAY_MS, Granularity};
use serde_json::{Value, json};

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000;

/// A batch of one summary (`n` evaluations of `f`) and `custom` custom events: `1 + custom` events.
fn batch(id: u64, n: u64, custom: usize) -> InputBatch<u64> {
    let mut events = vec![json!({"kind": "summary", "startDate": T0, "endDate": T0 + 1_000,
        "features": {"f": {"default": false, "counters": [{"variation": 0, "version": 1, "value": true, "count": n}]}}})];
    for i in 0..custom {
        events.push(json!({"kind": "custom", "creationDate": T0 + 2_000, "key": "buy",
            "contextKeys": {"user": format!("u{id}-{i}")}}));
    }
    InputBatch {
        id,
        project: "p".into(),
        env: "e".into(),
        payload_id: None,
        received_at_ms: T0 + DAY_MS,
        body: Bytes::from(Value::Array(events).to_string()),
    }
}

#[tokio::test]
async fn rounds_are_written_in_transactions_of_bounded_events() {
    for db in TestDb::both().await.unwrap() {
        let p = Processor::new(db.store.clone(), ProcessorOptions { max_events: 6, ..Default::default() });
        // 3, 3, 3, 10 (more than the bound: alone), 3, 3 events → [3 3] [3] [10] [3 3].
        let batches =
            vec![batch(1, 1, 2), batch(2, 2, 2), batch(3, 3, 2), batch(4, 4, 9), batch(5, 5, 2), batch(6, 6, 2)];
        let r = p.process(&batches).await.unwrap();
        assert_eq!(r.transactions, 4, "{}", db.backend);
        assert_eq!((r.events, r.written.batches, r.written.duplicates), (25, 6, 0), "{}", db.backend);
        assert_eq!((r.written.evaluations, r.written.custom_events), (21, 19), "{}", db.backend);
        let day = db.store.eval_series("p", "e", "f", Granularity::Day, T0, T0 + DAY_MS).await.unwrap();
        assert_eq!(day.iter().map(|p| p.count).sum::<i64>(), 21, "{}", db.backend);
        let custom = db.store.custom_events("p", "e", (T0, T0 + DAY_MS), None, None, 1_000).await.unwrap();
        assert_eq!(custom.len(), 19, "{}", db.backend);

        // Delivered again: every transaction finds its batches processed.
        let r = p.process(&batches).await.unwrap();
        assert_eq!((r.written.batches, r.written.duplicates, r.transactions), (0, 6, 4), "{}", db.backend);
        let day = db.store.eval_series("p", "e", "f", Granularity::Day, T0, T0 + DAY_MS).await.unwrap();
        assert_eq!(day.iter().map(|p| p.count).sum::<i64>(), 21, "{}", db.backend);

        // The default bound takes a round of small batches in one transaction.
        let p = Processor::new(db.store.clone(), ProcessorOptions::default());
        let r = p.process(&[batch(7, 1, 2), batch(8, 1, 2)]).await.unwrap();
        assert_eq!((r.written.batches, r.transactions), (2, 1), "{}", db.backend);
    }
}
