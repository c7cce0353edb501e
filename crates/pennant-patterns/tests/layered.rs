//! Layered cache with the in-process L1 only (the Redis L2 is covered in `layered_redis.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use pennant_patterns::{LayeredCache, Stats};
use tokio::sync::Notify;
use tokio::task::{JoinSet, yield_now};

type Cache = LayeredCache<String, Arc<str>, String>;

fn cache(name: &str) -> Cache {
    LayeredCache::builder(name).l1_capacity(1_000).build()
}

/// A loader counting its calls and waiting for `gate` (if any) before returning `result`.
type BoxedLoad = std::pin::Pin<Box<dyn Future<Output = Result<Arc<str>, String>> + Send>>;

fn loader(
    calls: &Arc<AtomicUsize>,
    gate: Option<&Arc<Notify>>,
    result: Result<&str, &str>,
) -> impl FnOnce() -> BoxedLoad + use<> {
    let calls = Arc::clone(calls);
    let gate = gate.cloned();
    let result = result.map(Arc::from).map_err(str::to_owned);
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            result
        })
    }
}

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
async fn stampede_of_200_calls_the_loader_once() {
    let cache = cache("stampede");
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());

    let mut callers = JoinSet::new();
    for _ in 0..200 {
        let cache = cache.clone();
        let load = loader(&calls, Some(&gate), Ok("payload"));
        callers.spawn(async move { cache.get(&"env:prod".to_owned(), load).await });
    }
    settle(|| cache.stats().coalesced == 199).await;
    gate.notify_one();
    let results = callers.join_all().await;
    assert!(results.iter().all(|r| r.as_deref() == Ok("payload")));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Now an L1 hit; the loader is not consulted.
    let hit = cache.get(&"env:prod".to_owned(), loader(&calls, None, Err("unused"))).await;
    assert_eq!(hit.as_deref(), Ok("payload"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats(), Stats { l1_hits: 1, l1_misses: 200, loads: 1, coalesced: 199, ..Stats::default() });
}

