//! The processor loop: pull queued batches, aggregate many in memory, write them with their idempotence markers in
//! one transaction, then acknowledge them to the queue.
//!
//! Exactly-once counting over an at-least-once queue: a batch is acknowledged only after the transaction holding
//! its counts and its marker committed. A crash before the commit leaves neither (the queue redelivers it and it is
//! counted then); a crash between the commit and the acknowledgement leaves both (the queue redelivers it, its
//! marker is found and it is skipped). On the embedded queue in the same store the batch's queue row is deleted in
//! that transaction too, so there is no such window and no acknowledgement transaction (on SQLite every commit
//! syncs the log while holding the one write lock the front door's inserts wait for).
//!
//! Rounds overlap: the next round is pulled (a read) while the current one is written and acknowledged, and each
//! transaction's statements are built before it begins (`Store::write_insights`), so the write lock is held only
//! while they run.
//!
//! Contexts: most index events repeat a context the processor wrote moments ago, unchanged. The processor remembers
//! the contexts it wrote (a bounded cache: a hash of project, environment, kind and key → a hash of what it wrote
//! and the `last_seen` it wrote) and does not write a context again while it is unchanged and its last write is less
//! than [`ProcessorOptions::context_refresh`] old (by the events' own times). So an indexed context's `last_seen`
//! has that granularity: it can lag the newest sighting by up to the window (60 s by default).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pennant_store::{BatchInsights, ContextUpsert, InsightsWritten, Retention, Store, StoreError, batch_marker};
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

    /// The row of `store`'s embedded event queue (`event_queue`) that holds this batch, when the queue keeps its
    /// batches there. The processor then deletes the row in the transaction that writes the batch's insights,
    /// and acknowledges it with [`BatchQueue::acknowledge_deleted`] instead of [`BatchQueue::ack`]. `None` (the
    /// default): the queue is elsewhere.
    fn queue_row(&self, store: &Store, id: &Self::Id) -> Option<i64> {
        let _ = (store, id);
        None
    }

    /// Acknowledges batches whose rows [`BatchQueue::queue_row`] gave and the processor deleted.
    fn acknowledge_deleted(&self, ids: Vec<Self::Id>) -> impl Future<Output = ()> + Send {
        let _ = ids;
        std::future::ready(())
    }
}

/// How the processor batches its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessorOptions {
    /// Most queued batches taken in one round (written, then acknowledged together).
    pub max_batches: usize,
    /// Most events written in one transaction: a round's batches are written in several transactions of at most
    /// this many events (a batch with more goes alone). Larger transactions mean fewer commits (each syncs the
    /// log); on SQLite they also hold the database's one write lock longer, which other writers of that database
    /// wait for (`pennant serve` keeps the embedded queue in a file of its own, so SDK posts do not).
    pub max_events: usize,
    /// Longest time the first batch pulled waits for others before the write (write coalescing).
    pub flush_interval: Duration,
    /// How long one pull waits when idle (the loop checks for shutdown between pulls).
    pub idle_wait: Duration,
    /// Longest wait between retries of a failed write.
    pub max_backoff: Duration,
    /// A context this processor wrote less than this long before (by the events' own times) with the same name,
    /// attributes and redactions is not written again. An indexed context's `last_seen` therefore moves in steps
    /// of about this length (it can lag the newest sighting by up to this much); a changed context is written at
    /// once. Zero writes every sighting. With several processors on one database (PostgreSQL), a context whose
    /// attributes alternate between sightings handled by different processors can keep an older version for up
    /// to this long.
    pub context_refresh: Duration,
    /// How many recently written contexts are remembered for [`Self::context_refresh`] (a bounded cache of a few
    /// tens of bytes an entry; the least useful are forgotten first, and a forgotten context is simply written
    /// again). Zero remembers none.
    pub context_cache: usize,
    /// Pull the next round while the current one is written and acknowledged (at most one round waits in
    /// memory), instead of after it.
    pub prefetch: bool,
}

