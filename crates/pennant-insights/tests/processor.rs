#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The processor on both backends: exact counts, idempotence, a crash between commit and acknowledgement, roll-ups,
//! the contexts index and search, custom events, and retention.

mod common;

use common::until;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pennant_insights::{BatchQueue, InputBatch, Processor, ProcessorOptions, QueueError};
use pennant_store::testing::TestDb;
use pennant_store::{ContextQuery, DAY_MS, Granularity, HOUR_MS, MINUTE_MS, Retention, Store};
use serde_json::json;
use tokio::sync::watch;

/// 2024-01-01T00:00:00Z, a day boundary.
const T0: i64 = 1_704_067_200_000;

fn summary(end: i64, flag: &str, counters: &[(Option<u32>, u64)]) -> serde_json::Value {
    let counters: Vec<_> = counters
        .iter()
        .map(|(v, n)| match v {
            Some(v) => json!({"variation": v, "version": 1, "value": v, "count": n}),
            None => json!({"unknown": true, "value": null, "count": n}),
        })
        .collect();
    json!({"kind": "summary", "startDate": end - 10_000, "endDate": end,
        "features": {flag: {"default": false, "contextKinds": ["user"], "counters": counters}}})
}

fn batch(id: u64, payload: Option<&str>, events: serde_json::Value) -> InputBatch<u64> {
    InputBatch {
        id,
        project: "p".into(),
        env: "e".into(),
        payload_id: payload.map(str::to_owned),
        received_at_ms: T0 + 10 * DAY_MS,
        body: Bytes::from(events.to_string()),
    }
}

async fn series(store: &Store, flag: &str, g: Granularity) -> BTreeMap<(i64, i64), i64> {
    store
        .eval_series("p", "e", flag, g, T0 - DAY_MS, T0 + 30 * DAY_MS)
        .await
        .unwrap()
        .into_iter()
        .map(|p| ((p.bucket, p.variation), p.count))
        .collect()
}

#[tokio::test]
async fn counts_are_exact_rolled_up_and_not_repeated() {
    for db in TestDb::both().await.unwrap() {
        let store = db.store.clone();
        let p = Processor::new(store.clone(), ProcessorOptions::default());
        let batches = vec![
            batch(1, Some("pay-1"), json!([summary(T0 + 5_000, "f", &[(Some(0), 3), (Some(1), 2), (None, 1)])])),
            batch(
                2,
                None,
                json!([summary(T0 + 65_000, "f", &[(Some(0), 4)]), summary(T0 + 65_000, "g", &[(Some(1), 7)])]),
            ),
            batch(3, None, json!([summary(T0 + HOUR_MS + 1, "f", &[(Some(0), 10)])])),
            batch(
                4,
                None,
                json!([summary(T0 + DAY_MS + 1, "f", &[(Some(1), 100)]),
                {"kind": "feature", "creationDate": T0 + DAY_MS + 2, "key": "f", "version": 1, "variation": 1,
                 "value": 1, "context": {"kind": "user", "key": "u"}}]),
            ),
        ];
        let r = p.process(&batches).await.unwrap();
        assert_eq!(r.written.batches, 4, "{}", db.backend);
        assert_eq!(r.written.evaluations, 3 + 2 + 1 + 4 + 7 + 10 + 100);

        let minutes = series(&store, "f", Granularity::Minute).await;
        let want_minutes = BTreeMap::from([
            ((T0, -1), 1),
            ((T0, 0), 3),
            ((T0, 1), 2),
            ((T0 + MINUTE_MS, 0), 4),
            ((T0 + HOUR_MS, 0), 10),
            ((T0 + DAY_MS, 1), 100),
        ]);
        assert_eq!(minutes, want_minutes, "{}", db.backend);
        let hours = series(&store, "f", Granularity::Hour).await;
        assert_eq!(
            hours,
            BTreeMap::from([
                ((T0, -1), 1),
                ((T0, 0), 7),
                ((T0, 1), 2),
                ((T0 + HOUR_MS, 0), 10),
                ((T0 + DAY_MS, 1), 100)
            ]),
            "{}",
            db.backend
        );
        let days = series(&store, "f", Granularity::Day).await;
        assert_eq!(days, BTreeMap::from([((T0, -1), 1), ((T0, 0), 17), ((T0, 1), 2), ((T0 + DAY_MS, 1), 100)]));
        assert_eq!(series(&store, "g", Granularity::Day).await, BTreeMap::from([((T0, 1), 7)]));
        let seen = store.flags_last_evaluated("p", "e").await.unwrap();
        assert_eq!(seen.get("f"), Some(&(T0 + DAY_MS + 2)), "feature events move last-evaluated");

        // Redelivery of everything (and an SDK retry of payload pay-1 queued under another ID): nothing is added.
        let mut again = batches.clone();
        again.push(batch(99, Some("pay-1"), json!([summary(T0 + 5_000, "f", &[(Some(0), 3)])])));
        let r = p.process(&again).await.unwrap();
        assert_eq!((r.written.batches, r.written.duplicates), (0, 5), "{}", db.backend);
        assert_eq!(series(&store, "f", Granularity::Minute).await, want_minutes);
        // The same batch twice within one write counts once.
        let dup = batch(5, None, json!([summary(T0 + 5_000, "h", &[(Some(0), 1)])]));
        let r = p.process(&[dup.clone(), dup]).await.unwrap();
        assert_eq!((r.written.batches, r.written.duplicates), (1, 1));
        assert_eq!(series(&store, "h", Granularity::Day).await, BTreeMap::from([((T0, 0), 1)]));
    }
}

