//! Layered cache: in-process L1 → optional remote L2 (e.g. Redis) → loader (the database).

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use metrics::Counter;
use tokio::time::Instant;

use crate::coalesce::Coalescer;

/// Error of a [`RemoteLayer`] operation.
pub type RemoteError = Box<dyn Error + Send + Sync>;

/// Default loader error of a [`LayeredCache`]: any error, cheaply clonable so that one failed
/// load can be handed to every caller that was waiting for it. Build one with [`shared_error`].
pub type SharedError = Arc<dyn Error + Send + Sync>;

/// Wraps any error as a [`SharedError`].
pub fn shared_error<E: Error + Send + Sync + 'static>(error: E) -> SharedError {
    Arc::new(error)
}

/// A shared, remote cache layer (L2) storing bytes under string keys, e.g. Redis.
///
/// Implementations own key namespacing (prefix) and expiry (TTL). Errors never fail a
/// [`LayeredCache::get`]: they are counted and the cache falls through to the loader.
pub trait RemoteLayer: Send + Sync + 'static {
    /// The value stored under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, RemoteError>>;
    /// Stores `value` under `key` (replacing any previous value).
    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), RemoteError>>;
    /// Removes `key`; removing a missing key is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), RemoteError>>;
}

type EncodeFn<V> = dyn Fn(&V) -> Bytes + Send + Sync;
type DecodeFn<V> = dyn Fn(Bytes) -> Option<V> + Send + Sync;

/// How values are turned into bytes for the L2 and back. A value whose bytes do not decode
/// (`None`) is treated as an L2 miss and counted as an L2 error.
pub struct Codec<V> {
    encode: Arc<EncodeFn<V>>,
    decode: Arc<DecodeFn<V>>,
}

impl<V> Codec<V> {
    /// A codec from two functions.
    pub fn new(
        encode: impl Fn(&V) -> Bytes + Send + Sync + 'static,
        decode: impl Fn(Bytes) -> Option<V> + Send + Sync + 'static,
    ) -> Self {
        Self { encode: Arc::new(encode), decode: Arc::new(decode) }
    }
}

impl Codec<Bytes> {
    /// The identity codec, for caches of pre-encoded payloads (no copy either way).
    pub fn bytes() -> Self {
        Self::new(Bytes::clone, Some)
    }
}

impl<V> Clone for Codec<V> {
    fn clone(&self) -> Self {
        Self { encode: Arc::clone(&self.encode), decode: Arc::clone(&self.decode) }
    }
}

impl<V> fmt::Debug for Codec<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

/// A snapshot of a [`LayeredCache`]'s counters.
///
/// Per `get`: one L1 hit or one L1 miss. Per L1 miss, either the caller joins a load already in
/// flight (`coalesced`) or it leads a load, which consults the L2 once (one L2 hit, or one L2
/// miss — errors and undecodable values count as misses too, and also as `l2_errors`) and on an
/// L2 miss calls the loader once (`loads`, and `load_errors` when it fails). A leader that finds
/// the key already in L1 (filled by a load that just finished) counts nothing further.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub l1_hits: u64,
    pub l1_misses: u64,
    pub l2_hits: u64,
    pub l2_misses: u64,
    /// Failed L2 operations (get, set, delete) and undecodable L2 values.
    pub l2_errors: u64,
    /// Loader calls.
    pub loads: u64,
    /// Loader calls that returned an error (never cached).
    pub load_errors: u64,
    /// L1 misses that joined another caller's load instead of starting one.
    pub coalesced: u64,
}

/// One counter: a local atomic for [`Stats`] plus the `metrics` handle.
struct Count {
    local: AtomicU64,
    exported: Counter,
}

impl Count {
    fn new(exported: Counter) -> Self {
        Self { local: AtomicU64::new(0), exported }
    }

    fn add(&self) {
        self.local.fetch_add(1, Ordering::Relaxed);
        self.exported.increment(1);
    }

    fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

struct Counts {
    l1_hits: Count,
    l1_misses: Count,
    l2_hits: Count,
    l2_misses: Count,
    l2_errors: Count,
    loads: Count,
    load_errors: Count,
    coalesced: Count,
}

impl Counts {
    fn register(cache: &str) -> Self {
        let c = |name: &'static str, layer: &'static str| {
            Count::new(metrics::counter!(name, "cache" => cache.to_owned(), "layer" => layer))
        };
        Self {
            l1_hits: c("pennant_cache_hits_total", "l1"),
            l1_misses: c("pennant_cache_misses_total", "l1"),
            l2_hits: c("pennant_cache_hits_total", "l2"),
            l2_misses: c("pennant_cache_misses_total", "l2"),
            l2_errors: c("pennant_cache_errors_total", "l2"),
            loads: c("pennant_cache_loads_total", "loader"),
            load_errors: c("pennant_cache_errors_total", "loader"),
            coalesced: c("pennant_cache_coalesced_total", "l1"),
        }
    }
}

#[derive(Clone)]
struct L1Entry<V> {
    value: V,
    expires: Option<Instant>,
}

struct Remote<V> {
    layer: Arc<dyn RemoteLayer>,
    codec: Codec<V>,
}

/// Number of invalidation epochs keys are striped over (see `CacheInner::epochs`).
const EPOCH_STRIPES: usize = 64;

struct CacheInner<K, V> {
    name: Arc<str>,
    l1: quick_cache::sync::Cache<K, L1Entry<V>>,
    l1_ttl: Option<Duration>,
    remote: Option<Remote<V>>,
    /// Bumped by `invalidate` before it removes a key; a load that saw a different value when it
    /// started does not (or no longer) fill the layers, so an invalidation is never undone by a
    /// load that raced it. Striped by key hash so invalidations rarely affect other keys' loads.
    epochs: [AtomicU64; EPOCH_STRIPES],
    hasher: RandomState,
    counts: Counts,
}

/// A read-through cache: in-process L1 ([`quick_cache`], S3-FIFO) → optional shared L2
/// ([`RemoteLayer`], e.g. `RedisLayer`) → the loader given per call.
///
/// [`get`](Self::get) returns the L1 value if present; otherwise one caller per key (read
/// coalescing, see [`Coalescer`]) reads the L2, and on an L2 miss calls its loader, then fills
/// the L2 and the L1 on the way back. A stampede of N callers for a missing key therefore costs
/// one L2 read and one loader call; a loader error is shared by the waiting callers and not
/// cached. If all callers of a load go away, the load is cancelled.
///
/// L2 failures never fail a `get`: they are counted (`l2_errors`) and the loader is used.
/// Values are `Clone` (use `Arc<..>` or [`Bytes`]); keys are rendered with `Display` for the L2.
/// Versioning is the caller's business: put the version in the key, or `invalidate`.
///
/// Counters are available as a [`Stats`] snapshot and as `metrics` counters labelled
/// `cache=<name>`: `pennant_cache_hits_total` / `pennant_cache_misses_total` (`layer` = `l1` |
/// `l2`), `pennant_cache_errors_total` (`layer` = `l2` | `loader`), `pennant_cache_loads_total`
/// and `pennant_cache_coalesced_total`. The `metrics` handles are registered when the cache is
/// built, so install the metrics recorder before building caches.
///
/// Cloning yields another handle to the same cache.
pub struct LayeredCache<K, V, E = SharedError> {
    inner: Arc<CacheInner<K, V>>,
    coalescer: Coalescer<K, V, E>,
}

/// Builder of a [`LayeredCache`]; see [`LayeredCache::builder`].
pub struct LayeredCacheBuilder<K, V, E = SharedError> {
    name: String,
    l1_capacity: usize,
    l1_ttl: Option<Duration>,
    remote: Option<Remote<V>>,
    _types: std::marker::PhantomData<fn() -> (K, E)>,
}

impl<K, V, E> LayeredCacheBuilder<K, V, E>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// Maximum number of L1 entries (default 10,000).
    pub fn l1_capacity(mut self, items: usize) -> Self {
        self.l1_capacity = items;
        self
    }

