#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! How the processor's rounds and transactions are put together: statements are built before the transaction on
//! the guess that every batch is new, and built again when some were processed before; the next round is pulled
//! while the current one is written and acknowledged; a processor that lags fills the embedded queue's bound, and
//! the front door is told to push back until it catches up.

mod common;

use common::until;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pennant_events::{EmbeddedConfig, EmbeddedQueue, NewBatch, Queue, QueueError as FrontQueueError};
use pennant_insights::{BatchQueue, EventQueue, InputBatch, Processor, ProcessorOptions, QueueError};
use pennant_store::testing::TestDb;
use pennant_store::{ContextQuery, DAY_MS, Granularity, Store};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200_000;

/// A batch with `n` evaluations of `f` (at `T0 + id` s), an index event for context `u{id}` and a custom event.
fn events(id: u64, n: u64) -> Value {
    let at = T0 + i64::try_from(id).unwrap() * 1_000;
    json!([
        {"kind": "summary", "startDate": at, "endDate": at,
         "features": {"f": {"default": false, "counters": [{"variation": 0, "version": 1, "value": true, "count": n}]}}},
        {"kind": "index", "creationDate": at, "context": {"kind": "user", "key": format!("u{id}")}},
        {"kind": "custom", "creationDate": at, "key": "buy", "contextKeys": {"user": format!("u{id}")}}
    ])
}

fn batch(id: u64, n: u64) -> InputBatch<u64> {
    InputBatch {
        id,
        project: "p".into(),
        env: "e".into(),
        payload_id: None,
        received_at_ms: T0 + DAY_MS,
        body: Bytes::from(events(id, n).to_string()),
    }
}

async fn total(store: &Store) -> i64 {
    let day = store.eval_series("p", "e", "f", Granularity::Day, T0, T0 + DAY_MS).await.unwrap();
    day.iter().map(|p| p.count).sum()
}

async fn custom_events(store: &Store) -> usize {
    store.custom_events("p", "e", (T0, T0 + DAY_MS), None, None, 1_000).await.unwrap().len()
}

