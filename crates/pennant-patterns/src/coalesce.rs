//! Read coalescing ("singleflight"): concurrent callers asking for the same key share one load.
//!
//! Hand-rolled (a mutex-guarded map of weak `futures::Shared` handles) because the candidates do
//! not share errors: quick_cache's `get_value_or_guard_async` lets each waiter retry in turn when
//! the loader fails (N callers → up to N serial loader calls against a failing database), and
//! `async_singleflight` hands followers `Err(None)` instead of the error.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};

type LoadFuture<V, E> = Shared<BoxFuture<'static, Result<V, E>>>;

/// Shares one in-flight load per key between all concurrent callers.
///
/// [`get_or_load`](Self::get_or_load) for a key with no load in flight starts one; callers that
/// arrive while it runs wait for it and all receive a clone of its result — `Ok` *and* `Err`
/// (hence `V: Clone` and `E: Clone`; use `Arc`/`Bytes` for large values). Nothing is cached: the
/// key is forgotten the moment its load finishes, so the next call after a result (success or
/// error) starts a fresh load.
///
/// # Cancellation
///
/// The load runs *inside the callers' futures* (it is a [`Shared`] future polled by whoever is
/// waiting; no task is spawned). If every caller goes away (its future is dropped, e.g. by a
/// timeout or a closed request), **the load is cancelled**: its future is dropped at that point
/// and the key is forgotten, so the next caller starts a new load. If a load must run to
/// completion regardless, spawn it yourself inside the future you pass, e.g.
/// `coalescer.get_or_load(k, async move { tokio::spawn(load).await.map_err(..)? })`.
///
/// A load that panics propagates the panic to the caller that polled it; the other callers
/// waiting on it panic too ("inner future panicked during poll"), and the key is forgotten.
///
/// Cloning a `Coalescer` yields another handle to the same set of in-flight loads.
pub struct Coalescer<K, V, E> {
    inner: Arc<Inner<K, V, E>>,
}

struct Inner<K, V, E> {
    in_flight: Mutex<HashMap<K, Slot<V, E>>>,
    next_id: AtomicU64,
    loads: AtomicU64,
    joined: AtomicU64,
}

struct Slot<V, E> {
    id: u64,
    load: WeakShared<BoxFuture<'static, Result<V, E>>>,
}

/// Counters of a [`Coalescer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalescerStats {
    /// Loads started (each one ran, or started running, the caller's loader once).
    pub loads: u64,
    /// Calls that joined a load another caller had started instead of starting their own.
    pub joined: u64,
    /// Keys with a load in flight right now.
    pub in_flight: usize,
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// An empty coalescer.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                in_flight: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                loads: AtomicU64::new(0),
                joined: AtomicU64::new(0),
            }),
        }
    }

    /// Returns the result of the load in flight for `key`, or starts `load` and returns its
    /// result. `load` is dropped unpolled when another load for `key` is already running.
    pub async fn get_or_load<F>(&self, key: K, load: F) -> Result<V, E>
    where
        F: Future<Output = Result<V, E>> + Send + 'static,
    {
        self.join_or_start(key, move || load).0.await
    }

    /// Like [`get_or_load`](Self::get_or_load), but builds the load only if this call starts it.
    pub async fn get_or_load_with<F, Fut>(&self, key: K, make_load: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        self.join_or_start(key, make_load).0.await
    }

    /// Forgets the load in flight for `key`, if any: its current callers still receive its
    /// result, but later callers start a new load. Use after invalidating the source of truth.
    pub fn forget(&self, key: &K) {
        // Dropping a `WeakShared` never drops the load itself, so this is safe under the lock.
        lock(&self.inner.in_flight).remove(key);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CoalescerStats {
        CoalescerStats {
            loads: self.inner.loads.load(Ordering::Relaxed),
            joined: self.inner.joined.load(Ordering::Relaxed),
            in_flight: lock(&self.inner.in_flight).len(),
        }
    }

    /// Joins the load in flight for `key` (returning `true`) or starts a new one.
    ///
    /// Lock discipline: no user code (`make_load`) runs under the map lock, and a strong
    /// `Shared` handle is never dropped while the lock is held, because dropping the last one
    /// drops the load, whose `Forget` guard takes the lock.
    pub(crate) fn join_or_start<F, Fut>(&self, key: K, make_load: F) -> (LoadFuture<V, E>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        if let Some(running) = self.running(&lock(&self.inner.in_flight), &key) {
            return (running, true);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let forget = Forget { inner: Arc::downgrade(&self.inner), key: Some(key.clone()), id };
        let load = make_load();
        let shared = async move {
            let result = load.await;
            // Forget the key before the result is published, so that no caller arriving after
            // this point can join a finished load (errors are shared, never cached).
            drop(forget);
            result
        }
        .boxed()
        .shared();
        let Some(weak) = shared.downgrade() else {
            // Unreachable: `downgrade` fails only once the future has completed.
            return (shared, false);
        };
        let mut map = lock(&self.inner.in_flight);
        // Another caller may have started a load for `key` while `make_load` ran unlocked.
        if let Some(running) = self.running(&map, &key) {
            drop(map);
            // `shared` is dropped here, unlocked; its `Forget` sees a foreign id and keeps the slot.
            return (running, true);
        }
        map.insert(key, Slot { id, load: weak });
        drop(map);
        self.inner.loads.fetch_add(1, Ordering::Relaxed);
        (shared, false)
    }

    fn running(&self, map: &HashMap<K, Slot<V, E>>, key: &K) -> Option<LoadFuture<V, E>> {
        let running = map.get(key)?.load.upgrade()?;
        self.inner.joined.fetch_add(1, Ordering::Relaxed);
        Some(running)
    }
}

impl<K, V, E> Default for Coalescer<K, V, E>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, E> Clone for Coalescer<K, V, E> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<K, V, E> fmt::Debug for Coalescer<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("loads", &self.inner.loads.load(Ordering::Relaxed))
            .field("joined", &self.inner.joined.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Removes a load's slot when the load completes, is cancelled (all callers dropped) or panics,
/// unless the slot has since been replaced by a newer load (`id` differs).
struct Forget<K: Hash + Eq, V, E> {
    inner: Weak<Inner<K, V, E>>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, V, E> Drop for Forget<K, V, E> {
    fn drop(&mut self) {
        let (Some(inner), Some(key)) = (self.inner.upgrade(), self.key.take()) else {
            return;
        };
        let mut map = lock(&inner.in_flight);
        if map.get(&key).is_some_and(|slot| slot.id == self.id) {
            map.remove(&key);
        }
    }
}

/// Locks a mutex, ignoring poisoning: no code panics while holding these locks in a way that
/// could leave the map inconsistent (a `HashMap` stays valid across a panicking `Hash` impl).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
