//! Per-environment fan-out: a broadcast channel of pre-encoded SSE frames, and the environment's SDK payload
//! built once per change however many connections ask for it at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pennant_patterns::{Codec, LayeredCache, RemoteLayer, shared_error};
use sha1::{Digest, Sha1};
use tokio::sync::{OnceCell, broadcast};

use crate::fanout::Fanout;
use crate::{Source, StreamError, StreamKind};

/// An environment, by project and environment key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvId {
    /// Project key.
    pub project: String,
    /// Environment key.
    pub env: String,
}

/// SDK payloads by environment and data version ([`pennant_store::EnvDataVersion`]): an in-process layer, then a
/// layer shared by every streaming node (Redis), then the database. A node that starts, or sees a change, finds
/// the payload another node built already, instead of each node reading every flag of the environment. Hits
/// and misses per layer are exported as `pennant_cache_*{cache="sdk_payloads"}`.
pub type PayloadCache = LayeredCache<String, Bytes>;

/// A payload cache over a shared layer (such as [`pennant_patterns::RedisLayer`]).
pub fn payload_cache(shared: Arc<dyn RemoteLayer>) -> PayloadCache {
    // Entries are immutable (a new version is a new key); the in-process layer only needs the current versions.
    PayloadCache::builder("sdk_payloads").l1_capacity(1024).remote(shared, Codec::bytes()).build()
}

/// An environment's whole SDK data set, encoded once and shared by every request and connection.
#[derive(Debug)]
pub struct Snapshot {
    /// `{"flags": {...}, "segments": {...}}`, the `/sdk/latest-all` body.
    pub payload: Bytes,
    /// `{key: flag}`, the `/sdk/flags` body.
    pub flags: Bytes,
    /// Strong ETag of `payload`.
    pub etag: String,
    /// The `put` frame a new `/all` connection starts with.
    pub put_frame: Bytes,
    /// The `put` frame a new old-style `/flags` connection starts with (flags only).
    pub flags_put_frame: Bytes,
    /// The data, for single-item lookups and evaluation.
    pub data: pennant_eval::MemoryStore,
}

/// One environment's channel and current snapshot.
#[derive(Debug)]
pub struct EnvChannel {
    id: EnvId,
    frames: broadcast::Sender<Bytes>,
    // The old `/flags` stream's frames (other paths, no segments); nothing is encoded while nobody listens.
    flag_frames: broadcast::Sender<Bytes>,
    // Replaced (not cleared) on every change, so a build in progress for the old data cannot be mistaken for
    // the new one; concurrent askers share one build through the OnceCell.
    snapshot: Mutex<Arc<OnceCell<Arc<Snapshot>>>>,
    payloads: Option<PayloadCache>,
    // Writers of the lean connections (see `fanout`), started with the first one of each kind.
    lean_all: OnceLock<Arc<Fanout>>,
    lean_flags: OnceLock<Arc<Fanout>>,
    capacity: usize,
}

impl EnvChannel {
    /// Frames published after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.frames.subscribe()
    }

    /// Frames of the old `/flags` stream published after this call.
    pub fn subscribe_flags(&self) -> broadcast::Receiver<Bytes> {
        self.flag_frames.subscribe()
    }

    /// Sends a frame to every `/all` connection of the environment.
    pub fn publish(&self, frame: Bytes) {
        // No receivers is not an error: nobody is connected.
        let _ = self.frames.send(frame);
    }

    /// Sends a frame to every old-style `/flags` connection of the environment.
    pub fn publish_flags(&self, frame: Bytes) {
        let _ = self.flag_frames.send(frame);
    }

    /// Sends an SSE comment to every connection, so that idle streams stay open through proxies and SDKs can tell
    /// a live connection from a dead one.
    pub fn heartbeat(&self) {
        let beat = Bytes::from_static(b":\n\n");
        self.publish(beat.clone());
        self.publish_flags(beat);
    }

    /// How many `/all` connections are listening.
    pub fn connections(&self) -> usize {
        Self::listening(&self.frames, &self.lean_all)
    }

    /// How many old-style `/flags` connections are listening.
    pub fn flag_connections(&self) -> usize {
        Self::listening(&self.flag_frames, &self.lean_flags)
    }

    fn listening(frames: &broadcast::Sender<Bytes>, lean: &OnceLock<Arc<Fanout>>) -> usize {
        match lean.get() {
            // The lean fan-out's receiver stands for all its connections.
            Some(fanout) => frames.receiver_count().saturating_sub(fanout.receivers()) + fanout.connections(),
            None => frames.receiver_count(),
        }
    }

    /// The fan-out to the lean connections of a stream kind, started on first use.
    pub(crate) fn lean_fanout(&self, kind: StreamKind) -> Arc<Fanout> {
        let (cell, frames) = match kind {
            StreamKind::All => (&self.lean_all, &self.frames),
            StreamKind::Flags => (&self.lean_flags, &self.flag_frames),
        };
        // A writer per runtime worker: a large environment's connections are written on every core at once.
        let workers = tokio::runtime::Handle::try_current().map_or(1, |rt| rt.metrics().num_workers());
        cell.get_or_init(|| Fanout::start(frames, self.capacity, workers)).clone()
    }

    /// Drops the current snapshot; the next asker builds a new one.
    pub fn invalidate(&self) {
        if let Ok(mut cell) = self.snapshot.lock() {
            *cell = Arc::new(OnceCell::new());
        }
    }

    /// The current snapshot, built from the source at most once per change.
    pub async fn snapshot(&self, source: &Source) -> Result<Arc<Snapshot>, StreamError> {
        let cell = match self.snapshot.lock() {
            Ok(cell) => cell.clone(),
            Err(_) => return Err(StreamError::Internal("snapshot lock poisoned".into())),
        };
        let snapshot = cell
            .get_or_try_init(|| async {
                metrics::counter!("pennant_stream_snapshot_builds_total").increment(1);
                build_snapshot(source, &self.id, self.payloads.as_ref()).await.map(Arc::new)
            })
            .await?;
        Ok(snapshot.clone())
    }
}

