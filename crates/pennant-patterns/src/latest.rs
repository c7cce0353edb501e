//! Write coalescing ("latest write wins"): only the newest pending value per key is written.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::coalesce::lock;

/// One batch handed to the flush callback: every pending key with its newest value, in no
/// particular order. It is an `Arc` so that a failed batch can be taken back without cloning;
/// iterate it with `batch.iter()`.
pub type Batch<K, V> = Arc<Vec<(K, V)>>;

/// When a [`LatestWins`] flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestWinsConfig {
    /// Flush the pending values at least this often (and retry a failed batch after this long).
    pub interval: Duration,
    /// Flush early as soon as this many distinct keys are pending (not while backing off after
    /// a failed batch).
    pub max_pending: usize,
}

impl Default for LatestWinsConfig {
    fn default() -> Self {
        Self { interval: Duration::from_millis(250), max_pending: 10_000 }
    }
}

/// Why [`LatestWins::flush`] or [`LatestWins::close`] did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushError {
    /// The flush callback failed (its error, formatted); the batch stays pending and is retried.
    Callback(String),
    /// [`close`](LatestWins::close) was already called, or the flusher task is gone (dropped
    /// runtime, or the callback panicked).
    Closed,
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Callback(error) => write!(f, "flush callback failed: {error}"),
            Self::Closed => f.write_str("write coalescer is closed"),
        }
    }
}

impl std::error::Error for FlushError {}

/// Returned by [`LatestWins::submit`] after [`close`](LatestWins::close): the rejected item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed<T>(pub T);

impl<T> fmt::Display for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("write coalescer is closed")
    }
}

impl<T: fmt::Debug> std::error::Error for Closed<T> {}

/// Counters of a [`LatestWins`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatestWinsStats {
    /// Calls to `submit` that were accepted.
    pub submitted: u64,
    /// Submitted values that replaced a still-pending value for the same key.
    pub coalesced: u64,
    /// Batches the callback accepted.
    pub flushed_batches: u64,
    /// Values in those batches.
    pub flushed_items: u64,
    /// Batches the callback rejected (their values went back to pending).
    pub failed_batches: u64,
    /// Distinct keys pending right now (not counting a batch being written).
    pub pending: usize,
}

/// Latest-write-wins write coalescer.
///
/// [`submit`](Self::submit) records `value` as the pending value for `key`, replacing any value
/// not yet written. A flusher task takes the whole pending map every
/// [`interval`](LatestWinsConfig::interval), or as soon as
/// [`max_pending`](LatestWinsConfig::max_pending) keys are pending, and hands it to the callback
/// as one [`Batch`]. Batches are written one at a time, in order.
///
/// If the callback fails, the batch is merged back into the pending map *under* any value
/// submitted meanwhile (the newer value wins) and retried at the next interval; size triggers
/// are ignored until a batch succeeds again, so a failing sink is not hammered.
///
/// [`flush`](Self::flush) forces a batch and waits for it; [`close`](Self::close) does the same
/// and stops the flusher. Dropping a `LatestWins` without `close` stops the flusher after one
/// last best-effort batch in the background.
///
/// For fan-out of "only the newest state matters" to readers (rather than to a batch writer),
/// use `tokio::sync::watch` directly: it already is a single-slot latest-wins channel.
pub struct LatestWins<K, V> {
    shared: Arc<Shared<K, V>>,
    done: watch::Receiver<Completed>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Shared<K, V> {
    state: Mutex<State<K, V>>,
    wake: Notify,
    max_pending: usize,
    submitted: AtomicU64,
    coalesced: AtomicU64,
    flushed_batches: AtomicU64,
    flushed_items: AtomicU64,
    failed_batches: AtomicU64,
}

struct State<K, V> {
    pending: HashMap<K, V>,
    /// Generation of the newest explicit flush/close request.
    requested: u64,
    closed: bool,
}

/// Published by the flusher after each batch (empty ones included).
#[derive(Debug, Clone, Default)]
struct Completed {
    /// The newest request generation this batch covered.
    generation: u64,
    error: Option<String>,
}

impl<K, V> LatestWins<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Starts the flusher task on the current tokio runtime (panics outside one, like
    /// `tokio::spawn`). `flush` receives each batch; an `Err` puts the batch back for a retry.
    pub fn spawn<F, Fut, E>(config: LatestWinsConfig, flush: F) -> Self
    where
        F: FnMut(Batch<K, V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { pending: HashMap::new(), requested: 0, closed: false }),
            wake: Notify::new(),
            max_pending: config.max_pending.max(1),
            submitted: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            flushed_batches: AtomicU64::new(0),
            flushed_items: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
        });
        let (done_tx, done) = watch::channel(Completed::default());
        let task = tokio::spawn(run_flusher(Arc::clone(&shared), flush, config.interval, done_tx));
        Self { shared, done, task: Mutex::new(Some(task)) }
    }

    /// Makes `value` the pending value for `key`, replacing any pending one. Never blocks on
    /// the writer. Fails only after [`close`](Self::close), returning the item.
    pub fn submit(&self, key: K, value: V) -> Result<(), Closed<(K, V)>> {
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Err(Closed((key, value)));
        }
        let replaced = state.pending.insert(key, value).is_some();
        let full = state.pending.len() >= self.shared.max_pending;
        drop(state);
        self.shared.submitted.fetch_add(1, Ordering::Relaxed);
        if replaced {
            self.shared.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        if full {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Writes everything submitted before this call and waits for it: `Ok` once the batch that
    /// covers it (or a later one) succeeded, or when nothing was pending.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let generation = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(FlushError::Closed);
            }
            state.requested += 1;
            state.requested
        };
        self.shared.wake.notify_one();
        self.wait_for(generation).await
    }

    /// Flushes what is pending, stops the flusher and waits for it to exit. Returns the outcome
    /// of that final batch; on failure the values stay available through [`drain`](Self::drain).
    /// Later `submit`s and `flush`es fail with [`Closed`]; a second `close` returns
    /// `Err(FlushError::Closed)`.
    pub async fn close(&self) -> Result<(), FlushError> {
        let generation = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(FlushError::Closed);
            }
            state.closed = true;
            state.requested += 1;
            state.requested
        };
        self.shared.wake.notify_one();
        let outcome = self.wait_for(generation).await;
        let task = lock(&self.task).take();
        if let Some(task) = task {
            // The task exits right after publishing the final batch; a JoinError means it
            // panicked, which `wait_for` already reported as `Closed`.
            let _ = task.await;
        }
        outcome
    }

    /// Removes and returns every pending value without calling the callback: for writing them
    /// some other way, or for recovering what a failed final flush left behind after `close`.
    /// A batch the flusher is writing at this moment is not included (if it fails, its values
    /// become pending again).
    pub fn drain(&self) -> Vec<(K, V)> {
        mem::take(&mut lock(&self.shared.state).pending).into_iter().collect()
    }

    /// Number of distinct keys pending.
    pub fn pending(&self) -> usize {
        lock(&self.shared.state).pending.len()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LatestWinsStats {
        let s = &self.shared;
        LatestWinsStats {
            submitted: s.submitted.load(Ordering::Relaxed),
            coalesced: s.coalesced.load(Ordering::Relaxed),
            flushed_batches: s.flushed_batches.load(Ordering::Relaxed),
            flushed_items: s.flushed_items.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
            pending: self.pending(),
        }
    }

    async fn wait_for(&self, generation: u64) -> Result<(), FlushError> {
        let mut done = self.done.clone();
        match done.wait_for(|c| c.generation >= generation).await {
            Ok(completed) => match &completed.error {
                None => Ok(()),
                Some(error) => Err(FlushError::Callback(error.clone())),
            },
            Err(_) => Err(FlushError::Closed),
        }
    }
}