impl Default for ProcessorOptions {
    /// 100 batches or 200 ms, whichever comes first, written 10,000 events a transaction (100 SDK flushes of 100
    /// events: one commit per round). Measured with `scripts/bench-events --rate 200000` (two processors, queue in
    /// its own file): with 2,000 events a transaction the processors wrote ~150 k events/s, with 10,000 they kept
    /// up with the 200 k. Contexts: refreshed at most once a minute while unchanged, 250,000 remembered.
    fn default() -> Self {
        ProcessorOptions {
            max_batches: 100,
            max_events: 10_000,
            flush_interval: Duration::from_millis(200),
            idle_wait: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            context_refresh: Duration::from_secs(60),
            context_cache: 250_000,
            prefetch: true,
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
    /// Contexts not written because this processor wrote them unchanged within
    /// [`ProcessorOptions::context_refresh`].
    pub contexts_skipped: usize,
    /// Write transactions committed (see [`ProcessorOptions::max_events`]).
    pub transactions: usize,
}

/// The contexts a processor wrote recently (see [`ProcessorOptions::context_refresh`]).
#[derive(Debug)]
struct RecentContexts {
    /// Hash of (project, environment, kind, key) → (hash of the context as written, the `last_seen` written).
    written: quick_cache::sync::Cache<u64, (u64, i64)>,
    /// Hashes the identity; `contents` hashes identity and contents, with another seed. Two contexts are taken
    /// for one only if both hashes agree, so a collision of one of them costs at most an extra write.
    identity: foldhash::quality::RandomState,
    contents: foldhash::quality::RandomState,
    window_ms: i64,
}

impl RecentContexts {
    fn new(options: &ProcessorOptions) -> Option<RecentContexts> {
        let window_ms = i64::try_from(options.context_refresh.as_millis()).unwrap_or(i64::MAX);
        (window_ms > 0 && options.context_cache > 0).then(|| RecentContexts {
            written: quick_cache::sync::Cache::new(options.context_cache),
            identity: foldhash::quality::RandomState::default(),
            contents: foldhash::quality::RandomState::default(),
            window_ms,
        })
    }

    /// (identity hash, contents hash) of a context of an environment.
    fn hashes(&self, project: &str, env: &str, c: &ContextUpsert) -> (u64, u64) {
        let identity = (project, env, c.kind.as_str(), c.key.as_str());
        (self.identity.hash_one(identity), self.contents.hash_one((identity, &c.name, &c.attributes, &c.redacted)))
    }

    /// Whether the context was written with these contents at most the window before `seen_at` (or after it).
    fn written_recently(&self, identity: u64, contents: u64, seen_at: i64) -> bool {
        matches!(self.written.get(&identity),
            Some((h, last_seen)) if h == contents && seen_at < last_seen.saturating_add(self.window_ms))
    }

    /// Remembers a write, unless a newer one is remembered (the store keeps the newest sighting too).
    fn remember(&self, identity: u64, contents: u64, last_seen: i64) {
        if self.written.get(&identity).is_none_or(|(_, newer)| newer <= last_seen) {
            self.written.insert(identity, (contents, last_seen));
        }
    }
}

/// What parsing a queued batch needs, owned (it is parsed on a blocking thread).
struct ParseInput {
    queue_row: Option<i64>,
    marker: String,
    project: String,
    env: String,
    received_at_ms: i64,
    body: Bytes,
}

/// A parsed batch.
struct Parsed {
    queue_row: Option<i64>,
    insights: BatchInsights,
    events: usize,
    bad_contexts: usize,
    skipped_events: usize,
    unparseable: bool,
}

impl ParseInput {
    fn new<Id: std::fmt::Display>(b: &InputBatch<Id>, queue_row: Option<i64>) -> ParseInput {
        ParseInput {
            queue_row,
            marker: b.marker(),
            project: b.project.clone(),
            env: b.env.clone(),
            received_at_ms: b.received_at_ms,
            body: b.body.clone(),
        }
    }

    fn parse(self) -> Parsed {
        let mut insights = BatchInsights::new(self.marker, &self.project, &self.env, self.received_at_ms);
        match pennant_events::parse_batch(&self.body) {
            Ok(parsed) => {
                let stats = add_events(&mut insights, &parsed);
                Parsed {
                    queue_row: self.queue_row,
                    insights,
                    events: stats.events,
                    bad_contexts: stats.bad_contexts,
                    skipped_events: parsed.skipped,
                    unparseable: false,
                }
            }
            Err(e) => {
                // The front door validated it; a body that does not parse now never will: mark it done.
                tracing::warn!(project = %self.project, env = %self.env, error = %e,
                    "queued event batch does not parse");
                Parsed {
                    queue_row: self.queue_row,
                    insights,
                    events: 0,
                    bad_contexts: 0,
                    skipped_events: 0,
                    unparseable: true,
                }
            }
        }
    }
}

/// Batches gathered for one transaction.
#[derive(Default)]
struct Group {
    insights: Vec<BatchInsights>,
    /// The embedded queue's rows of these batches, deleted in their transaction.
    queue_rows: Vec<i64>,
    events: usize,
}

/// Turns queued batches into insights.
#[derive(Debug, Clone)]
pub struct Processor {
    store: Store,
    options: ProcessorOptions,
    recent: Option<Arc<RecentContexts>>,
}

impl Processor {
    /// A processor writing to `store`.
    pub fn new(store: Store, options: ProcessorOptions) -> Processor {
        let options = ProcessorOptions {
            max_batches: options.max_batches.max(1),
            max_events: options.max_events.max(1),
            ..options
        };
        Processor { store, recent: RecentContexts::new(&options).map(Arc::new), options }
    }

    /// Parses and aggregates batches and writes them, in transactions of at most
    /// [`ProcessorOptions::max_events`] events (batches processed before are skipped). Does not acknowledge
    /// anything. On an error the transactions committed before it stay; processing the same batches again skips
    /// what they wrote.
    ///
    /// Parsing runs on a blocking thread, batch after batch, while the batches parsed before it are written: on
    /// SQLite the write mostly waits for the database's own thread, and the two overlap on two cores.
    pub async fn process<Id: std::fmt::Display>(
        &self,
        batches: &[InputBatch<Id>],
    ) -> Result<ProcessReport, StoreError> {
        self.process_dequeuing(batches, |_| None).await
    }

    /// [`Processor::process`], deleting each batch's row of the embedded queue (`queue_row`) in the transaction
    /// that writes its insights.
    async fn process_dequeuing<Id: std::fmt::Display>(
        &self,
        batches: &[InputBatch<Id>],
        queue_row: impl Fn(&InputBatch<Id>) -> Option<i64>,
    ) -> Result<ProcessReport, StoreError> {
        let mut report = ProcessReport::default();
        let inputs: Vec<ParseInput> = batches.iter().map(|b| ParseInput::new(b, queue_row(b))).collect();
        let (parsed_tx, mut parsed_rx) = tokio::sync::mpsc::unbounded_channel();
        let parser = tokio::task::spawn_blocking(move || {
            for input in inputs {
                if parsed_tx.send(input.parse()).is_err() {
                    return;
                }
            }
        });
        let mut group = Group::default();
        let mut received = 0;
        while let Some(parsed) = parsed_rx.recv().await {
            received += 1;
            self.add(&mut group, parsed, &mut report).await?;
        }
        if let Err(e) = parser.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        // A parser cancelled before it started (the runtime shutting down) left these.
        for b in batches.get(received..).unwrap_or_default() {
            self.add(&mut group, ParseInput::new(b, queue_row(b)).parse(), &mut report).await?;
        }
        if !group.insights.is_empty() {
            self.write(&mut group, &mut report).await?;
        }
        metrics::counter!("pennant_insights_batches_total", "result" => "unparseable")
            .increment(u64::try_from(report.unparseable).unwrap_or(0));
        metrics::counter!("pennant_insights_events_skipped_total")
            .increment(u64::try_from(report.skipped_events + report.bad_contexts).unwrap_or(0));
        Ok(report)
    }

    /// Adds a parsed batch to the transaction being gathered, first writing that transaction if the batch would
    /// take it past [`ProcessorOptions::max_events`].
    async fn add(&self, group: &mut Group, parsed: Parsed, report: &mut ProcessReport) -> Result<(), StoreError> {
        report.events += parsed.events;
        report.bad_contexts += parsed.bad_contexts;
        report.skipped_events += parsed.skipped_events;
        report.unparseable += usize::from(parsed.unparseable);
        if !group.insights.is_empty() && group.events + parsed.events > self.options.max_events {
            self.write(group, report).await?;
            *group = Group::default();
        }
        group.events += parsed.events;
        group.insights.push(parsed.insights);
        group.queue_rows.extend(parsed.queue_row);
        Ok(())
    }

    /// Writes batches' insights in one transaction, leaving out the contexts written recently and unchanged, and
    /// remembers the contexts written once committed.
    async fn write(&self, group: &mut Group, report: &mut ProcessReport) -> Result<(), StoreError> {
        let insights = &mut group.insights;
        let mut writing: HashMap<u64, (u64, i64), foldhash::fast::RandomState> = HashMap::default();
        let mut skipped = 0;
        if let Some(recent) = &self.recent {
            for out in insights.iter_mut() {
                let (project, env) = (out.project.as_str(), out.env.as_str());
                out.contexts.retain(|_, c| {
                    let (identity, contents) = recent.hashes(project, env, c);
                    if recent.written_recently(identity, contents, c.seen_at) {
                        skipped += 1;
                        return false;
                    }
                    // The store writes the newest sighting of a context (the later one of equals).
                    match writing.entry(identity) {
                        Entry::Occupied(mut e) if e.get().1 <= c.seen_at => {
                            e.insert((contents, c.seen_at));
                        }
                        Entry::Occupied(_) => {}
                        Entry::Vacant(e) => {
                            e.insert((contents, c.seen_at));
                        }
                    }
                    true
                });
            }
        }
        let written = self.store.write_insights_dequeuing(insights, &group.queue_rows).await?;
        // A batch processed before wrote its contexts then, maybe older versions than the ones stored now:
        // remember nothing from such a transaction.
        if let Some(recent) = self.recent.as_ref().filter(|_| written.duplicates == 0) {
            for (identity, (contents, last_seen)) in writing {
                recent.remember(identity, contents, last_seen);
            }
        }
        let total = &mut report.written;
        total.batches += written.batches;
        total.duplicates += written.duplicates;
        total.count_rows += written.count_rows;
        total.evaluations += written.evaluations;
        total.contexts += written.contexts;
        total.custom_events += written.custom_events;
        report.contexts_skipped += skipped;
        report.transactions += 1;
        metrics::counter!("pennant_insights_batches_total", "result" => "written")
            .increment(u64::try_from(written.batches).unwrap_or(0));
        metrics::counter!("pennant_insights_batches_total", "result" => "duplicate")
            .increment(u64::try_from(written.duplicates).unwrap_or(0));
        metrics::counter!("pennant_insights_evaluations_total")
            .increment(u64::try_from(written.evaluations).unwrap_or(0));
        metrics::counter!("pennant_insights_contexts_skipped_total").increment(u64::try_from(skipped).unwrap_or(0));
        Ok(())
    }

    /// Consumes `queue` until `shutdown` becomes `true` (or its sender is dropped); what was pulled is written
    /// and acknowledged before it returns, unless the store keeps failing (then it is left unacknowledged, to be
    /// delivered again).
    ///
    /// With [`ProcessorOptions::prefetch`] the next round is pulled while the current one is written and
    /// acknowledged: pulling only reads the queue (on SQLite a reader, which neither waits for the writer nor
    /// blocks it), so a busy processor has its next round in hand when a write ends. At most one round waits in
    /// memory.
    pub async fn run<Q: BatchQueue>(self, queue: Q, shutdown: watch::Receiver<bool>) {
        tracing::info!("insights processor started");
        let mut gather_shutdown = shutdown.clone();
        let mut write_shutdown = shutdown.clone();
        let mut batches = self.gather(&queue, &mut gather_shutdown).await;
        loop {
            if batches.is_empty() {
                if stopping(&shutdown) {
                    break;
                }
                batches = self.gather(&queue, &mut gather_shutdown).await;
                continue;
            }
            if !self.options.prefetch {
                if !self.write_and_ack(&queue, batches, &mut write_shutdown).await {
                    break;
                }
                batches = Vec::new();
                continue;
            }
            let (done, next) = tokio::join!(
                self.write_and_ack(&queue, batches, &mut write_shutdown),
                self.gather(&queue, &mut gather_shutdown)
            );
            if !done {
                // `next` stays unacknowledged: delivered again after a restart.
                break;
            }
            batches = next;
        }
        tracing::info!("insights processor stopped");
    }

    /// Writes a round until it succeeds, then acknowledges it; false when shutdown came first.
    async fn write_and_ack<Q: BatchQueue>(
        &self,
        queue: &Q,
        batches: Vec<InputBatch<Q::Id>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        if !self.write_until_done(queue, &batches, shutdown).await {
            return false;
        }
        let (deleted, ids): (Vec<Q::Id>, Vec<Q::Id>) =
            batches.into_iter().map(|b| b.id).partition(|id| queue.queue_row(&self.store, id).is_some());
        if !deleted.is_empty() {
            queue.acknowledge_deleted(deleted).await;
        }
        if !ids.is_empty()
            && let Err(e) = queue.ack(ids).await
        {
            // They are delivered again and skipped as duplicates.
            tracing::warn!(error = %e, "acknowledging processed event batches failed");
        }
        true
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
    async fn write_until_done<Q: BatchQueue>(
        &self,
        queue: &Q,
        batches: &[InputBatch<Q::Id>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.process_dequeuing(batches, |b| queue.queue_row(&self.store, &b.id)).await {
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

/// Starts `count` processors on `queue` (at least one; see [`Processor::run`]). They take disjoint batches and share
/// one cache of recently written contexts, so that one parses and aggregates while another's transaction runs
/// without either writing a context the other just wrote.
pub fn spawn_processors<Q: BatchQueue + Clone>(
    store: Store,
    queue: Q,
    options: ProcessorOptions,
    count: usize,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let processor = Processor::new(store, options);
    (0..count.max(1)).map(|_| tokio::spawn(processor.clone().run(queue.clone(), shutdown.clone()))).collect()
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

    fn queue_row(&self, store: &Store, id: &QueueId) -> Option<i64> {
        match &self.queue {
            pennant_events::Queue::Embedded(q) if q.stored_in(store) => i64::try_from(id.seq).ok(),
            _ => None,
        }
    }

    async fn acknowledge_deleted(&self, ids: Vec<QueueId>) {
        if let pennant_events::Queue::Embedded(q) = &self.queue {
            let seqs: Vec<u64> = ids.into_iter().map(|i| i.seq).collect();
            q.acknowledge_deleted(&seqs).await;
        }
    }
}