    /// Expire L1 entries this long after they were filled (default: never; entries then leave
    /// the L1 only by eviction or `invalidate`). Bounds staleness when other instances
    /// invalidate shared data.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// Adds a shared L2 with the codec for its values.
    pub fn remote(mut self, layer: Arc<dyn RemoteLayer>, codec: Codec<V>) -> Self {
        self.remote = Some(Remote { layer, codec });
        self
    }

    /// Builds the cache and registers its `metrics` counters.
    pub fn build(self) -> LayeredCache<K, V, E> {
        let name: Arc<str> = self.name.into();
        LayeredCache {
            inner: Arc::new(CacheInner {
                counts: Counts::register(&name),
                name,
                l1: quick_cache::sync::Cache::new(self.l1_capacity.max(1)),
                l1_ttl: self.l1_ttl,
                remote: self.remote,
                epochs: std::array::from_fn(|_| AtomicU64::new(0)),
                hasher: RandomState::new(),
            }),
            coalescer: Coalescer::new(),
        }
    }
}

impl<K, V, E> LayeredCache<K, V, E>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// A builder for a cache called `name` (the `cache` label of its metrics).
    pub fn builder(name: impl Into<String>) -> LayeredCacheBuilder<K, V, E> {
        LayeredCacheBuilder {
            name: name.into(),
            l1_capacity: 10_000,
            l1_ttl: None,
            remote: None,
            _types: std::marker::PhantomData,
        }
    }

    /// The value for `key`: from the L1, else the L2, else `loader()`. The loader is called
    /// only by the one caller that leads the load for `key` (the others wait for its result),
    /// and only when the key is in neither layer.
    pub async fn get<F, Fut>(&self, key: &K, loader: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let inner = &self.inner;
        if let Some(value) = inner.l1_get(key) {
            inner.counts.l1_hits.add();
            return Ok(value);
        }
        inner.counts.l1_misses.add();
        let (load, joined) = self.coalescer.join_or_start(key.clone(), || {
            let inner = Arc::clone(inner);
            let key = key.clone();
            async move { inner.load_through(key, loader).await }
        });
        if joined {
            inner.counts.coalesced.add();
        }
        load.await
    }

    /// Removes `key` from the L1 and the L2. Callers waiting on a load of `key` that was in
    /// flight still receive its result, but it is not stored, and later `get`s load afresh.
    /// Returns the L2 error if the L2 delete failed (the L2 then keeps the old value until it
    /// expires).
    pub async fn invalidate(&self, key: &K) -> Result<(), RemoteError> {
        let inner = &self.inner;
        inner.epoch(key).fetch_add(1, Ordering::SeqCst);
        self.coalescer.forget(key);
        inner.l1.remove(key);
        if let Some(remote) = &inner.remote
            && let Err(error) = remote.layer.delete(&key.to_string()).await
        {
            inner.counts.l2_errors.add();
            return Err(error);
        }
        Ok(())
    }

    /// Empties this instance's L1 (the L2 is untouched).
    pub fn clear_l1(&self) {
        self.inner.l1.clear();
    }

    /// Number of entries in the L1.
    pub fn l1_len(&self) -> usize {
        self.inner.l1.len()
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counts;
        Stats {
            l1_hits: c.l1_hits.get(),
            l1_misses: c.l1_misses.get(),
            l2_hits: c.l2_hits.get(),
            l2_misses: c.l2_misses.get(),
            l2_errors: c.l2_errors.get(),
            loads: c.loads.get(),
            load_errors: c.load_errors.get(),
            coalesced: c.coalesced.get(),
        }
    }
}

