//! The queue: group commit, bounds, restart durability and redelivery (embedded, both backends), and JetStream
//! against the real NATS server (`PENNANT_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use pennant_events::{
    EmbeddedConfig, EmbeddedQueue, Enqueued, JetStreamConfig, JetStreamQueue, NewBatch, Queue, QueueError,
};
use pennant_store::testing::TestDb;
use pennant_store::{NewQueueRow, QueueBodyEncoding, Store};

fn batch(n: usize, payload_id: Option<&str>) -> NewBatch {
    NewBatch {
        project: "p".into(),
        env: "production".into(),
        payload_id: payload_id.map(str::to_owned),
        received_at_ms: 1_700_000_000_000 + n as i64,
        schema: 4,
        body: Bytes::from(format!(
            r#"[{{"kind":"custom","creationDate":{n},"key":"k","contextKeys":{{"user":"u"}}}}]"#
        )),
    }
}

fn id(e: Enqueued) -> u64 {
    match e {
        Enqueued::Queued(id) => id,
        Enqueued::Duplicate => panic!("unexpected duplicate"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_share_commits() {
    for db in TestDb::both().await.unwrap() {
        let queue = EmbeddedQueue::open(db.store.clone(), EmbeddedConfig::default()).await.unwrap();
        let tasks: Vec<_> = (0..300)
            .map(|n| {
                let q = queue.clone();
                tokio::spawn(async move { q.enqueue(batch(n, None)).await })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(id(t.await.unwrap().unwrap()));
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 300, "{}", db.backend);
        assert!(queue.commits() < 300, "{}: {} commits for 300 batches", db.backend, queue.commits());
        assert_eq!(queue.depth(), 300);
        let mut seen = 0;
        loop {
            let got = queue.pull(128, Duration::from_millis(10)).await.unwrap();
            if got.is_empty() {
                break;
            }
            seen += got.len();
            queue.ack(&got.iter().map(|b| b.id).collect::<Vec<_>>()).await.unwrap();
        }
        assert_eq!(seen, 300);
        assert_eq!(queue.depth(), 0);
        assert_eq!(db.store.event_queue_stats().await.unwrap(), (0, 0));
    }
}

#[tokio::test]
async fn bounded_by_batches_and_bytes() {
    let db = TestDb::sqlite().await.unwrap();
    let config = EmbeddedConfig { max_batches: 2, ..EmbeddedConfig::default() };
    let queue = EmbeddedQueue::open(db.store.clone(), config).await.unwrap();
    id(queue.enqueue(batch(1, None)).await.unwrap());
    id(queue.enqueue(batch(2, None)).await.unwrap());
    assert!(matches!(queue.enqueue(batch(3, None)).await, Err(QueueError::Full { .. })));
    assert_eq!(queue.depth(), 2);

    let one = batch(1, None).body.len() as u64;
    let config = EmbeddedConfig { max_bytes: one * 2, ..EmbeddedConfig::default() };
    let db = TestDb::sqlite().await.unwrap();
    let queue = EmbeddedQueue::open(db.store.clone(), config).await.unwrap();
    id(queue.enqueue(batch(1, None)).await.unwrap());
    id(queue.enqueue(batch(2, None)).await.unwrap());
    assert!(matches!(queue.enqueue(batch(3, None)).await, Err(QueueError::Full { .. })));
}

#[tokio::test]
async fn pull_waits_for_a_batch() {
    let db = TestDb::sqlite().await.unwrap();
    let queue = EmbeddedQueue::open(db.store.clone(), EmbeddedConfig::default()).await.unwrap();
    assert!(queue.pull(10, Duration::from_millis(20)).await.unwrap().is_empty());
    let q = queue.clone();
    let puller = tokio::spawn(async move { q.pull(10, Duration::from_secs(30)).await.unwrap() });
    tokio::task::yield_now().await;
    id(queue.enqueue(batch(7, Some("x"))).await.unwrap());
    let got = tokio::time::timeout(Duration::from_secs(30), puller).await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload_id.as_deref(), Some("x"));
    assert_eq!(got[0].schema, 4);
    assert_eq!(got[0].received_at_ms, 1_700_000_000_007);
}

/// Bodies go into the store LZ4-compressed and come out of `pull` as the JSON that went in; rows stored as JSON
/// (by a version before compression) come out unchanged, and a row that does not decompress is handed out as
/// stored (the processor counts it unparseable and acknowledges it) instead of failing every pull.
#[tokio::test]
async fn bodies_are_stored_compressed_and_delivered_as_json() {
    for db in TestDb::both().await.unwrap() {
        let queue = EmbeddedQueue::open(db.store.clone(), EmbeddedConfig::default()).await.unwrap();
        let events: Vec<String> = (0..100)
            .map(|n| {
                format!(r#"{{"kind":"custom","creationDate":{n},"key":"checkout","contextKeys":{{"user":"u{n}"}}}}"#)
            })
            .collect();
        let mut big = batch(1, None);
        big.body = Bytes::from(format!("[{}]", events.join(",")));
        let small = batch(2, None);
        let big_id = id(queue.enqueue(big.clone()).await.unwrap());
        id(queue.enqueue(small.clone()).await.unwrap());

        let rows = db.store.event_queue_fetch(0, 10).await.unwrap();
        assert_eq!(rows[0].body_encoding, QueueBodyEncoding::Lz4, "{}", db.backend);
        assert!(
            rows[0].body.len() * 3 < big.body.len(),
            "{}: {} of {} bytes",
            db.backend,
            rows[0].body.len(),
            big.body.len()
        );
        assert_eq!((rows[1].body_encoding, rows[1].body.as_slice()), (QueueBodyEncoding::Json, &small.body[..]));
        // The queue's byte bound counts what is stored.
        let stored: u64 = rows.iter().map(|r| r.body.len() as u64).sum();
        assert_eq!(db.store.event_queue_stats().await.unwrap(), (2, stored), "{}", db.backend);

        let row = |encoding, body: &'static [u8]| NewQueueRow {
            project_key: "p",
            env_key: "production",
            payload_id: None,
            received_at: 1,
            schema_version: 4,
            body_encoding: encoding,
            body,
        };
        db.store
            .event_queue_insert(&[
                row(QueueBodyEncoding::Json, b"[]"),
                row(QueueBodyEncoding::Lz4, b"\xff\xff\xff\x7fgarbage"),
            ])
            .await
            .unwrap();
        let got = queue.pull(10, Duration::from_millis(10)).await.unwrap();
        let bodies: Vec<&[u8]> = got.iter().map(|b| &b.body[..]).collect();
        assert_eq!(got[0].id, big_id);
        assert_eq!(bodies, [&big.body[..], &small.body[..], b"[]", b"\xff\xff\xff\x7fgarbage"], "{}", db.backend);
    }
}

/// `pennant serve` keeps the embedded queue in a SQLite file of its own and moves what an older version queued in
/// the main database there: IDs and bodies kept, nothing twice when the move runs again, later IDs above them.
#[tokio::test]
async fn queued_batches_move_to_another_database_once() {
    let (main, own) = (TestDb::sqlite().await.unwrap(), TestDb::sqlite().await.unwrap());
    let old = EmbeddedQueue::open(main.store.clone(), EmbeddedConfig::default()).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(id(old.enqueue(batch(n, None)).await.unwrap()));
    }
    drop(old);
    assert_eq!(pennant_events::move_queued_batches(&main.store, &own.store).await.unwrap(), 3);
    assert_eq!(main.store.event_queue_stats().await.unwrap().0, 0);
    // An interrupted move leaves rows in both: running it again adds none of them twice.
    let again = main.store.event_queue_fetch(0, 10).await.unwrap();
    assert!(again.is_empty());
    let copy = own.store.event_queue_fetch(0, 10).await.unwrap();
    assert_eq!(own.store.event_queue_import(&copy).await.unwrap(), 0);

    let queue = EmbeddedQueue::open(own.store.clone(), EmbeddedConfig::default()).await.unwrap();
    assert_eq!(queue.depth(), 3);
    let got = queue.pull(10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(got.iter().map(|b| b.id).collect::<Vec<_>>(), ids);
    assert_eq!(got[1].body, batch(1, None).body);
    let next = id(queue.enqueue(batch(9, None)).await.unwrap());
    assert!(next > ids[2], "{next} after {ids:?}");

    // Each database's queue has its own name, the same every time it is asked.
    let name = own.store.event_queue_origin().await.unwrap();
    assert_eq!(own.store.event_queue_origin().await.unwrap(), name);
    assert_ne!(main.store.event_queue_origin().await.unwrap(), name);
}

/// An acknowledged enqueue survives the process: drop the queue and the store, reopen, and every batch not
/// acknowledged by the processor is delivered again, exactly those.
#[tokio::test]
async fn unacknowledged_batches_survive_a_restart() {
    for db in TestDb::both().await.unwrap() {
        let store = Store::open(db.url()).await.unwrap();
        let queue = EmbeddedQueue::open(store.clone(), EmbeddedConfig::default()).await.unwrap();
        let ids: Vec<u64> = {
            let mut ids = Vec::new();
            for n in 0..5 {
                ids.push(id(queue.enqueue(batch(n, Some(&format!("pl-{n}")))).await.unwrap()));
            }
            ids
        };
        let first = queue.pull(3, Duration::from_millis(10)).await.unwrap();
        assert_eq!(first.iter().map(|b| b.id).collect::<Vec<_>>(), ids[..3]);
        queue.ack(&ids[..2]).await.unwrap(); // the processor dies after acknowledging two
        drop(queue);
        store.close().await;
        drop(store);

        let store = Store::open(db.url()).await.unwrap();
        let queue = EmbeddedQueue::open(store.clone(), EmbeddedConfig::default()).await.unwrap();
        assert_eq!(queue.depth(), 3, "{}", db.backend);
        let again = queue.pull(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(again.iter().map(|b| b.id).collect::<Vec<_>>(), ids[2..], "{}", db.backend);
        assert_eq!(again[0].payload_id.as_deref(), Some("pl-2"));
        assert_eq!(again[0].body, batch(2, None).body);
        // In-process redelivery after a processor restart.
        queue.rewind().await;
        assert_eq!(queue.pull(10, Duration::from_millis(10)).await.unwrap().len(), 3);
        queue.ack(&ids[2..]).await.unwrap();
        queue.rewind().await;
        assert!(queue.pull(10, Duration::from_millis(10)).await.unwrap().is_empty());
        assert_eq!(queue.depth(), 0);
        store.close().await;
    }
}

fn nats_url() -> String {
    std::env::var("PENNANT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn js_config(name: &str) -> JetStreamConfig {
    JetStreamConfig {
        stream: name.into(),
        subject: format!("pennant.test.{}", name.to_lowercase()),
        consumer: "processors".into(),
        ack_wait: Duration::from_secs(1),
        ..JetStreamConfig::new(nats_url())
    }
}

#[tokio::test]
async fn jetstream_queue_deduplicates_and_redelivers() {
    let name = format!("PENNANT_TEST_{:016x}", rand_u64());
    let queue = JetStreamQueue::connect(js_config(&name)).await.unwrap();
    let result = async {
        let a = id(queue.enqueue(batch(1, Some("a"))).await.unwrap());
        assert_eq!(queue.enqueue(batch(1, Some("a"))).await.unwrap(), Enqueued::Duplicate);
        let b = id(queue.enqueue(batch(2, Some("b"))).await.unwrap());
        let c = id(queue.enqueue(batch(3, None)).await.unwrap());
        let q = Queue::JetStream(queue.clone());
        assert_eq!(q.depth().await.unwrap(), 3);

        let got = q.pull(10, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got.iter().map(|b| b.id).collect::<Vec<_>>(), vec![a, b, c]);
        assert_eq!(got[0].payload_id.as_deref(), Some("a"));
        assert_eq!((got[0].project.as_str(), got[0].env.as_str(), got[0].schema), ("p", "production", 4));
        assert_eq!(got[1].body, batch(2, None).body);
        q.ack(&[a, c]).await.unwrap();

        // The processor restarts without acknowledging `b`: a new connection gets it again after `ack_wait`.
        drop(got);
        let restarted = Queue::JetStream(JetStreamQueue::connect(js_config(&name)).await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let again = loop {
            let got = restarted.pull(10, Duration::from_millis(500)).await.unwrap();
            if !got.is_empty() || tokio::time::Instant::now() > deadline {
                break got;
            }
        };
        assert_eq!(again.iter().map(|b| b.id).collect::<Vec<_>>(), vec![b]);
        restarted.ack(&[b]).await.unwrap();
        assert_eq!(restarted.depth().await.unwrap(), 0);
    };
    result.await;
    queue.delete_stream().await.unwrap();
}

#[tokio::test]
async fn jetstream_full_stream_is_reported_as_full() {
    let name = format!("PENNANT_TEST_{:016x}", rand_u64());
    let queue = JetStreamQueue::connect(JetStreamConfig { max_messages: 1, ..js_config(&name) }).await.unwrap();
    id(queue.enqueue(batch(1, None)).await.unwrap());
    let second = queue.enqueue(batch(2, None)).await;
    queue.delete_stream().await.unwrap();
    assert!(matches!(second, Err(QueueError::Full { .. })), "{second:?}");
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}