async fn contexts(store: &Store) -> Vec<String> {
    let page = store.list_contexts("p", "e", &ContextQuery::default()).await.unwrap();
    let mut keys: Vec<String> = page.items.into_iter().map(|c| c.key).collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_transaction_mixing_processed_and_new_batches_writes_only_the_new_ones() {
    for db in TestDb::both().await.unwrap() {
        let store = &db.store;
        let p =
            Processor::new(store.clone(), ProcessorOptions { context_refresh: Duration::ZERO, ..Default::default() });
        let r = p.process(&[batch(1, 1), batch(2, 2)]).await.unwrap();
        assert_eq!((r.written.batches, r.written.evaluations), (2, 3), "{}", db.backend);

        // Redelivered together with two new batches, in one transaction: the statements built for all four
        // before it began must not run; only 3 and 4 count.
        let r = p.process(&[batch(1, 1), batch(3, 4), batch(2, 2), batch(4, 8)]).await.unwrap();
        assert_eq!(r.transactions, 1, "{}", db.backend);
        assert_eq!((r.written.batches, r.written.duplicates), (2, 2), "{}", db.backend);
        assert_eq!((r.written.evaluations, r.written.contexts, r.written.custom_events), (12, 2, 2), "{}", db.backend);
        assert_eq!(total(store).await, 15, "{}", db.backend);
        let minutes = store.eval_series("p", "e", "f", Granularity::Minute, T0, T0 + DAY_MS).await.unwrap();
        assert_eq!(minutes.iter().map(|p| (p.bucket, p.count)).collect::<Vec<_>>(), vec![(T0, 15)], "{}", db.backend);
        assert_eq!(custom_events(store).await, 4, "{}", db.backend);
        assert_eq!(contexts(store).await, ["u1", "u2", "u3", "u4"], "{}", db.backend);
        let seen = store.flags_last_evaluated("p", "e").await.unwrap();
        assert_eq!(seen.get("f"), Some(&(T0 + 4_000)), "{}", db.backend);

        // All of them again: nothing.
        let r = p.process(&[batch(4, 8), batch(3, 4)]).await.unwrap();
        assert_eq!((r.written.batches, r.written.duplicates, r.written.evaluations), (0, 2, 0), "{}", db.backend);
        assert_eq!((total(store).await, custom_events(store).await), (15, 4), "{}", db.backend);
    }
}

/// An in-memory at-least-once queue whose acknowledgements wait for permits, to hold a round between its commit
/// and its acknowledgement.
#[derive(Clone)]
struct GatedQueue {
    inner: Arc<Mutex<Gated>>,
    acks: Arc<Semaphore>,
}

#[derive(Default)]
struct Gated {
    batches: Vec<InputBatch<u64>>,
    in_flight: HashSet<u64>,
    acked: HashSet<u64>,
}

impl GatedQueue {
    fn new(batches: Vec<InputBatch<u64>>) -> GatedQueue {
        GatedQueue {
            inner: Arc::new(Mutex::new(Gated { batches, ..Gated::default() })),
            acks: Arc::new(Semaphore::new(0)),
        }
    }

    fn counts(&self) -> (usize, usize) {
        let i = self.inner.lock().unwrap();
        (i.in_flight.len(), i.acked.len())
    }
}

impl BatchQueue for GatedQueue {
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
            i.in_flight.extend(out.iter().map(|b| b.id));
            out
        };
        if got.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
        }
        Ok(got)
    }

    async fn ack(&self, ids: Vec<u64>) -> Result<(), QueueError> {
        self.acks.acquire().await?.forget();
        let mut i = self.inner.lock().unwrap();
        for id in ids {
            i.in_flight.remove(&id);
            i.acked.insert(id);
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_next_round_is_pulled_while_the_current_one_is_written() {
    let db = TestDb::sqlite().await.unwrap();
    let queue = GatedQueue::new((1..=20).map(|id| batch(id, id)).collect());
    let options = ProcessorOptions {
        max_batches: 10,
        flush_interval: Duration::from_millis(1),
        idle_wait: Duration::from_millis(20),
        ..Default::default()
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(Processor::new(db.store.clone(), options).run(queue.clone(), stopped));

    // The first round is written and waits for its acknowledgement; the second is already pulled.
    until("both rounds pulled before any acknowledgement", || queue.counts() == (20, 0)).await;
    let processed = db.store.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !processed.insights_processed("q:10").await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the first round was not written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Not a third round: there is none, and at most one waits.
    assert_eq!(queue.counts(), (20, 0));
    assert!(!db.store.insights_processed("q:11").await.unwrap(), "the second round is written only after the first");

    queue.acks.add_permits(2);
    until("everything acknowledged", || queue.counts() == (0, 20)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(total(&db.store).await, (1..=20).sum::<i64>());
    assert_eq!(custom_events(&db.store).await, 20);
}

#[tokio::test]
async fn without_prefetch_the_next_round_is_pulled_after_the_acknowledgement() {
    let db = TestDb::sqlite().await.unwrap();
    let queue = GatedQueue::new((1..=20).map(|id| batch(id, id)).collect());
    let options = ProcessorOptions {
        max_batches: 10,
        flush_interval: Duration::from_millis(1),
        idle_wait: Duration::from_millis(20),
        prefetch: false,
        ..Default::default()
    };
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(Processor::new(db.store.clone(), options).run(queue.clone(), stopped));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !db.store.insights_processed("q:10").await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the first round was not written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Written and waiting for its acknowledgement: nothing more is pulled meanwhile.
    tokio::task::yield_now().await;
    assert_eq!(queue.counts(), (10, 0));
    queue.acks.add_permits(2);
    until("everything acknowledged", || queue.counts() == (0, 20)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(total(&db.store).await, (1..=20).sum::<i64>());
}

fn new_batch(id: u64) -> NewBatch {
    NewBatch {
        project: "p".into(),
        env: "e".into(),
        payload_id: None,
        received_at_ms: T0 + DAY_MS,
        schema: 4,
        body: Bytes::from(events(id, id).to_string()),
    }
}

#[tokio::test]
async fn a_lagging_processor_fills_the_embedded_queue_until_it_catches_up() {
    for db in TestDb::both().await.unwrap() {
        let store = db.store.clone();
        let config =
            EmbeddedConfig { max_batches: 5, retry_after: Duration::from_secs(7), ..EmbeddedConfig::default() };
        let embedded = EmbeddedQueue::open(store.clone(), config).await.unwrap();
        let queue = Queue::Embedded(embedded.clone());
        for id in 1..=5 {
            queue.enqueue(new_batch(id)).await.unwrap();
        }
        // No processor has taken anything yet: the bound holds, with the configured Retry-After.
        match queue.enqueue(new_batch(6)).await {
            Err(FrontQueueError::Full { retry_after }) => assert_eq!(retry_after, Duration::from_secs(7)),
            other => panic!("expected a full queue, got {other:?}"),
        }
        assert_eq!(embedded.depth(), 5, "{}", db.backend);

        let options = ProcessorOptions {
            flush_interval: Duration::from_millis(1),
            idle_wait: Duration::from_millis(20),
            ..Default::default()
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(
            Processor::new(store.clone(), options).run(EventQueue::new(queue.clone(), "embedded"), stopped),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while embedded.depth() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the processor did not catch up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(total(&store).await, 15, "{}", db.backend);
        // Caught up: there is room again.
        queue.enqueue(new_batch(6)).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while total(&store).await < 21 {
            assert!(tokio::time::Instant::now() < deadline, "the last batch was not counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(total(&store).await, 21, "{}", db.backend);
    }
}

#[tokio::test]
async fn embedded_queue_rows_leave_with_the_transaction_that_counts_them() {
    for db in TestDb::both().await.unwrap() {
        let store = db.store.clone();
        let embedded = EmbeddedQueue::open(store.clone(), EmbeddedConfig::default()).await.unwrap();
        let queue = EventQueue::new(Queue::Embedded(embedded.clone()), "embedded");
        for id in 1..=4 {
            embedded.enqueue(new_batch(id)).await.unwrap();
        }
        let pulled = queue.pull(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(pulled.len(), 4, "{}", db.backend);
        // The queue's rows are in the processor's store: it deletes them itself.
        assert!(pulled.iter().all(|b| queue.queue_row(&store, &b.id) == Some(i64::try_from(b.id.seq).unwrap())));
        // Another handle on the same database is another store (its own write lock): acknowledged the usual way.
        let other = Store::open(db.url()).await.unwrap();
        assert_eq!(queue.queue_row(&other, &pulled[0].id), None, "{}", db.backend);

        let insights: Vec<_> = pulled
            .iter()
            .map(|b| {
                let mut out = pennant_store::BatchInsights::new(b.marker(), &b.project, &b.env, b.received_at_ms);
                pennant_insights::add_events(&mut out, &pennant_events::parse_batch(&b.body).unwrap());
                out
            })
            .collect();
        let rows: Vec<i64> = pulled.iter().map(|b| i64::try_from(b.id.seq).unwrap()).collect();
        let written = store.write_insights_dequeuing(&insights[..2], &rows[..2]).await.unwrap();
        assert_eq!((written.batches, written.evaluations), (2, 3), "{}", db.backend);
        assert_eq!(store.event_queue_stats().await.unwrap().0, 2, "{}", db.backend);
        // Redelivered with the others: the processed ones are skipped, every row goes.
        let written = store.write_insights_dequeuing(&insights, &rows).await.unwrap();
        assert_eq!((written.batches, written.duplicates, written.evaluations), (2, 2, 7), "{}", db.backend);
        assert_eq!(store.event_queue_stats().await.unwrap(), (0, 0), "{}", db.backend);
        assert_eq!(total(&store).await, 10, "{}", db.backend);
        // Only the queue's bounds are left to update.
        assert_eq!(embedded.depth(), 4, "{}", db.backend);
        queue.acknowledge_deleted(pulled.into_iter().map(|b| b.id).collect()).await;
        assert_eq!(embedded.depth(), 0, "{}", db.backend);
        other.close().await;
    }
}

#[tokio::test]
async fn a_processor_on_an_embedded_queue_in_another_store_handle_acknowledges_it() {
    for db in TestDb::both().await.unwrap() {
        let queue_store = Store::open(db.url()).await.unwrap();
        let embedded = EmbeddedQueue::open(queue_store.clone(), EmbeddedConfig::default()).await.unwrap();
        for id in 1..=6 {
            embedded.enqueue(new_batch(id)).await.unwrap();
        }
        let options = ProcessorOptions {
            max_batches: 4,
            flush_interval: Duration::from_millis(1),
            idle_wait: Duration::from_millis(20),
            ..Default::default()
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(
            Processor::new(db.store.clone(), options)
                .run(EventQueue::new(Queue::Embedded(embedded.clone()), "embedded"), stopped),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while embedded.depth() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the queue was not drained");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(queue_store.event_queue_stats().await.unwrap(), (0, 0), "{}", db.backend);
        assert_eq!(total(&db.store).await, 21, "{}", db.backend);
        queue_store.close().await;
    }
}