/// How the streaming service treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubOptions {
    /// Frames buffered per environment; a connection further behind is closed (its SDK reconnects and starts
    /// again from a fresh `put`).
    pub capacity: usize,
    /// Streams are closed after about this long (minus up to 10 % jitter) so that SDKs reconnect and load
    /// spreads over new instances. `None`: never.
    pub max_connection_lifetime: Option<Duration>,
    /// How long a credential lookup is remembered. A rotated-out key keeps working this long at most.
    pub credential_ttl: Duration,
    /// A write to a connection that takes longer than this closes it (a reader that stopped reading).
    pub write_timeout: Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            capacity: 1024,
            max_connection_lifetime: None,
            credential_ttl: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

type CachedCredential = (Option<pennant_store::EnvCredential>, Instant);

/// Every environment's channel, and the credentials seen recently.
#[derive(Debug)]
pub struct Hub {
    channels: Mutex<HashMap<EnvId, Arc<EnvChannel>>>,
    options: HubOptions,
    // Every SDK request and every (re)connection needs its key resolved; a reconnection storm must not become a
    // storm of database queries. Bounded, so unknown keys cannot grow it without limit.
    credentials: quick_cache::sync::Cache<String, CachedCredential>,
    payloads: Option<PayloadCache>,
}

impl Hub {
    /// A hub whose channels buffer `capacity` frames, with default options otherwise.
    pub fn new(capacity: usize) -> Hub {
        Hub::with_options(HubOptions { capacity, ..HubOptions::default() })
    }

    /// A hub with the given options.
    pub fn with_options(options: HubOptions) -> Hub {
        let options = HubOptions { capacity: options.capacity.max(1), ..options };
        Hub {
            channels: Mutex::new(HashMap::new()),
            options,
            credentials: quick_cache::sync::Cache::new(100_000),
            payloads: None,
        }
    }

    /// A hub whose snapshots come through a shared payload cache (see [`PayloadCache`]).
    pub fn with_payload_cache(options: HubOptions, payloads: PayloadCache) -> Hub {
        Hub { payloads: Some(payloads), ..Hub::with_options(options) }
    }

    /// The shared payload cache, if any.
    pub fn payload_cache(&self) -> Option<&PayloadCache> {
        self.payloads.as_ref()
    }

    /// The options.
    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    /// A remembered credential lookup that is still fresh: `Some(None)` means "known not to exist".
    pub(crate) fn cached_credential(&self, key: &str) -> Option<Option<pennant_store::EnvCredential>> {
        let (found, at) = self.credentials.get(key)?;
        (at.elapsed() < self.options.credential_ttl).then_some(found)
    }

    /// Remembers a credential lookup.
    pub(crate) fn remember_credential(&self, key: &str, found: Option<pennant_store::EnvCredential>) {
        self.credentials.insert(key.to_owned(), (found, Instant::now()));
    }

    /// Forgets every remembered credential (after a rotation this process made).
    pub fn forget_credentials(&self) {
        self.credentials.clear();
    }

    /// The channel of an environment, created on first use.
    pub fn channel(&self, id: &EnvId) -> Arc<EnvChannel> {
        let Ok(mut channels) = self.channels.lock() else {
            // A poisoned map only happens after a panic elsewhere; serve a detached channel rather than fail.
            return self.new_channel(id);
        };
        channels.entry(id.clone()).or_insert_with(|| self.new_channel(id)).clone()
    }