/// An in-memory at-least-once queue: pulled batches stay until acknowledged, and a "restart" makes every
/// unacknowledged batch deliverable again. `fail_acks` simulates a process dying between commit and ack.
#[derive(Clone, Default)]
struct MemQueue {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    batches: Vec<InputBatch<u64>>,
    in_flight: HashSet<u64>,
    acked: HashSet<u64>,
    fail_acks: bool,
}

impl MemQueue {
    fn push(&self, b: InputBatch<u64>) {
        self.inner.lock().unwrap().batches.push(b);
    }
    fn restart(&self) {
        let mut i = self.inner.lock().unwrap();
        i.in_flight.clear();
        i.fail_acks = false;
    }
    fn unacked(&self) -> usize {
        let i = self.inner.lock().unwrap();
        i.batches.iter().filter(|b| !i.acked.contains(&b.id)).count()
    }
    fn in_flight(&self) -> usize {
        self.inner.lock().unwrap().in_flight.len()
    }
}

impl BatchQueue for MemQueue {
    type Id = u64;

    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<InputBatch<u64>>, QueueError> {
        let got: Vec<_> = {
            let mut i = self.inner.lock().unwrap();
            let out: Vec<_> = i
                .batches
                .iter()
                .filter(|b| !i.acked.contains(&b.id) && !i.in_flight.contains(&b.id))
                .take(max)
                .cloned()
                .collect();
            for b in &out {
                i.in_flight.insert(b.id);
            }
            out
        };
        if got.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
        }
        Ok(got)
    }

    async fn ack(&self, ids: Vec<u64>) -> Result<(), QueueError> {
        let mut i = self.inner.lock().unwrap();
        if i.fail_acks {
            return Err("the process died before acknowledging".into());
        }
        for id in ids {
            i.in_flight.remove(&id);
            i.acked.insert(id);
        }
        Ok(())
    }
}

#[tokio::test]
async fn crash_between_commit_and_ack_counts_once() {
    for db in TestDb::both().await.unwrap() {
        let queue = MemQueue::default();
        let mut expected = 0;
        for id in 0..50u64 {
            let n = id + 1;
            expected += n;
            queue.push(batch(id, None, json!([summary(T0 + i64::try_from(id).unwrap() * 1000, "f", &[(Some(0), n)])])));
        }
        queue.inner.lock().unwrap().fail_acks = true;
        let options =
            ProcessorOptions { max_batches: 16, flush_interval: Duration::from_millis(5), ..Default::default() };

        // First life: everything is written, nothing acknowledged; then the process "dies".
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(Processor::new(db.store.clone(), options).run(queue.clone(), stopped));
        until("all batches pulled", || queue.in_flight() == 50).await;
        let store = db.store.clone();
        let mut written = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !written {
            written = store.insights_processed("q:49").await.unwrap();
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(queue.unacked(), 50);

        // Second life: the queue delivers every batch again; none is counted twice.
        queue.restart();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(Processor::new(db.store.clone(), options).run(queue.clone(), stopped));
        until("everything acknowledged", || queue.unacked() == 0).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        let total: i64 = series(&db.store, "f", Granularity::Day).await.values().sum();
        assert_eq!(total, i64::try_from(expected).unwrap(), "{}", db.backend);
    }
}

#[tokio::test]
async fn concurrent_processors_count_a_batch_once() {
    let db = TestDb::postgres().await.unwrap();
    let batches: Vec<_> =
        (0..20).map(|id| batch(id, None, json!([summary(T0 + 1000, "f", &[(Some(0), 1)])]))).collect();
    let a = Processor::new(db.store.clone(), ProcessorOptions::default());
    let b = a.clone();
    let (ba, bb) = (batches.clone(), batches);
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move {
            loop {
                if let Ok(r) = a.process(&ba).await {
                    return r;
                }
            }
        }),
        tokio::spawn(async move {
            loop {
                if let Ok(r) = b.process(&bb).await {
                    return r;
                }
            }
        })
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.written.batches + rb.written.batches, 20);
    assert_eq!(series(&db.store, "f", Granularity::Minute).await, BTreeMap::from([((T0, 0), 20)]));
}

