//! The durable queue between the front door and the processors.
//!
//! Two implementations behind one [`Queue`]:
//! - [`EmbeddedQueue`] (default): batches are rows of the store's `event_queue` table. A writer task inserts all the
//!   batches waiting at that moment in one transaction and then answers every caller (group commit), so a burst of
//!   small posts costs one commit. Bodies are stored LZ4-compressed (JSON shrinks 5–10x): on SQLite every byte
//!   a commit writes is written under the database's one write lock and synced. Bounded by batch count and
//!   bytes, counting every batch until it is acknowledged (pulled ones too), so a processor that lags fills it:
//!   when full, `enqueue` fails with [`QueueError::Full`] and the front door answers 503 with `Retry-After`.
//!   Delivery is at-least-once: `pull` hands out batches after an in-memory cursor (several consumers in one
//!   process get disjoint batches), `ack` deletes them; after a restart (or [`EmbeddedQueue::rewind`]) every
//!   batch not acknowledged is delivered again. One consuming process per database. A consumer writing to the same
//!   store may delete the rows in its own transaction instead and then only [`EmbeddedQueue::acknowledge_deleted`]
//!   them.
//! - [`JetStreamQueue`] (`--nats-url`): a durable JetStream stream (file storage) and a durable pull consumer with
//!   explicit acks; batches with a payload ID are published with `Nats-Msg-Id` so the server drops retries within
//!   its duplicate window. At-least-once: a batch not acknowledged within `ack_wait` is delivered again.
//!
//! Processors must be idempotent per batch (de-duplicate by [`QueuedBatch::payload_id`], or by queue ID).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{DiscardPolicy, StorageType};
use bytes::Bytes;
use futures_util::StreamExt;
use pennant_store::{NewQueueRow, QueueBodyEncoding, Store, StoreError};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

/// A batch as the processors receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedBatch {
    /// Queue position (embedded: row ID; JetStream: stream sequence). Pass it to [`Queue::ack`].
    pub id: u64,
    /// Project key.
    pub project: String,
    /// Environment key.
    pub env: String,
    /// `X-LaunchDarkly-Payload-ID` (the same on an SDK's retry).
    pub payload_id: Option<String>,
    /// When the front door received it (Unix ms).
    pub received_at_ms: i64,
    /// `X-LaunchDarkly-Event-Schema` (0 when the SDK sent none). Parsing does not need it: see [`crate::model`].
    pub schema: u8,
    /// The decompressed JSON array of events; parse it with [`crate::parse_batch`].
    pub body: Bytes,
}

/// A batch to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    /// Project key.
    pub project: String,
    /// Environment key.
    pub env: String,
    /// `X-LaunchDarkly-Payload-ID`.
    pub payload_id: Option<String>,
    /// When the front door received it (Unix ms).
    pub received_at_ms: i64,
    /// `X-LaunchDarkly-Event-Schema` (0 when absent).
    pub schema: u8,
    /// The decompressed JSON array.
    pub body: Bytes,
}

/// What `enqueue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Durably queued at this position.
    Queued(u64),
    /// The queue already had this payload ID (JetStream's duplicate window); nothing was added.
    Duplicate,
}

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue is at capacity; try again later.
    #[error("event queue is full")]
    Full {
        /// Suggested wait.
        retry_after: Duration,
    },
    /// The batch is bigger than the queue can carry in one message.
    #[error("batch of {size} bytes exceeds the queue's limit of {limit} bytes")]
    TooLarge {
        /// Batch size.
        size: usize,
        /// Largest batch.
        limit: usize,
    },
    /// The store failed.
    #[error("event queue store: {0}")]
    Store(#[from] StoreError),
    /// NATS failed.
    #[error("event queue (NATS): {0}")]
    Nats(String),
    /// The queue's writer has stopped (shutting down).
    #[error("event queue is closed")]
    Closed,
}