    fn new_channel(&self, id: &EnvId) -> Arc<EnvChannel> {
        Arc::new(EnvChannel {
            id: id.clone(),
            frames: broadcast::channel(self.options.capacity).0,
            flag_frames: broadcast::channel(self.options.capacity).0,
            snapshot: Mutex::new(Arc::new(OnceCell::new())),
            payloads: self.payloads.clone(),
            lean_all: OnceLock::new(),
            lean_flags: OnceLock::new(),
            capacity: self.options.capacity,
        })
    }

    /// The channel of an environment if anyone ever used it.
    pub fn existing(&self, id: &EnvId) -> Option<Arc<EnvChannel>> {
        self.channels.lock().ok()?.get(id).cloned()
    }

    /// Every channel.
    pub fn all(&self) -> Vec<Arc<EnvChannel>> {
        self.channels.lock().map(|c| c.values().cloned().collect()).unwrap_or_default()
    }
}

async fn build_snapshot(source: &Source, id: &EnvId, payloads: Option<&PayloadCache>) -> Result<Snapshot, StreamError> {
    let store = match source {
        Source::Store(store) => store,
        Source::Mirror(mirror) => {
            let payload = mirror.payload(id).ok_or_else(|| {
                StreamError::NotReady(format!("environment {}/{} has no data from upstream yet", id.project, id.env))
            })?;
            let data = pennant_eval::MemoryStore::from_payload_json(&payload)
                .map_err(|e| StreamError::Internal(format!("a mirrored SDK payload does not decode: {e}")))?;
            return snapshot_of(data, Some(payload));
        }
    };
    let (data, cached) = match payloads {
        None => (store.sdk_payload(&id.project, &id.env).await?, None),
        Some(cache) => {
            // The version first: data read after it is at least as new (see `Store::env_data_version`).
            let version = store.env_data_version(&id.project, &id.env).await?;
            let key = format!("{}/{}@{version}", id.project, id.env);
            let (store, id) = (store.clone(), id.clone());
            let payload = cache
                .get(&key, move || async move {
                    let data = store.sdk_payload(&id.project, &id.env).await.map_err(shared_error)?;
                    encode_payload(&data).map(Bytes::from).map_err(shared_error)
                })
                .await
                .map_err(|e| StreamError::Internal(format!("loading the SDK payload: {e}")))?;
            let data = pennant_eval::MemoryStore::from_payload_json(&payload)
                .map_err(|e| StreamError::Internal(format!("a cached SDK payload does not decode: {e}")))?;
            (data, Some(payload))
        }
    };
    snapshot_of(data, cached)
}

/// The snapshot of `data`, whose encoded payload may be known already.
fn snapshot_of(data: pennant_eval::MemoryStore, cached: Option<Bytes>) -> Result<Snapshot, StreamError> {
    let flags: BTreeMap<&str, &pennant_eval::Flag> = data.flags().map(|f| (f.key.as_str(), f)).collect();
    let flags_json = serde_json::to_vec(&flags)?;
    let payload = match cached {
        Some(payload) => payload,
        None => Bytes::from(encode_payload(&data)?),
    };
    let etag = format!("\"{}\"", &hex::encode(Sha1::digest(&payload))[..20]);
    Ok(Snapshot {
        put_frame: put_frame(&payload),
        flags_put_frame: put_frame(&flags_json),
        payload,
        flags: Bytes::from(flags_json),
        etag,
        data,
    })
}

/// `{"flags": {...}, "segments": {...}}`, keys in order, so every node encodes the same data to the same bytes
/// (and the same ETag).
fn encode_payload(data: &pennant_eval::MemoryStore) -> Result<Vec<u8>, serde_json::Error> {
    let flags: BTreeMap<&str, &pennant_eval::Flag> = data.flags().map(|f| (f.key.as_str(), f)).collect();
    let segments: BTreeMap<&str, &pennant_eval::Segment> = data.segments().map(|s| (s.key.as_str(), s)).collect();
    serde_json::to_vec(&serde_json::json!({"flags": flags, "segments": segments}))
}

/// `event: put` with `{"path": "/", "data": DATA}`.
fn put_frame(data: &[u8]) -> Bytes {
    let mut put = Vec::with_capacity(data.len() + 48);
    put.extend_from_slice(b"event: put\ndata: {\"path\":\"/\",\"data\":");
    put.extend_from_slice(data);
    put.extend_from_slice(b"}\n\n");
    Bytes::from(put)
}

/// An SSE frame: `event: NAME` and one `data:` line (the JSON has no newlines).
pub fn frame(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}
