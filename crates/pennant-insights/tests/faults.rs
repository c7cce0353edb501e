#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Kill the processor mid-stream, restart it, and every acknowledged event is counted exactly once: on the
//! embedded queue (both backends) and on NATS JetStream.

use std::time::Duration;

use bytes::Bytes;
use pennant_events::{EmbeddedConfig, EmbeddedQueue, JetStreamConfig, JetStreamQueue, NewBatch, Queue};
use pennant_insights::{EventQueue, Processor, ProcessorOptions, spawn_processors};
use pennant_store::testing::TestDb;
use pennant_store::{Granularity, Store};
use serde_json::json;
use tokio::sync::watch;

const T0: i64 = 1_704_067_200_000;

fn new_batch(i: u64) -> NewBatch {
    let body = json!([{"kind": "summary", "startDate": T0, "endDate": T0 + 1000, "features": {
        "f": {"default": false, "counters": [{"variation": 0, "version": 1, "value": true, "count": i + 1}]}}}]);
    NewBatch {
        project: "p".into(),
        env: "e".into(),
        // Every third batch carries an SDK payload ID; the others are de-duplicated by queue position.
        payload_id: i.is_multiple_of(3).then(|| format!("payload-{i}")),
        received_at_ms: T0 + 2000,
        schema: 4,
        body: Bytes::from(body.to_string()),
    }
}

async fn total(store: &Store) -> i64 {
    store
        .eval_series("p", "e", "f", Granularity::Day, T0 - 1, T0 + 86_400_000)
        .await
        .unwrap()
        .iter()
        .map(|p| p.count)
        .sum()
}

fn options() -> ProcessorOptions {
    ProcessorOptions {
        max_batches: 8,
        flush_interval: Duration::from_millis(1),
        idle_wait: Duration::from_millis(50),
        ..Default::default()
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Enqueues `n` batches from `from`, returning the evaluations they carry.
async fn enqueue(queue: &Queue, from: u64, n: u64) -> i64 {
    let mut sum = 0;
    for i in from..from + n {
        queue.enqueue(new_batch(i)).await.unwrap();
        sum += i64::try_from(i + 1).unwrap();
    }
    sum
}

#[tokio::test]
async fn embedded_queue_kill_and_restart_counts_exactly_once() {
    for db in TestDb::both().await.unwrap() {
        // The queue in the insights' database: rows deleted in the insights transaction.
        kill_and_restart(&db.store, &db.store, db.backend).await;
    }
    // The queue in a SQLite file of its own (as `pennant serve` keeps it): acknowledged after the insights commit.
    let (main, own) = (TestDb::sqlite().await.unwrap(), TestDb::sqlite().await.unwrap());
    kill_and_restart(&main.store, &own.store, "queue in its own database").await;
}

async fn kill_and_restart(store: &Store, queue_store: &Store, case: impl std::fmt::Display) {
    let q1 = Queue::Embedded(EmbeddedQueue::open(queue_store.clone(), EmbeddedConfig::default()).await.unwrap());
    let mut expected = enqueue(&q1, 0, 150).await;
    let (_stop1, stopped1) = watch::channel(false);
    let first =
        tokio::spawn(Processor::new(store.clone(), options()).run(EventQueue::new(q1.clone(), "embedded"), stopped1));
    wait_for("some batches processed", async || total(store).await > 0).await;
    // Killed mid-stream: whatever it pulled and did not acknowledge stays in the queue.
    first.abort();
    let _ = first.await;
    drop(q1);

    // Restart: a new queue handle on the same database delivers every unacknowledged batch again, here to two
    // processors sharing one contexts cache (as `pennant serve` runs them), which take disjoint batches.
    let q2 = Queue::Embedded(EmbeddedQueue::open(queue_store.clone(), EmbeddedConfig::default()).await.unwrap());
    let (stop2, stopped2) = watch::channel(false);
    let second = spawn_processors(store.clone(), EventQueue::new(q2.clone(), "embedded"), options(), 2, &stopped2);
    expected += enqueue(&q2, 150, 50).await;
    // Not the new handle's depth: the aborted processor's last COMMIT, already sent, can still land after the
    // new handle counted the rows it deletes (a killed process's cannot), so those rows are never pulled
    // here. Counting past `expected` would be a double count, which the assertion below catches.
    wait_for("every batch counted", async || total(store).await >= expected).await;
    stop2.send(true).unwrap();
    for task in second {
        task.await.unwrap();
    }
    assert_eq!(total(store).await, expected, "{case}");
}

#[tokio::test]
async fn jetstream_kill_and_restart_counts_exactly_once() {
    let db = TestDb::sqlite().await.unwrap();
    let store = db.store.clone();
    let name = format!("PENNANT_TEST_{}", std::process::id());
    let url = std::env::var("PENNANT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let config = JetStreamConfig {
        stream: name.clone(),
        subject: format!("pennant.test.{name}"),
        consumer: format!("{name}-processors"),
        ack_wait: Duration::from_secs(1),
        ..JetStreamConfig::new(url)
    };
    let js1 = JetStreamQueue::connect(config.clone()).await.unwrap();
    let q1 = Queue::JetStream(js1.clone());
    let mut expected = enqueue(&q1, 0, 150).await;
    let (_stop1, stopped1) = watch::channel(false);
    let ns = format!("js:{name}");
    let first = tokio::spawn(Processor::new(store.clone(), options()).run(EventQueue::new(q1.clone(), &ns), stopped1));
    wait_for("some batches processed", async || total(&store).await > 0).await;
    first.abort();
    let _ = first.await;
    drop(q1);
    drop(js1);

    let js2 = JetStreamQueue::connect(config).await.unwrap();
    let q2 = Queue::JetStream(js2.clone());
    let (stop2, stopped2) = watch::channel(false);
    let second = tokio::spawn(Processor::new(store.clone(), options()).run(EventQueue::new(q2.clone(), &ns), stopped2));
    expected += enqueue(&q2, 150, 50).await;
    wait_for("every evaluation counted", async || total(&store).await >= expected).await;
    wait_for("the stream drained", async || js2.depth().await.unwrap() == 0).await;
    stop2.send(true).unwrap();
    second.await.unwrap();
    js2.delete_stream().await.unwrap();
    assert_eq!(total(&store).await, expected);
}