/// The queue: embedded or JetStream. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Queue {
    /// Rows in the local store.
    Embedded(EmbeddedQueue),
    /// A JetStream stream.
    JetStream(JetStreamQueue),
}

impl Queue {
    /// Queues a batch; returns once it is durable.
    pub async fn enqueue(&self, batch: NewBatch) -> Result<Enqueued, QueueError> {
        match self {
            Queue::Embedded(q) => q.enqueue(batch).await,
            Queue::JetStream(q) => q.enqueue(batch).await,
        }
    }

    /// Up to `max` batches, waiting up to `wait` for the first one; empty when none arrived in time.
    pub async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<QueuedBatch>, QueueError> {
        match self {
            Queue::Embedded(q) => q.pull(max, wait).await,
            Queue::JetStream(q) => q.pull(max, wait).await,
        }
    }

    /// Acknowledges processed batches: they will not be delivered again.
    pub async fn ack(&self, ids: &[u64]) -> Result<(), QueueError> {
        match self {
            Queue::Embedded(q) => q.ack(ids).await,
            Queue::JetStream(q) => q.ack(ids).await,
        }
    }

    /// Batches queued and not acknowledged, when known without a round trip (embedded only).
    pub fn depth_hint(&self) -> Option<u64> {
        match self {
            Queue::Embedded(q) => Some(q.depth()),
            Queue::JetStream(_) => None,
        }
    }

    /// Batches queued and not yet acknowledged.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        match self {
            Queue::Embedded(q) => Ok(q.depth()),
            Queue::JetStream(q) => q.depth().await,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Embedded.

/// Bounds and batching of the embedded queue.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedConfig {
    /// Most batches queued and not acknowledged.
    pub max_batches: u64,
    /// Most bytes (bodies) queued and not acknowledged.
    pub max_bytes: u64,
    /// Most batches inserted in one transaction.
    pub max_group: usize,
    /// `Retry-After` suggested when full.
    pub retry_after: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig { max_batches: 100_000, max_bytes: 1 << 30, max_group: 512, retry_after: Duration::from_secs(2) }
    }
}

type Reply = oneshot::Sender<Result<u64, QueueError>>;

/// The embedded queue (see the module documentation).
#[derive(Debug, Clone)]
pub struct EmbeddedQueue {
    inner: Arc<EmbeddedInner>,
}

#[derive(Debug)]
struct EmbeddedInner {
    store: Store,
    config: EmbeddedConfig,
    writer: mpsc::Sender<(StoredBatch, Reply)>,
    batches: AtomicU64,
    bytes: AtomicU64,
    arrived: Arc<Notify>,
    commits: Arc<AtomicU64>,
    consumer: Mutex<Consumer>,
}

#[derive(Debug, Default)]
struct Consumer {
    /// Highest ID handed out by `pull`.
    cursor: i64,
    /// Handed out and not acknowledged: ID → body size.
    in_flight: HashMap<i64, u64>,
}

