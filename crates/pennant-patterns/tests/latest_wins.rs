//! Write coalescing: deterministic on tokio's paused clock (time only advances when every task
//! is idle, so "the interval elapsed" is exact and nothing sleeps for real).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pennant_patterns::{Batch, Closed, FlushError, LatestWins, LatestWinsConfig};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

type Sent = BTreeMap<String, u64>;

const INTERVAL: Duration = Duration::from_millis(100);

fn config(max_pending: usize) -> LatestWinsConfig {
    LatestWinsConfig { interval: INTERVAL, max_pending }
}

fn sorted(batch: &Batch<String, u64>) -> Sent {
    batch.iter().cloned().collect()
}

/// A writer that reports every batch it accepts on a channel.
fn recording(max_pending: usize) -> (LatestWins<String, u64>, mpsc::UnboundedReceiver<Sent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = LatestWins::spawn(config(max_pending), move |batch: Batch<String, u64>| {
        let tx = tx.clone();
        async move {
            tx.send(sorted(&batch)).map_err(|_| "receiver gone")?;
            Ok::<_, &str>(())
        }
    });
    (writer, rx)
}

#[tokio::test(start_paused = true)]
async fn thousand_submits_to_ten_keys_make_one_batch_of_ten_latest_values() {
    let (writer, mut batches) = recording(10_000);
    for i in 0..1_000u64 {
        writer.submit(format!("flag-{}", i % 10), i).unwrap();
    }
    assert_eq!(writer.pending(), 10);

    writer.flush().await.unwrap();
    let batch = batches.try_recv().unwrap();
    let expected: Sent = (990..1_000u64).map(|i| (format!("flag-{}", i % 10), i)).collect();
    assert_eq!(batch, expected);
    assert!(batches.try_recv().is_err(), "exactly one batch");

    let stats = writer.stats();
    assert_eq!(stats.submitted, 1_000);
    assert_eq!(stats.coalesced, 990);
    assert_eq!(stats.flushed_batches, 1);
    assert_eq!(stats.flushed_items, 10);
    assert_eq!(stats.failed_batches, 0);
    assert_eq!(stats.pending, 0);
    writer.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn interval_flushes_without_being_asked() {
    let (writer, mut batches) = recording(10_000);
    let start = Instant::now();
    writer.submit("a".into(), 1).unwrap();
    writer.submit("a".into(), 2).unwrap();

    // Nothing else is runnable, so the paused clock jumps straight to the flusher's tick.
    let batch = batches.recv().await.unwrap();
    assert_eq!(batch, Sent::from([("a".into(), 2)]));
    assert_eq!(start.elapsed(), INTERVAL);
    writer.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn reaching_max_pending_flushes_early() {
    let (writer, mut batches) = recording(5);
    let start = Instant::now();
    for i in 0..5u64 {
        writer.submit(format!("k{i}"), i).unwrap();
    }
    let batch = batches.recv().await.unwrap();
    assert_eq!(batch.len(), 5);
    assert_eq!(start.elapsed(), Duration::ZERO, "flushed before the interval");
    writer.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_batch_is_retried_and_newer_values_win() {
    // The callback fails for as long as `failures` holds `true`s; every attempt is recorded.
    let failures = Arc::new(Mutex::new(VecDeque::from([true, true, false, false])));
    let attempts = Arc::new(Mutex::new(Vec::<Sent>::new()));
    // The second attempt waits here, so values can be submitted while it is in flight.
    let in_flight = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());

    let writer = {
        let (failures, attempts) = (Arc::clone(&failures), Arc::clone(&attempts));
        let (in_flight, release) = (Arc::clone(&in_flight), Arc::clone(&release));
        LatestWins::spawn(config(10_000), move |batch: Batch<String, u64>| {
            let fail = failures.lock().unwrap().pop_front().unwrap_or(false);
            let attempt = attempts.lock().unwrap().len();
            attempts.lock().unwrap().push(sorted(&batch));
            let (in_flight, release) = (Arc::clone(&in_flight), Arc::clone(&release));
            async move {
                if attempt == 1 {
                    in_flight.notify_one();
                    release.notified().await;
                }
                if fail { Err("database unavailable") } else { Ok(()) }
            }
        })
    };

    writer.submit("a".into(), 1).unwrap();
    writer.submit("b".into(), 1).unwrap();
    assert_eq!(writer.flush().await, Err(FlushError::Callback("database unavailable".into())));
    assert_eq!(writer.pending(), 2, "the failed batch is pending again");

    // Second attempt (at the next interval) also fails, while "a" gets a newer value.
    in_flight.notified().await;
    writer.submit("a".into(), 2).unwrap();
    release.notify_one();
    // Third attempt: explicit flush; must carry the newer "a" and the retried "b".
    writer.flush().await.unwrap();

    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 3);
    assert_eq!(attempts[0], Sent::from([("a".into(), 1), ("b".into(), 1)]));
    assert_eq!(attempts[1], Sent::from([("a".into(), 1), ("b".into(), 1)]));
    assert_eq!(attempts[2], Sent::from([("a".into(), 2), ("b".into(), 1)]));
    let stats = writer.stats();
    assert_eq!((stats.failed_batches, stats.flushed_batches), (2, 1));
    assert_eq!(stats.pending, 0);
    writer.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn size_trigger_does_not_hammer_a_failing_sink() {
    let calls = Arc::new(Mutex::new(0usize));
    let writer = {
        let calls = Arc::clone(&calls);
        LatestWins::spawn(config(1), move |_batch: Batch<String, u64>| {
            *calls.lock().unwrap() += 1;
            async { Err::<(), _>("down") }
        })
    };
    let start = Instant::now();
    writer.submit("a".into(), 1).unwrap();
    assert!(writer.flush().await.is_err());
    assert_eq!(*calls.lock().unwrap(), 1);
    // While backing off, more size-triggering submits do not cause immediate retries...
    for i in 0..100 {
        writer.submit(format!("k{i}"), i).unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(*calls.lock().unwrap(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // ...the retry comes with the next interval.
    tokio::time::sleep(INTERVAL).await;
    for _ in 0..100 {
        if *calls.lock().unwrap() == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(*calls.lock().unwrap(), 2);
    assert_eq!(start.elapsed(), INTERVAL);
    assert_eq!(writer.pending(), 101);
    drop(writer);
}

#[tokio::test(start_paused = true)]
async fn flush_with_nothing_pending_succeeds_without_calling_back() {
    let (writer, mut batches) = recording(10_000);
    writer.flush().await.unwrap();
    assert!(batches.try_recv().is_err());
    assert_eq!(writer.stats().flushed_batches, 0);
    writer.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn close_flushes_then_rejects_further_use() {
    let (writer, mut batches) = recording(10_000);
    writer.submit("a".into(), 7).unwrap();
    writer.close().await.unwrap();
    assert_eq!(batches.try_recv().unwrap(), Sent::from([("a".into(), 7)]));

    assert_eq!(writer.submit("b".into(), 1), Err(Closed(("b".into(), 1))));
    assert_eq!(writer.flush().await, Err(FlushError::Closed));
    assert_eq!(writer.close().await, Err(FlushError::Closed));
    assert_eq!(writer.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn failed_close_leaves_values_for_drain() {
    let writer = LatestWins::spawn(config(10_000), |_batch: Batch<String, u64>| async { Err::<(), _>("down") });
    writer.submit("a".into(), 1).unwrap();
    writer.submit("a".into(), 2).unwrap();
    writer.submit("b".into(), 3).unwrap();
    assert_eq!(writer.close().await, Err(FlushError::Callback("down".into())));
    let mut left = writer.drain();
    left.sort();
    assert_eq!(left, vec![("a".into(), 2), ("b".into(), 3)]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_writer_flushes_in_the_background() {
    let (writer, mut batches) = recording(10_000);
    writer.submit("a".into(), 1).unwrap();
    drop(writer);
    assert_eq!(batches.recv().await.unwrap(), Sent::from([("a".into(), 1)]));
    // The flusher exited and dropped the callback, closing the channel.
    assert!(batches.recv().await.is_none());
}
