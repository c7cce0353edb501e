//! Read coalescing: deterministic (current-thread runtime, gates instead of sleeps).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pennant_patterns::Coalescer;
use tokio::sync::Notify;
use tokio::task::{JoinSet, yield_now};

type Value = Arc<str>;

/// A loader that counts its runs and waits for `gate` before returning `result`.
fn gated_load(
    runs: &Arc<AtomicUsize>,
    gate: &Arc<Notify>,
    result: Result<Value, String>,
) -> impl Future<Output = Result<Value, String>> + Send + 'static {
    let runs = Arc::clone(runs);
    let gate = Arc::clone(gate);
    async move {
        runs.fetch_add(1, Ordering::SeqCst);
        gate.notified().await;
        result
    }
}

/// Lets spawned tasks run until `done()` holds (bounded, so a bug fails instead of hanging).
async fn settle(done: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        yield_now().await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn hundred_concurrent_callers_share_one_load() {
    let coalescer = Coalescer::<String, Value, String>::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());

    let mut callers = JoinSet::new();
    for _ in 0..100 {
        let coalescer = coalescer.clone();
        let load = gated_load(&runs, &gate, Ok(Arc::from("flag-set-v7")));
        callers.spawn(async move { coalescer.get_or_load("env-1".to_owned(), load).await });
    }
    settle(|| coalescer.stats().joined == 99).await;
    assert_eq!(coalescer.stats().in_flight, 1);
    gate.notify_one();

    let results = callers.join_all().await;
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|r| r.as_deref() == Ok("flag-set-v7")));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = coalescer.stats();
    assert_eq!((stats.loads, stats.joined, stats.in_flight), (1, 99, 0));
}

#[tokio::test]
async fn error_is_shared_then_a_later_call_retries() {
    let coalescer = Coalescer::<String, Value, String>::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());

    let mut callers = JoinSet::new();
    for _ in 0..10 {
        let coalescer = coalescer.clone();
        let load = gated_load(&runs, &gate, Err("db down".to_owned()));
        callers.spawn(async move { coalescer.get_or_load("k".to_owned(), load).await });
    }
    settle(|| coalescer.stats().joined == 9).await;
    gate.notify_one();
    let results = callers.join_all().await;
    assert!(results.iter().all(|r| r == &Err("db down".to_owned())));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(coalescer.stats().in_flight, 0, "errors are not cached");

    // The next call starts a fresh load, which now succeeds.
    gate.notify_one();
    let value = coalescer.get_or_load("k".to_owned(), gated_load(&runs, &gate, Ok(Arc::from("ok")))).await;
    assert_eq!(value.as_deref(), Ok("ok"));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(coalescer.stats().loads, 2);
}

#[tokio::test]
async fn different_keys_load_independently() {
    let coalescer = Coalescer::<String, Value, String>::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let (gate_a, gate_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

    let mut a_callers = JoinSet::new();
    let mut b_callers = JoinSet::new();
    for _ in 0..5 {
        let c = coalescer.clone();
        let load = gated_load(&runs, &gate_a, Ok(Arc::from("A")));
        a_callers.spawn(async move { c.get_or_load("a".to_owned(), load).await });
        let c = coalescer.clone();
        let load = gated_load(&runs, &gate_b, Ok(Arc::from("B")));
        b_callers.spawn(async move { c.get_or_load("b".to_owned(), load).await });
    }
    settle(|| coalescer.stats().joined == 8 && runs.load(Ordering::SeqCst) == 2).await;
    assert_eq!(coalescer.stats().in_flight, 2);

    // "b" completes while "a" is still loading.
    gate_b.notify_one();
    let b = b_callers.join_all().await;
    assert!(b.iter().all(|r| r.as_deref() == Ok("B")));
    assert_eq!(coalescer.stats().in_flight, 1);
    assert!(!a_callers.is_empty());

    gate_a.notify_one();
    let a = a_callers.join_all().await;
    assert!(a.iter().all(|r| r.as_deref() == Ok("A")));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(coalescer.stats().loads, 2);
}

#[tokio::test]
async fn load_is_cancelled_when_all_callers_go_away() {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let coalescer = Coalescer::<String, Value, String>::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));

    let mut callers = JoinSet::new();
    for _ in 0..3 {
        let c = coalescer.clone();
        let guard = SetOnDrop(Arc::clone(&dropped));
        let inner = gated_load(&runs, &gate, Ok(Arc::from("never")));
        callers.spawn(async move {
            c.get_or_load("k".to_owned(), async move {
                let _guard = guard;
                inner.await
            })
            .await
        });
    }
    settle(|| coalescer.stats().joined == 2 && runs.load(Ordering::SeqCst) == 1).await;
    callers.abort_all();
    while callers.join_next().await.is_some() {}

    assert!(dropped.load(Ordering::SeqCst), "the load future was dropped");
    assert_eq!(coalescer.stats().in_flight, 0, "the key was forgotten");

    // A new caller starts a new load.
    gate.notify_one();
    let value = coalescer.get_or_load("k".to_owned(), gated_load(&runs, &gate, Ok(Arc::from("fresh")))).await;
    assert_eq!(value.as_deref(), Ok("fresh"));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn forget_lets_new_callers_start_a_new_load() {
    let coalescer = Coalescer::<String, Value, String>::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let (old_gate, new_gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

    let c = coalescer.clone();
    let load = gated_load(&runs, &old_gate, Ok(Arc::from("old")));
    let old = tokio::spawn(async move { c.get_or_load("k".to_owned(), load).await });
    settle(|| runs.load(Ordering::SeqCst) == 1).await;

    coalescer.forget(&"k".to_owned());
    let c = coalescer.clone();
    let load = gated_load(&runs, &new_gate, Ok(Arc::from("new")));
    let new = tokio::spawn(async move { c.get_or_load("k".to_owned(), load).await });
    settle(|| runs.load(Ordering::SeqCst) == 2).await;

    // The old load finishing must not remove the new load's slot.
    old_gate.notify_one();
    assert_eq!(old.await.unwrap().as_deref(), Ok("old"));
    assert_eq!(coalescer.stats().in_flight, 1);
    new_gate.notify_one();
    assert_eq!(new.await.unwrap().as_deref(), Ok("new"));
    assert_eq!(coalescer.stats().in_flight, 0);
}

#[tokio::test]
async fn get_or_load_with_builds_the_load_only_when_leading() {
    let coalescer = Coalescer::<String, Value, String>::new();
    let built = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());

    let mut callers = JoinSet::new();
    for _ in 0..20 {
        let c = coalescer.clone();
        let (built, gate) = (Arc::clone(&built), Arc::clone(&gate));
        callers.spawn(async move {
            c.get_or_load_with("k".to_owned(), move || {
                built.fetch_add(1, Ordering::SeqCst);
                async move {
                    gate.notified().await;
                    Ok(Arc::from("v"))
                }
            })
            .await
        });
    }
    settle(|| coalescer.stats().joined == 19).await;
    gate.notify_one();
    assert!(callers.join_all().await.iter().all(|r| r.as_deref() == Ok("v")));
    assert_eq!(built.load(Ordering::SeqCst), 1);
}
