//! The processor loop: pull queued batches, aggregate many in memory, write them with their idempotence markers in
//! one transaction, then acknowledge them to the queue.
//!
//! Exactly-once counting over an at-least-once queue: a batch is acknowledged only after the transaction holding
//! its counts and its marker committed. A crash before the commit leaves neither (the queue redelivers it and it is
//! counted then); a crash between the commit and the acknowledgement leaves both (the queue redelivers it, its
//! marker is found and it is skipped).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use pennant_store::{BatchInsights, InsightsWritten, Retention, Store, StoreError, batch_marker};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::convert::add_events;

/// A queue's error, whatever the queue.
pub type QueueError = Box<dyn std::error::Error + Send + Sync>;

/// One queued batch as the processor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputBatch<Id> {
    /// The queue's ID of the batch (what `ack` takes).
    pub id: Id,
    /// Project key.
    pub project: String,
    /// Environment key.
    pub env: String,
    /// `X-LaunchDarkly-Payload-ID`, if the SDK sent one.
    pub payload_id: Option<String>,
    /// When the front door received it (Unix ms).
    pub received_at_ms: i64,
    /// The JSON array of events, decompressed.
    pub body: Bytes,
}

impl<Id: std::fmt::Display> InputBatch<Id> {
    /// The idempotence marker (payload ID within the environment, else the queue ID).
    pub fn marker(&self) -> String {
        batch_marker(&self.project, &self.env, self.payload_id.as_deref(), &self.id.to_string())
    }
}

/// A durable queue the processor consumes: at-least-once, an unacknowledged batch is delivered again (after a
/// restart at the latest).
pub trait BatchQueue: Send + Sync + 'static {
    /// The queue's batch ID.
    type Id: Clone + std::fmt::Display + Send + Sync + 'static;

    /// Up to `max` batches, waiting up to `wait` for the first; empty when none came.
    fn pull(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<InputBatch<Self::Id>>, QueueError>> + Send;

    /// Marks batches done; they are not delivered again.
    fn ack(&self, ids: Vec<Self::Id>) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// How the processor batches its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessorOptions {
    /// Most queued batches written in one transaction.
    pub max_batches: usize,
    /// Longest time the first batch pulled waits for others before the write (write coalescing).
    pub flush_interval: Duration,
    /// How long one pull waits when idle (the loop checks for shutdown between pulls).
    pub idle_wait: Duration,
    /// Longest wait between retries of a failed write.
    pub max_backoff: Duration,
}

impl Default for ProcessorOptions {
    /// 100 batches or 200 ms, whichever comes first. On SQLite the front door's queue inserts wait for the
    /// processor's transaction (one writer), so its size bounds the acknowledgement latency: 1,000 batches of 100
    /// events held the lock for seconds under load; 100 keep it to a few hundred ms at the same throughput.
    fn default() -> Self {
        ProcessorOptions {
            max_batches: 100,
            flush_interval: Duration::from_millis(200),
            idle_wait: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What [`Processor::process`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessReport {
    /// What the store wrote.
    pub written: InsightsWritten,
    /// Events used.
    pub events: usize,
    /// Events the parser skipped (not usable).
    pub skipped_events: usize,
    /// Batches whose body did not parse (marked processed, nothing counted).
    pub unparseable: usize,
    /// Index/identify contexts that could not be read.
    pub bad_contexts: usize,
}

/// Turns queued batches into insights.
#[derive(Debug, Clone)]
pub struct Processor {
    store: Store,
    options: ProcessorOptions,
}

impl Processor {
    /// A processor writing to `store`.
    pub fn new(store: Store, options: ProcessorOptions) -> Processor {
        Processor { store, options: ProcessorOptions { max_batches: options.max_batches.max(1), ..options } }
    }

    /// Parses, aggregates and writes batches in one transaction (batches processed before are skipped). Does not
    /// acknowledge anything.
    pub async fn process<Id: std::fmt::Display>(
        &self,
        batches: &[InputBatch<Id>],
    ) -> Result<ProcessReport, StoreError> {
        let mut report = ProcessReport::default();
        let mut insights = Vec::with_capacity(batches.len());
        for b in batches {
            let mut out = BatchInsights::new(b.marker(), &b.project, &b.env, b.received_at_ms);
            match pennant_events::parse_batch(&b.body) {
                Ok(parsed) => {
                    let stats = add_events(&mut out, &parsed);
                    report.events += stats.events;
                    report.bad_contexts += stats.bad_contexts;
                    report.skipped_events += parsed.skipped;
                }
                Err(e) => {
                    // The front door validated it; a body that does not parse now never will: mark it done.
                    tracing::warn!(project = %b.project, env = %b.env, error = %e, "queued event batch does not parse");
                    report.unparseable += 1;
                }
            }
            insights.push(out);
        }
        report.written = self.store.write_insights(&insights).await?;
        metrics::counter!("pennant_insights_batches_total", "result" => "written")
            .increment(u64::try_from(report.written.batches).unwrap_or(0));
        metrics::counter!("pennant_insights_batches_total", "result" => "duplicate")
            .increment(u64::try_from(report.written.duplicates).unwrap_or(0));
        metrics::counter!("pennant_insights_batches_total", "result" => "unparseable")
            .increment(u64::try_from(report.unparseable).unwrap_or(0));
        metrics::counter!("pennant_insights_evaluations_total")
            .increment(u64::try_from(report.written.evaluations).unwrap_or(0));
        metrics::counter!("pennant_insights_events_skipped_total")
            .increment(u64::try_from(report.skipped_events + report.bad_contexts).unwrap_or(0));
        Ok(report)
    }

    /// Consumes `queue` until `shutdown` becomes `true` (or its sender is dropped); what was pulled is written
    /// and acknowledged before it returns, unless the store keeps failing (then it is left unacknowledged, to be
    /// delivered again).
    pub async fn run<Q: BatchQueue>(self, queue: Q, mut shutdown: watch::Receiver<bool>) {
        tracing::info!("insights processor started");
        loop {
            let batches = self.gather(&queue, &mut shutdown).await;
            if batches.is_empty() {
                if stopping(&shutdown) {
                    break;
                }
                continue;
            }
            if !self.write_until_done(&batches, &mut shutdown).await {
                break;
            }
            let ids: Vec<Q::Id> = batches.into_iter().map(|b| b.id).collect();
            if let Err(e) = queue.ack(ids).await {
                // They are delivered again and skipped as duplicates.
                tracing::warn!(error = %e, "acknowledging processed event batches failed");
            }
        }
        tracing::info!("insights processor stopped");
    }

    async fn gather<Q: BatchQueue>(&self, queue: &Q, shutdown: &mut watch::Receiver<bool>) -> Vec<InputBatch<Q::Id>> {
        let mut pending: Vec<InputBatch<Q::Id>> = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            if stopping(shutdown) {
                return pending;
            }
            let room = self.options.max_batches.saturating_sub(pending.len());
            if room == 0 {
                return pending;
            }
            let wait = match deadline {
                None => self.options.idle_wait,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return pending;
                    }
                    left
                }
            };
            tokio::select! {
                pulled = queue.pull(room, wait) => match pulled {
                    Ok(got) if got.is_empty() => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            return pending;
                        }
                    }
                    Ok(got) => {
                        backoff = Duration::from_millis(50);
                        deadline.get_or_insert_with(|| Instant::now() + self.options.flush_interval);
                        pending.extend(got);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pulling event batches failed");
                        metrics::counter!("pennant_insights_queue_errors_total").increment(1);
                        if !pending.is_empty() {
                            return pending;
                        }
                        pause(backoff, shutdown).await;
                        backoff = (backoff * 2).min(self.options.max_backoff);
                    }
                },
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Writes until it succeeds (true) or shutdown comes first (false).
    async fn write_until_done<Id: std::fmt::Display>(
        &self,
        batches: &[InputBatch<Id>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.process(batches).await {
                Ok(_) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, batches = batches.len(), "writing insights failed; retrying");
                    metrics::counter!("pennant_insights_write_errors_total").increment(1);
                    if stopping(shutdown) {
                        return false;
                    }
                    pause(backoff, shutdown).await;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
            }
        }
    }
}

fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = shutdown.changed() => {}
    }
}