impl EmbeddedQueue {
    /// Opens the queue on the store (counting what a previous run left) and starts its writer task; must be called
    /// within a Tokio runtime. The writer stops when the last handle is dropped.
    pub async fn open(store: Store, config: EmbeddedConfig) -> Result<EmbeddedQueue, QueueError> {
        let (batches, bytes) = store.event_queue_stats().await?;
        let (writer, rx) = mpsc::channel(config.max_group.max(1) * 4);
        let arrived = Arc::new(Notify::new());
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_groups(store.clone(), rx, config.max_group.max(1), arrived.clone(), commits.clone()));
        Ok(EmbeddedQueue {
            inner: Arc::new(EmbeddedInner {
                store,
                config,
                writer,
                batches: AtomicU64::new(batches),
                bytes: AtomicU64::new(bytes),
                arrived,
                commits,
                consumer: Mutex::new(Consumer::default()),
            }),
        })
    }

    /// Queues a batch; returns once its transaction committed.
    pub async fn enqueue(&self, batch: NewBatch) -> Result<Enqueued, QueueError> {
        let stored = StoredBatch::encode(batch)?;
        let size = stored.body.len() as u64;
        self.reserve(size)?;
        let (reply, answer) = oneshot::channel();
        let result = match self.inner.writer.send((stored, reply)).await {
            Ok(()) => answer.await.unwrap_or(Err(QueueError::Closed)),
            Err(_) => Err(QueueError::Closed),
        };
        match result {
            Ok(id) => Ok(Enqueued::Queued(id)),
            Err(e) => {
                self.release(1, size);
                Err(e)
            }
        }
    }

    fn reserve(&self, size: u64) -> Result<(), QueueError> {
        let config = &self.inner.config;
        let batches = self.inner.batches.fetch_add(1, Ordering::AcqRel);
        let bytes = self.inner.bytes.fetch_add(size, Ordering::AcqRel);
        if batches >= config.max_batches || bytes.saturating_add(size) > config.max_bytes {
            self.release(1, size);
            return Err(QueueError::Full { retry_after: config.retry_after });
        }
        Ok(())
    }

    fn release(&self, batches: u64, bytes: u64) {
        let _ =
            self.inner.batches.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(batches)));
        let _ = self.inner.bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(bytes)));
    }

    /// Up to `max` batches after the cursor, waiting up to `wait` for the first.
    pub async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<QueuedBatch>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        loop {
            let arrived = self.inner.arrived.notified();
            {
                // Held across the fetch so that concurrent pulls never hand out a batch twice; not while waiting.
                let mut consumer = self.inner.consumer.lock().await;
                let rows = self.inner.store.event_queue_fetch(consumer.cursor, limit).await?;
                if !rows.is_empty() {
                    let mut out = Vec::with_capacity(rows.len());
                    for row in rows {
                        consumer.cursor = consumer.cursor.max(row.id);
                        consumer.in_flight.insert(row.id, row.body.len() as u64);
                        let body = decode_body(row.id, row.body_encoding, row.body);
                        out.push(QueuedBatch {
                            id: u64::try_from(row.id).unwrap_or(0),
                            project: row.project_key,
                            env: row.env_key,
                            payload_id: row.payload_id,
                            received_at_ms: row.received_at,
                            schema: u8::try_from(row.schema_version).unwrap_or(0),
                            body,
                        });
                    }
                    return Ok(out);
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// Deletes acknowledged batches.
    pub async fn ack(&self, ids: &[u64]) -> Result<(), QueueError> {
        let ids: Vec<i64> = ids.iter().filter_map(|id| i64::try_from(*id).ok()).collect();
        let deleted = self.inner.store.event_queue_delete(&ids).await?;
        let mut consumer = self.inner.consumer.lock().await;
        let bytes: u64 = ids.iter().filter_map(|id| consumer.in_flight.remove(id)).sum();
        drop(consumer);
        self.release(deleted, bytes);
        Ok(())
    }

    /// Whether the queue's rows are in `store` (the same opened store), so that a consumer writing there can
    /// delete them in its own transaction (see [`EmbeddedQueue::acknowledge_deleted`]).
    pub fn stored_in(&self, store: &Store) -> bool {
        self.inner.store.same_store(store)
    }

    /// Acknowledges pulled batches whose rows the consumer deleted itself, in the transaction that wrote what
    /// it made of them (the insights processor does): only the queue's bounds are updated.
    pub async fn acknowledge_deleted(&self, ids: &[u64]) {
        let mut consumer = self.inner.consumer.lock().await;
        let (mut batches, mut bytes) = (0, 0);
        for id in ids {
            if let Some(size) = i64::try_from(*id).ok().and_then(|id| consumer.in_flight.remove(&id)) {
                batches += 1;
                bytes += size;
            }
        }
        drop(consumer);
        self.release(batches, bytes);
    }

    /// Delivers every batch not acknowledged again, from the oldest (what a restart does).
    pub async fn rewind(&self) {
        self.inner.consumer.lock().await.cursor = 0;
    }

    /// Batches queued (including those being inserted) and not acknowledged.
    pub fn depth(&self) -> u64 {
        self.inner.batches.load(Ordering::Acquire)
    }

    /// Insert transactions committed since open (each carries one or more batches).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }
}

/// Moves the batches queued in `from`'s `event_queue` into `to`'s, keeping their IDs, oldest first; returns how
/// many moved. Run it before [`EmbeddedQueue::open`] on `to`. `pennant serve` keeps its embedded queue in a SQLite
/// file of its own (see there) and moves what an older version left in the main database. Safe to interrupt: rows
/// are added to `to` (skipping IDs it has) before they are deleted from `from`, so a second run finishes the move
/// without duplicating anything.
pub async fn move_queued_batches(from: &Store, to: &Store) -> Result<u64, QueueError> {
    const ROWS_PER_MOVE: i64 = 256;
    let mut moved = 0;
    loop {
        let rows = from.event_queue_fetch(0, ROWS_PER_MOVE).await?;
        if rows.is_empty() {
            return Ok(moved);
        }
        to.event_queue_import(&rows).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        moved += from.event_queue_delete(&ids).await?;
    }
}

/// Bodies shorter than this are stored as they are: compressing them saves little and costs a copy.
const COMPRESS_FROM_BYTES: usize = 512;

/// Largest body a stored LZ4 header may announce (a corrupt length must not allocate gigabytes). Far above the
/// front door's body limit.
const MAX_DECODED_BYTES: usize = 1 << 30;

/// A batch as the writer stores it: its body encoded.
#[derive(Debug)]
struct StoredBatch {
    batch: NewBatch,
    encoding: QueueBodyEncoding,
    body: Bytes,
}

impl StoredBatch {
    /// Compresses the body (on the caller's task, so that the writer only writes).
    fn encode(mut batch: NewBatch) -> Result<StoredBatch, QueueError> {
        if batch.body.len() > MAX_DECODED_BYTES {
            return Err(QueueError::TooLarge { size: batch.body.len(), limit: MAX_DECODED_BYTES });
        }
        let body = std::mem::take(&mut batch.body);
        if body.len() < COMPRESS_FROM_BYTES {
            return Ok(StoredBatch { batch, encoding: QueueBodyEncoding::Json, body });
        }
        let compressed = lz4_flex::block::compress_prepend_size(&body);
        Ok(StoredBatch { batch, encoding: QueueBodyEncoding::Lz4, body: Bytes::from(compressed) })
    }
}

/// A stored body as the processors want it: the JSON array. A body that does not decompress (a damaged row) is
/// handed out as stored; the processor then counts the batch as unparseable and acknowledges it, instead of the
/// queue retrying it forever.
fn decode_body(id: i64, encoding: QueueBodyEncoding, stored: Vec<u8>) -> Bytes {
    match encoding {
        QueueBodyEncoding::Json => Bytes::from(stored),
        QueueBodyEncoding::Lz4 => {
            let decoded = lz4_flex::block::uncompressed_size(&stored).and_then(|(size, rest)| {
                if size > MAX_DECODED_BYTES {
                    return Err(lz4_flex::block::DecompressError::OutputTooSmall { expected: size, actual: 0 });
                }
                lz4_flex::block::decompress(rest, size)
            });
            match decoded {
                Ok(json) => Bytes::from(json),
                Err(e) => {
                    tracing::warn!(id, error = %e, "a queued batch's body does not decompress");
                    metrics::counter!("pennant_events_queue_undecodable_total").increment(1);
                    Bytes::from(stored)
                }
            }
        }
    }
}

/// The group-commit writer: everything waiting goes into one transaction, then every caller is answered.
async fn write_groups(
    store: Store,
    mut rx: mpsc::Receiver<(StoredBatch, Reply)>,
    max_group: usize,
    arrived: Arc<Notify>,
    commits: Arc<AtomicU64>,
) {
    let mut group = Vec::with_capacity(max_group);
    while rx.recv_many(&mut group, max_group).await > 0 {
        let rows: Vec<NewQueueRow<'_>> = group
            .iter()
            .map(|(b, _)| NewQueueRow {
                project_key: &b.batch.project,
                env_key: &b.batch.env,
                payload_id: b.batch.payload_id.as_deref(),
                received_at: b.batch.received_at_ms,
                schema_version: i32::from(b.batch.schema),
                body_encoding: b.encoding,
                body: &b.body,
            })
            .collect();
        let result = store.event_queue_insert(&rows).await;
        drop(rows);
        match result {
            Ok(ids) => {
                commits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("pennant_events_queue_commits_total").increment(1);
                for ((_, reply), id) in group.drain(..).zip(ids) {
                    let _ = reply.send(Ok(u64::try_from(id).unwrap_or(0)));
                }
                arrived.notify_waiters();
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(error = %message, batches = group.len(), "event queue insert failed");
                for (_, reply) in group.drain(..) {
                    let _ = reply.send(Err(QueueError::Store(StoreError::Corrupt(message.clone()))));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// JetStream.

/// JetStream stream and consumer settings.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// NATS server URL.
    pub url: String,
    /// Stream name (one per deployment).
    pub stream: String,
    /// Subject the stream captures.
    pub subject: String,
    /// Durable consumer name shared by the processors.
    pub consumer: String,
    /// Most messages in the stream (publishing beyond answers "full").
    pub max_messages: i64,
    /// Most bytes in the stream.
    pub max_bytes: i64,
    /// Window within which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// Redelivery after this long without an ack.
    pub ack_wait: Duration,
    /// `Retry-After` suggested when full.
    pub retry_after: Duration,
}

impl JetStreamConfig {
    /// Defaults for a server URL: stream `PENNANT_EVENTS` on subject `pennant.events`.
    pub fn new(url: impl Into<String>) -> JetStreamConfig {
        JetStreamConfig {
            url: url.into(),
            stream: "PENNANT_EVENTS".into(),
            subject: "pennant.events".into(),
            consumer: "pennant-processors".into(),
            max_messages: 1_000_000,
            max_bytes: 8 << 30,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            retry_after: Duration::from_secs(2),
        }
    }
}

/// The JetStream queue (see the module documentation).
#[derive(Debug, Clone)]
pub struct JetStreamQueue {
    inner: Arc<JetStreamInner>,
}

#[derive(Debug)]
struct JetStreamInner {
    client: async_nats::Client,
    js: jetstream::Context,
    config: JetStreamConfig,
    consumer: PullConsumer,
    pending: Mutex<HashMap<u64, jetstream::Message>>,
}

const H_PROJECT: &str = "Pennant-Project";
const H_ENV: &str = "Pennant-Env";
const H_PAYLOAD_ID: &str = "Pennant-Payload-Id";
const H_RECEIVED_AT: &str = "Pennant-Received-At";
const H_SCHEMA: &str = "Pennant-Schema";

fn nats_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Nats(e.to_string())
}

impl JetStreamQueue {
    /// Connects, and creates the stream and the durable consumer if they do not exist.
    pub async fn connect(config: JetStreamConfig) -> Result<JetStreamQueue, QueueError> {
        let client = async_nats::connect(&config.url).await.map_err(nats_err)?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: config.stream.clone(),
                subjects: vec![config.subject.clone()],
                storage: StorageType::File,
                discard: DiscardPolicy::New,
                max_messages: config.max_messages,
                max_bytes: config.max_bytes,
                duplicate_window: config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(nats_err)?;
        let consumer = stream
            .get_or_create_consumer(
                &config.consumer,
                pull::Config {
                    durable_name: Some(config.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_err)?;
        Ok(JetStreamQueue {
            inner: Arc::new(JetStreamInner { client, js, config, consumer, pending: Mutex::new(HashMap::new()) }),
        })
    }

    /// Publishes the batch and waits for the stream's ack. Concurrent callers pipeline their publishes.
    pub async fn enqueue(&self, batch: NewBatch) -> Result<Enqueued, QueueError> {
        let max_payload = self.inner.client.server_info().max_payload;
        let limit = max_payload.saturating_sub(1024);
        if max_payload > 0 && batch.body.len() > limit {
            return Err(QueueError::TooLarge { size: batch.body.len(), limit });
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(H_PROJECT, batch.project.as_str());
        headers.insert(H_ENV, batch.env.as_str());
        headers.insert(H_RECEIVED_AT, batch.received_at_ms.to_string().as_str());
        headers.insert(H_SCHEMA, batch.schema.to_string().as_str());
        if let Some(id) = &batch.payload_id {
            headers.insert(H_PAYLOAD_ID, id.as_str());
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{}/{}/{}", batch.project, batch.env, id).as_str(),
            );
        }
        let ack = self
            .inner
            .js
            .publish_with_headers(self.inner.config.subject.clone(), headers, batch.body)
            .await
            .map_err(|e| self.publish_err(e))?
            .await
            .map_err(|e| self.publish_err(e))?;
        Ok(if ack.duplicate { Enqueued::Duplicate } else { Enqueued::Queued(ack.sequence) })
    }

    fn publish_err(&self, e: impl std::fmt::Display) -> QueueError {
        let message = e.to_string();
        if message.contains("maximum") {
            QueueError::Full { retry_after: self.inner.config.retry_after }
        } else {
            QueueError::Nats(message)
        }
    }

    /// Up to `max` batches from the durable consumer, waiting up to `wait`.
    pub async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<QueuedBatch>, QueueError> {
        let mut messages = self
            .inner
            .consumer
            .fetch()
            .max_messages(max.max(1))
            .expires(wait.max(Duration::from_millis(10)))
            .messages()
            .await
            .map_err(nats_err)?;
        let mut out = Vec::new();
        let mut pending = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(nats_err)?;
            let Ok(info) = message.info() else { continue };
            let sequence = info.stream_sequence;
            match decode(sequence, &message) {
                Some(batch) => {
                    out.push(batch);
                    pending.push((sequence, message));
                }
                None => {
                    // Not ours (no Pennant headers): acknowledge so it is not redelivered forever.
                    tracing::warn!(sequence, "dropping a message without Pennant headers from the event stream");
                    let _ = message.ack().await;
                }
            }
        }
        self.inner.pending.lock().await.extend(pending);
        Ok(out)
    }

    /// Acknowledges batches (waiting for the server to confirm each ack).
    pub async fn ack(&self, ids: &[u64]) -> Result<(), QueueError> {
        let messages: Vec<jetstream::Message> = {
            let mut pending = self.inner.pending.lock().await;
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        let results = futures_util::future::join_all(messages.iter().map(|m| m.double_ack())).await;
        results.into_iter().collect::<Result<Vec<()>, _>>().map_err(nats_err)?;
        Ok(())
    }

    /// Messages in the stream not yet acknowledged by the consumer.
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let info = self.inner.consumer.get_info().await.map_err(nats_err)?;
        Ok(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0))
    }

    /// Deletes the stream (tests, and tearing a deployment down).
    pub async fn delete_stream(&self) -> Result<(), QueueError> {
        self.inner.js.delete_stream(&self.inner.config.stream).await.map_err(nats_err)?;
        Ok(())
    }
}

fn decode(sequence: u64, message: &jetstream::Message) -> Option<QueuedBatch> {
    let headers = message.headers.as_ref()?;
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    Some(QueuedBatch {
        id: sequence,
        project: get(H_PROJECT)?,
        env: get(H_ENV)?,
        payload_id: get(H_PAYLOAD_ID),
        received_at_ms: get(H_RECEIVED_AT)?.parse().ok()?,
        schema: get(H_SCHEMA).and_then(|s| s.parse().ok()).unwrap_or(0),
        body: message.payload.clone(),
    })
}