impl<K, V> CacheInner<K, V>
where
    K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn l1_get(&self, key: &K) -> Option<V> {
        let entry = self.l1.get(key)?;
        match entry.expires {
            Some(expires) if Instant::now() >= expires => {
                // Only if still expired: a concurrent load may have just refilled it.
                self.l1.remove_if(key, |e| e.expires.is_some_and(|at| at <= expires));
                None
            }
            _ => Some(entry.value),
        }
    }

    fn epoch(&self, key: &K) -> &AtomicU64 {
        // Truncating the hash is fine: it only picks a stripe.
        let stripe = self.hasher.hash_one(key) as usize % EPOCH_STRIPES;
        &self.epochs[stripe]
    }

    /// The leader's part of a `get`: L1 re-check → L2 → loader, filling the layers.
    async fn load_through<E, F, Fut>(self: Arc<Self>, key: K, loader: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let epoch = self.epoch(&key).load(Ordering::SeqCst);
        // A load that finished between this caller's L1 miss and its start may have filled it.
        if let Some(value) = self.l1_get(&key) {
            return Ok(value);
        }
        let remote_key = self.remote.as_ref().map(|_| key.to_string());
        if let (Some(remote), Some(remote_key)) = (&self.remote, &remote_key) {
            match remote.layer.get(remote_key).await {
                Ok(Some(bytes)) => match (remote.codec.decode)(bytes) {
                    Some(value) => {
                        self.counts.l2_hits.add();
                        self.fill_l1(key, &value, epoch);
                        return Ok(value);
                    }
                    None => {
                        self.counts.l2_errors.add();
                        self.counts.l2_misses.add();
                    }
                },
                Ok(None) => self.counts.l2_misses.add(),
                Err(_) => {
                    self.counts.l2_errors.add();
                    self.counts.l2_misses.add();
                }
            }
        }

        self.counts.loads.add();
        let value = match loader().await {
            Ok(value) => value,
            Err(error) => {
                self.counts.load_errors.add();
                return Err(error);
            }
        };
        if let (Some(remote), Some(remote_key)) = (&self.remote, &remote_key)
            && self.epoch(&key).load(Ordering::SeqCst) == epoch
        {
            let encoded = (remote.codec.encode)(&value);
            if remote.layer.set(remote_key, encoded).await.is_err() {
                self.counts.l2_errors.add();
            }
            // Invalidated while the set was in flight: undo it (the invalidation's own delete
            // may have run before the set landed).
            if self.epoch(&key).load(Ordering::SeqCst) != epoch && remote.layer.delete(remote_key).await.is_err() {
                self.counts.l2_errors.add();
            }
        }
        self.fill_l1(key, &value, epoch);
        Ok(value)
    }

    /// Stores `value` in the L1 unless `key` was invalidated since `epoch` was read.
    fn fill_l1(&self, key: K, value: &V, epoch: u64) {
        let stripe = self.epoch(&key);
        if stripe.load(Ordering::SeqCst) != epoch {
            return;
        }
        let expires = self.l1_ttl.map(|ttl| Instant::now() + ttl);
        let entry = L1Entry { value: value.clone(), expires };
        self.l1.insert(key.clone(), entry);
        // Invalidated between the check and the insert: the invalidation may already have
        // removed the key, so remove it again.
        if stripe.load(Ordering::SeqCst) != epoch {
            self.l1.remove(&key);
        }
    }
}

impl<K, V, E> Clone for LayeredCache<K, V, E> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner), coalescer: self.coalescer.clone() }
    }
}

impl<K, V, E> fmt::Debug for LayeredCache<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayeredCache")
            .field("name", &self.inner.name)
            .field("l1_ttl", &self.inner.l1_ttl)
            .field("remote", &self.inner.remote.is_some())
            .finish_non_exhaustive()
    }
}

impl<K, V, E> fmt::Debug for LayeredCacheBuilder<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayeredCacheBuilder")
            .field("name", &self.name)
            .field("l1_capacity", &self.l1_capacity)
            .field("l1_ttl", &self.l1_ttl)
            .field("remote", &self.remote.is_some())
            .finish()
    }
}