impl<K, V> Drop for LatestWins<K, V> {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
    }
}

impl<K, V> fmt::Debug for LatestWins<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatestWins")
            .field("max_pending", &self.shared.max_pending)
            .field("pending", &lock(&self.shared.state).pending.len())
            .finish_non_exhaustive()
    }
}

async fn run_flusher<K, V, F, Fut, E>(
    shared: Arc<Shared<K, V>>,
    mut flush: F,
    interval: Duration,
    done: watch::Sender<Completed>,
) where
    K: Hash + Eq + Clone,
    V: Clone,
    F: FnMut(Batch<K, V>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: fmt::Display,
{
    let mut next_tick = Instant::now() + interval;
    let mut completed_generation = 0;
    let mut backing_off = false;
    loop {
        // Wait until a batch is due: interval elapsed, explicit flush/close, or size reached.
        let (pending, generation, closing) = loop {
            {
                let mut state = lock(&shared.state);
                let due = state.closed
                    || state.requested > completed_generation
                    || Instant::now() >= next_tick
                    || (!backing_off && state.pending.len() >= shared.max_pending);
                if due {
                    break (mem::take(&mut state.pending), state.requested, state.closed);
                }
            }
            tokio::select! {
                () = sleep_until(next_tick) => {}
                () = shared.wake.notified() => {}
            }
        };
        next_tick = Instant::now() + interval;

        let error = if pending.is_empty() {
            None
        } else {
            let items = pending.len() as u64;
            let batch: Batch<K, V> = Arc::new(pending.into_iter().collect());
            match flush(Arc::clone(&batch)).await {
                Ok(()) => {
                    shared.flushed_batches.fetch_add(1, Ordering::Relaxed);
                    shared.flushed_items.fetch_add(items, Ordering::Relaxed);
                    backing_off = false;
                    None
                }
                Err(error) => {
                    shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                    backing_off = true;
                    // The callback normally dropped its handle; clone only if it kept one.
                    let batch = Arc::try_unwrap(batch).unwrap_or_else(|kept| (*kept).clone());
                    let mut state = lock(&shared.state);
                    for (key, value) in batch {
                        // A value submitted while the batch was being written is newer: keep it.
                        state.pending.entry(key).or_insert(value);
                    }
                    Some(error.to_string())
                }
            }
        };
        completed_generation = generation;
        done.send_replace(Completed { generation, error });
        if closing {
            return;
        }
    }
}