#[tokio::test]
async fn loader_error_is_shared_and_not_cached() {
    let cache = cache("errors");
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());

    let mut callers = JoinSet::new();
    for _ in 0..10 {
        let cache = cache.clone();
        let load = loader(&calls, Some(&gate), Err("db down"));
        callers.spawn(async move { cache.get(&"k".to_owned(), load).await });
    }
    settle(|| cache.stats().coalesced == 9).await;
    gate.notify_one();
    let results = callers.join_all().await;
    assert!(results.iter().all(|r| r == &Err("db down".to_owned())));
    assert_eq!(cache.l1_len(), 0);

    let ok = cache.get(&"k".to_owned(), loader(&calls, None, Ok("v"))).await;
    assert_eq!(ok.as_deref(), Ok("v"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let stats = cache.stats();
    assert_eq!((stats.loads, stats.load_errors), (2, 1));
}

#[tokio::test]
async fn invalidate_forces_a_reload() {
    let cache = cache("invalidate");
    let calls = Arc::new(AtomicUsize::new(0));
    let key = "flag:v1".to_owned();

    let first = cache.get(&key, loader(&calls, None, Ok("one"))).await;
    assert_eq!(first.as_deref(), Ok("one"));
    cache.invalidate(&key).await.unwrap();
    assert_eq!(cache.l1_len(), 0);
    let second = cache.get(&key, loader(&calls, None, Ok("two"))).await;
    assert_eq!(second.as_deref(), Ok("two"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let stats = cache.stats();
    assert_eq!((stats.l1_hits, stats.l1_misses), (0, 2));
}

#[tokio::test]
async fn invalidate_during_a_load_is_not_undone_by_it() {
    let cache = cache("race");
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let key = "k".to_owned();

    let reader = {
        let (cache, key) = (cache.clone(), key.clone());
        let load = loader(&calls, Some(&gate), Ok("stale"));
        tokio::spawn(async move { cache.get(&key, load).await })
    };
    settle(|| calls.load(Ordering::SeqCst) == 1).await;
    cache.invalidate(&key).await.unwrap();
    gate.notify_one();
    // The in-flight caller still gets its value, but it is not stored.
    assert_eq!(reader.await.unwrap().as_deref(), Ok("stale"));
    assert_eq!(cache.l1_len(), 0);
    let fresh = cache.get(&key, loader(&calls, None, Ok("fresh"))).await;
    assert_eq!(fresh.as_deref(), Ok("fresh"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn l1_ttl_expires_entries() {
    let cache: Cache = LayeredCache::builder("ttl").l1_ttl(Duration::from_secs(30)).build();
    let calls = Arc::new(AtomicUsize::new(0));
    let key = "k".to_owned();

    cache.get(&key, loader(&calls, None, Ok("a"))).await.unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    let hit = cache.get(&key, loader(&calls, None, Ok("b"))).await;
    assert_eq!(hit.as_deref(), Ok("a"));
    tokio::time::advance(Duration::from_secs(1)).await;
    let reloaded = cache.get(&key, loader(&calls, None, Ok("b"))).await;
    assert_eq!(reloaded.as_deref(), Ok("b"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bytes_values_and_default_error_type() {
    use bytes::Bytes;
    use pennant_patterns::{SharedError, shared_error};

    let cache: LayeredCache<String, Bytes> = LayeredCache::builder("bytes").build();
    let value = cache
        .get(&"k".to_owned(), || async { Ok::<_, SharedError>(Bytes::from_static(b"{\"on\":true}")) })
        .await
        .unwrap();
    assert_eq!(&value[..], b"{\"on\":true}");
    let error = cache
        .get(&"missing".to_owned(), || async { Err(shared_error(std::io::Error::other("no such flag"))) })
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "no such flag");
}

/// Records counters by `name{label=value,..}` (labels sorted).
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    fn get(&self, name: &str) -> u64 {
        self.counters.lock().unwrap().get(name).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let counter = Arc::clone(self.counters.lock().unwrap().entry(name).or_default());
        Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test]
async fn counters_are_exported_as_metrics() {
    let recorder = TestRecorder::default();
    let cache: Cache = metrics::with_local_recorder(&recorder, || LayeredCache::builder("flags").build());
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        cache.get(&"a".to_owned(), loader(&calls, None, Ok("v"))).await.unwrap();
    }
    let _ = cache.get(&"b".to_owned(), loader(&calls, None, Err("x"))).await;

    assert_eq!(recorder.get("pennant_cache_hits_total{cache=flags,layer=l1}"), 2);
    assert_eq!(recorder.get("pennant_cache_misses_total{cache=flags,layer=l1}"), 2);
    assert_eq!(recorder.get("pennant_cache_hits_total{cache=flags,layer=l2}"), 0);
    assert_eq!(recorder.get("pennant_cache_loads_total{cache=flags,layer=loader}"), 2);
    assert_eq!(recorder.get("pennant_cache_errors_total{cache=flags,layer=loader}"), 1);
    let stats = cache.stats();
    assert_eq!((stats.l1_hits, stats.l1_misses, stats.loads), (2, 2, 2));
}

/// An L2 that is down: every operation fails.
struct DownLayer;

impl pennant_patterns::RemoteLayer for DownLayer {
    fn get<'a>(
        &'a self,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<bytes::Bytes>, pennant_patterns::RemoteError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
    fn set<'a>(
        &'a self,
        _: &'a str,
        _: bytes::Bytes,
    ) -> futures_util::future::BoxFuture<'a, Result<(), pennant_patterns::RemoteError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
    fn delete<'a>(
        &'a self,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), pennant_patterns::RemoteError>> {
        Box::pin(async { Err("connection refused".into()) })
    }
}

#[tokio::test]
async fn a_failing_l2_degrades_to_the_loader() {
    let cache: LayeredCache<String, bytes::Bytes, String> =
        LayeredCache::builder("down").remote(Arc::new(DownLayer), pennant_patterns::Codec::bytes()).build();
    let value = cache.get(&"k".to_owned(), || async { Ok(bytes::Bytes::from_static(b"v")) }).await;
    assert_eq!(value.as_deref(), Ok(&b"v"[..]));
    // get + set failed; the value is still served from L1 next time.
    let stats = cache.stats();
    assert_eq!((stats.l2_errors, stats.l2_misses, stats.loads), (2, 1, 1));
    let again = cache.get(&"k".to_owned(), || async { Err("not called".to_owned()) }).await;
    assert_eq!(again.as_deref(), Ok(&b"v"[..]));
    // invalidate reports the L2 failure (after clearing the L1).
    assert!(cache.invalidate(&"k".to_owned()).await.is_err());
    assert_eq!(cache.l1_len(), 0);
}
