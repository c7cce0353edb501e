//! Layered cache with a real Redis L2 (`PENNANT_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). These tests fail, rather than skip, when Redis is unreachable.
//! Every test uses its own key prefix, deletes its keys at the end, and writes with a 60 s TTL so
//! that a failed test leaves nothing behind for long.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pennant_patterns::{Codec, LayeredCache, RedisLayer, Stats};
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(60);

type Cache = LayeredCache<String, Bytes, String>;

fn redis_url() -> String {
    std::env::var("PENNANT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A per-test, per-run key prefix.
fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("pennant-test:{test}:{}:{nanos}:", std::process::id())
}

struct Redis {
    conn: ConnectionManager,
    prefix: String,
}

impl Redis {
    async fn connect(test: &str) -> Self {
        let url = redis_url();
        let conn =
            RedisLayer::connection(&url).await.unwrap_or_else(|e| panic!("Redis must be reachable at {url}: {e}"));
        Self { conn, prefix: unique_prefix(test) }
    }

    fn layer(&self) -> Arc<RedisLayer> {
        Arc::new(RedisLayer::new(self.conn.clone(), self.prefix.clone(), Some(TTL)))
    }

    fn cache(&self, name: &str) -> Cache {
        LayeredCache::builder(name).remote(self.layer(), Codec::bytes()).build()
    }

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET").arg(format!("{}{key}", self.prefix)).query_async(&mut self.conn.clone()).await.unwrap()
    }

    async fn set(&self, key: &str, value: &[u8]) {
        redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(value)
            .arg("EX")
            .arg(TTL.as_secs())
            .exec_async(&mut self.conn.clone())
            .await
            .unwrap();
    }

    async fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(format!("{}{key}", self.prefix)).query_async(&mut self.conn.clone()).await.unwrap()
    }

    /// Deletes every key under this test's prefix; returns how many there were.
    async fn cleanup(&self) -> usize {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        // SCAN may return a key more than once.
        let mut deleted = std::collections::HashSet::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            if !keys.is_empty() {
                redis::cmd("DEL").arg(&keys).exec_async(&mut conn).await.unwrap();
                deleted.extend(keys);
            }
            if next == 0 {
                return deleted.len();
            }
            cursor = next;
        }
    }
}

type BoxedLoad = std::pin::Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>>;

fn loader(
    calls: &Arc<AtomicUsize>,
    gate: Option<&Arc<Notify>>,
    value: &'static [u8],
) -> impl FnOnce() -> BoxedLoad + use<> {
    let calls = Arc::clone(calls);
    let gate = gate.cloned();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            Ok(Bytes::from_static(value))
        })
    }
}

/// Real I/O is involved, so poll (without busy-waiting) up to a deadline.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn stampede_of_200_loads_once_and_fills_redis() {
    let redis = Redis::connect("stampede").await;
    let cache = redis.cache("stampede");
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());

    let mut callers = JoinSet::new();
    for _ in 0..200 {
        let cache = cache.clone();
        let load = loader(&calls, Some(&gate), b"flags-v1");
        callers.spawn(async move { cache.get(&"env:prod".to_owned(), load).await });
    }
    eventually("199 coalesced callers", || cache.stats().coalesced == 199).await;
    eventually("the leader to reach the loader", || calls.load(Ordering::SeqCst) == 1).await;
    gate.notify_one();
    let results = callers.join_all().await;
    assert!(results.iter().all(|r| r.as_deref() == Ok(&b"flags-v1"[..])));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats(), Stats { l1_misses: 200, coalesced: 199, l2_misses: 1, loads: 1, ..Stats::default() });

    assert_eq!(redis.get("env:prod").await.as_deref(), Some(&b"flags-v1"[..]));
    let pttl = redis.pttl("env:prod").await;
    assert!(pttl > 0 && pttl <= 60_000, "TTL set, got {pttl} ms");
    assert_eq!(redis.cleanup().await, 1);
}

#[tokio::test]
async fn l1_miss_l2_hit_does_not_call_the_loader() {
    let redis = Redis::connect("l2hit").await;
    let first = redis.cache("first");
    let calls = Arc::new(AtomicUsize::new(0));
    let key = "flag:checkout:v3".to_owned();

    first.get(&key, loader(&calls, None, b"A")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Another instance sharing Redis: L1 miss, L2 hit, no load; then an L1 hit.
    let second = redis.cache("second");
    let value = second.get(&key, loader(&calls, None, b"unused")).await;
    assert_eq!(value.as_deref(), Ok(&b"A"[..]));
    let value = second.get(&key, loader(&calls, None, b"unused")).await;
    assert_eq!(value.as_deref(), Ok(&b"A"[..]));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(second.stats(), Stats { l1_hits: 1, l1_misses: 1, l2_hits: 1, ..Stats::default() });

    // Same instance after its L1 was cleared.
    first.clear_l1();
    let value = first.get(&key, loader(&calls, None, b"unused")).await;
    assert_eq!(value.as_deref(), Ok(&b"A"[..]));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = first.stats();
    assert_eq!((stats.l1_misses, stats.l2_misses, stats.l2_hits, stats.loads), (2, 1, 1, 1));
    assert_eq!(redis.cleanup().await, 1);
}

#[tokio::test]
async fn invalidate_removes_from_l1_and_l2() {
    let redis = Redis::connect("invalidate").await;
    let cache = redis.cache("invalidate");
    let calls = Arc::new(AtomicUsize::new(0));
    let key = "segment:beta".to_owned();

    cache.get(&key, loader(&calls, None, b"old")).await.unwrap();
    assert!(redis.get(&key).await.is_some());
    cache.invalidate(&key).await.unwrap();
    assert_eq!(cache.l1_len(), 0);
    assert_eq!(redis.get(&key).await, None);

    let value = cache.get(&key, loader(&calls, None, b"new")).await;
    assert_eq!(value.as_deref(), Ok(&b"new"[..]));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(redis.get(&key).await.as_deref(), Some(&b"new"[..]));
    let stats = cache.stats();
    assert_eq!((stats.l2_misses, stats.l2_hits, stats.loads), (2, 0, 2));
    assert_eq!(redis.cleanup().await, 1);
}

#[tokio::test]
async fn undecodable_l2_value_is_an_error_and_falls_through() {
    let redis = Redis::connect("codec").await;
    let codec = Codec::new(
        |v: &u64| Bytes::copy_from_slice(&v.to_be_bytes()),
        |b: Bytes| Some(u64::from_be_bytes(b[..].try_into().ok()?)),
    );
    let cache: LayeredCache<String, u64, String> = LayeredCache::builder("codec").remote(redis.layer(), codec).build();
    redis.set("n", b"bad").await;

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let calls = Arc::clone(&calls);
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok(42) }
        }
    };
    assert_eq!(cache.get(&"n".to_owned(), counted).await, Ok(42));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!((stats.l2_errors, stats.l2_misses, stats.loads), (1, 1, 1));
    // The loaded value replaced the bad bytes.
    assert_eq!(redis.get("n").await, Some(42u64.to_be_bytes().to_vec()));

    cache.clear_l1();
    assert_eq!(cache.get(&"n".to_owned(), || async { Ok(0) }).await, Ok(42));
    assert_eq!(cache.stats().l2_hits, 1);
    assert_eq!(redis.cleanup().await, 1);
}