#[tokio::test]
async fn contexts_are_indexed_searched_and_paged() {
    for db in TestDb::both().await.unwrap() {
        let store = db.store.clone();
        let p = Processor::new(store.clone(), ProcessorOptions::default());
        let events = json!([
            {"kind": "index", "creationDate": T0 + 1, "context": {"kind": "user", "key": "alice-1", "name": "Alice Smith",
                "email": "alice@example.com", "plan": "gold", "_meta": {"redactedAttributes": ["ssn"]}}},
            {"kind": "identify", "creationDate": T0 + 2, "context": {"kind": "multi",
                "user": {"key": "bob-2", "name": "Bob Jones", "country": "Norway"},
                "org": {"key": "acme", "name": "Acme Corp", "tier": "gold"}}},
            {"kind": "index", "creationDate": T0 + 3, "context": {"kind": "device", "key": "d-3", "os": "android"}},
        ]);
        p.process(&[batch(1, None, events)]).await.unwrap();
        // Alice seen again later, with a new plan.
        let later = json!([{"kind": "index", "creationDate": T0 + 10, "context": {"kind": "user", "key": "alice-1",
            "name": "Alice Smith", "plan": "platinum"}}]);
        p.process(&[batch(2, None, later)]).await.unwrap();

        let all = store.list_contexts("p", "e", &ContextQuery::default()).await.unwrap();
        assert_eq!(all.items.len(), 4, "{}", db.backend);
        assert_eq!(all.items[0].key, "alice-1", "most recently seen first");
        assert_eq!(all.items[0].attributes, json!({"plan": "platinum"}));
        assert_eq!(all.items[0].first_seen, T0 + 1);
        assert_eq!(all.items[0].last_seen, T0 + 10);
        assert_eq!(all.items[1].key, "d-3");

        let search = |q: &str| {
            let store = store.clone();
            let q = q.to_owned();
            async move {
                let page =
                    store.list_contexts("p", "e", &ContextQuery { q: Some(q), ..Default::default() }).await.unwrap();
                let mut keys: Vec<String> = page.items.into_iter().map(|c| c.key).collect();
                keys.sort();
                keys
            }
        };
        assert_eq!(search("alice").await, ["alice-1"], "{}", db.backend);
        assert_eq!(search("ALI smi").await, ["alice-1"], "prefixes, all words, any case");
        assert_eq!(search("gold").await, ["acme"], "alice's plan changed to platinum");
        assert_eq!(search("norw").await, ["bob-2"]);
        assert_eq!(search("acme").await, ["acme"]);
        assert!(search("nobody").await.is_empty());
        assert_eq!(search("\"); DROP TABLE x; --").await, Vec::<String>::new(), "odd input is only words");
        let users = store
            .list_contexts("p", "e", &ContextQuery { kind: Some("user".into()), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(users.items.len(), 2);

        // Paging: two pages of two, then none.
        let first =
            store.list_contexts("p", "e", &ContextQuery { limit: Some(2), ..Default::default() }).await.unwrap();
        assert_eq!(first.items.len(), 2);
        let second = store
            .list_contexts("p", "e", &ContextQuery { limit: Some(2), after: first.next.clone(), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(second.items.len(), 2);
        assert!(second.next.is_none());
        let mut keys: Vec<_> = first.items.iter().chain(&second.items).map(|c| c.key.clone()).collect();
        keys.sort();
        assert_eq!(keys, ["acme", "alice-1", "bob-2", "d-3"]);
        assert!(
            store
                .list_contexts("p", "e", &ContextQuery { after: Some("zzz".into()), ..Default::default() })
                .await
                .is_err()
        );

        let bob = store.get_context("p", "e", "user", "bob-2").await.unwrap();
        assert_eq!(bob.name.as_deref(), Some("Bob Jones"));
        assert!(store.get_context("p", "e", "user", "nobody").await.is_err());
        let alice_query = ContextQuery { q: Some("alice".into()), ..Default::default() };
        let alice = store.list_contexts("p", "e", &alice_query).await.unwrap();
        assert!(alice.items[0].attributes.get("ssn").is_none());
    }
}

#[tokio::test]
async fn custom_events_are_stored_for_export() {
    for db in TestDb::both().await.unwrap() {
        let p = Processor::new(db.store.clone(), ProcessorOptions::default());
        let events: Vec<_> = (0..25)
            .map(|i| {
                json!({"kind": "custom", "creationDate": T0 + i * 1000, "key": if i % 2 == 0 { "buy" } else { "view" },
                    "contextKeys": {"user": format!("u{i}")}, "data": {"i": i}, "metricValue": i as f64 / 2.0})
            })
            .collect();
        p.process(&[batch(1, None, serde_json::Value::Array(events))]).await.unwrap();
        let all = db.store.custom_events("p", "e", (T0, T0 + 25_000), None, None, 10_000).await.unwrap();
        assert_eq!(all.len(), 25, "{}", db.backend);
        assert_eq!(all[3].data, Some(json!({"i": 3})));
        assert_eq!(all[3].metric_value, Some(1.5));
        assert_eq!(all[3].context_keys.get("user").map(String::as_str), Some("u3"));
        let buys = db.store.custom_events("p", "e", (T0 + 2000, T0 + 10_000), Some("buy"), None, 10_000).await.unwrap();
        assert_eq!(
            buys.iter().map(|e| e.creation_date).collect::<Vec<_>>(),
            [T0 + 2000, T0 + 4000, T0 + 6000, T0 + 8000]
        );
        // Keyset paging.
        let page = db.store.custom_events("p", "e", (T0, T0 + 25_000), None, None, 10).await.unwrap();
        let last = page.last().map(|e| (e.creation_date, e.id));
        let rest = db.store.custom_events("p", "e", (T0, T0 + 25_000), None, last, 100).await.unwrap();
        assert_eq!(page.len() + rest.len(), 25);
        assert_eq!(rest[0].creation_date, T0 + 10_000);
    }
}

#[tokio::test]
async fn retention_drops_old_data() {
    for db in TestDb::both().await.unwrap() {
        let store = db.store.clone();
        let p = Processor::new(store.clone(), ProcessorOptions::default());
        p.process(&[
            batch(1, None, json!([summary(T0 + 1000, "f", &[(Some(0), 1)])])),
            batch(2, None, json!([summary(T0 + 9 * DAY_MS + 1000, "f", &[(Some(0), 2)])])),
        ])
        .await
        .unwrap();
        let now = T0 + 9 * DAY_MS + 5000;
        let report = store.insights_maintenance(now, &Retention::default()).await.unwrap();
        // Minutes older than 7 days are gone; hours and days stay.
        assert_eq!(series(&store, "f", Granularity::Minute).await, BTreeMap::from([((T0 + 9 * DAY_MS, 0), 2)]));
        assert_eq!(series(&store, "f", Granularity::Hour).await.values().sum::<i64>(), 3);
        assert_eq!(series(&store, "f", Granularity::Day).await.values().sum::<i64>(), 3);
        if db.backend == "postgres" {
            let day0 = T0 / DAY_MS;
            assert!(report.partitions_dropped.contains(&format!("insights_eval_minute_d{day0}")), "{report:?}");
            let ahead = (now + 3 * DAY_MS) / DAY_MS;
            let created = format!("insights_eval_minute_d{ahead}");
            assert!(report.partitions_created.contains(&created), "{report:?}");
            // A second run has nothing to do.
            let again = store.insights_maintenance(now, &Retention::default()).await.unwrap();
            assert!(again.partitions_created.is_empty() && again.partitions_dropped.is_empty(), "{again:?}");
        } else {
            assert!(report.rows_deleted >= 1);
        }
        // The processed markers are kept for a while, then dropped: a redelivery within the window is skipped.
        assert!(store.insights_processed("q:1").await.unwrap());
    }
}