/// Starts a processor on `queue`; see [`Processor::run`].
pub fn spawn_processor<Q: BatchQueue>(
    store: Store,
    queue: Q,
    options: ProcessorOptions,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(Processor::new(store, options).run(queue, shutdown))
}

/// Starts the insights maintenance job: partitions ahead and retention ([`Store::insights_maintenance`]), now and
/// then every `interval`, until `shutdown`.
pub fn spawn_maintenance(
    store: Store,
    retention: Retention,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match store.insights_maintenance(pennant_store::now_ms(), &retention).await {
                Ok(r) => {
                    if !r.partitions_created.is_empty() || !r.partitions_dropped.is_empty() || r.rows_deleted > 0 {
                        tracing::info!(created = ?r.partitions_created, dropped = ?r.partitions_dropped,
                            rows_deleted = r.rows_deleted, "insights maintenance");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "insights maintenance failed"),
            }
            if stopping(&shutdown) {
                return;
            }
            pause(interval, &mut shutdown).await;
            if stopping(&shutdown) {
                return;
            }
        }
    })
}

/// A batch's position in a [`pennant_events::Queue`], tagged with the queue's namespace so that markers of two
/// queues (the embedded one and a JetStream stream) can never collide: shown as `ns:seq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueId {
    /// The queue's namespace.
    pub ns: std::sync::Arc<str>,
    /// Position in the queue.
    pub seq: u64,
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.ns, self.seq)
    }
}

/// The front door's queue as a [`BatchQueue`].
#[derive(Debug, Clone)]
pub struct EventQueue {
    queue: pennant_events::Queue,
    ns: std::sync::Arc<str>,
}

impl EventQueue {
    /// Wraps `queue`; `namespace` names it in idempotence markers (for example `embedded`, or `js:` and the
    /// stream name). Keep it stable across restarts.
    pub fn new(queue: pennant_events::Queue, namespace: &str) -> EventQueue {
        EventQueue { queue, ns: namespace.into() }
    }
}

impl BatchQueue for EventQueue {
    type Id = QueueId;

    async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<InputBatch<QueueId>>, QueueError> {
        let got = self.queue.pull(max, wait).await?;
        Ok(got
            .into_iter()
            .map(|b| InputBatch {
                id: QueueId { ns: self.ns.clone(), seq: b.id },
                project: b.project,
                env: b.env,
                payload_id: b.payload_id,
                received_at_ms: b.received_at_ms,
                body: b.body,
            })
            .collect())
    }

    async fn ack(&self, ids: Vec<QueueId>) -> Result<(), QueueError> {
        let seqs: Vec<u64> = ids.into_iter().map(|i| i.seq).collect();
        Ok(self.queue.ack(&seqs).await?)
    }
}
