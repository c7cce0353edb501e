//! Per-environment fan-out: a broadcast channel of pre-encoded SSE frames, and the environment's SDK payload
//! built once per change however many connections ask for it at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pennant_store::Store;
use sha1::{Digest, Sha1};
use tokio::sync::{OnceCell, broadcast};

use crate::StreamError;

/// An environment, by project and environment key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvId {
    /// Project key.
    pub project: String,
    /// Environment key.
    pub env: String,
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
    /// The data, for single-item lookups and evaluation.
    pub data: pennant_eval::MemoryStore,
}

/// One environment's channel and current snapshot.
#[derive(Debug)]
pub struct EnvChannel {
    id: EnvId,
    frames: broadcast::Sender<Bytes>,
    // Replaced (not cleared) on every change, so a build in progress for the old data cannot be mistaken for
    // the new one; concurrent askers share one build through the OnceCell.
    snapshot: Mutex<Arc<OnceCell<Arc<Snapshot>>>>,
}

impl EnvChannel {
    /// Frames published after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.frames.subscribe()
    }

    /// Sends a frame to every connection of the environment.
    pub fn publish(&self, frame: Bytes) {
        // No receivers is not an error: nobody is connected.
        let _ = self.frames.send(frame);
    }

    /// How many connections are listening.
    pub fn connections(&self) -> usize {
        self.frames.receiver_count()
    }

    /// Drops the current snapshot; the next asker builds a new one.
    pub fn invalidate(&self) {
        if let Ok(mut cell) = self.snapshot.lock() {
            *cell = Arc::new(OnceCell::new());
        }
    }

    /// The current snapshot, built from the store at most once per change.
    pub async fn snapshot(&self, store: &Store) -> Result<Arc<Snapshot>, StreamError> {
        let cell = match self.snapshot.lock() {
            Ok(cell) => cell.clone(),
            Err(_) => return Err(StreamError::Internal("snapshot lock poisoned".into())),
        };
        let snapshot = cell
            .get_or_try_init(|| async {
                metrics::counter!("pennant_stream_snapshot_builds_total").increment(1);
                build_snapshot(store, &self.id).await.map(Arc::new)
            })
            .await?;
        Ok(snapshot.clone())
    }
}

/// Every environment's channel.
#[derive(Debug)]
pub struct Hub {
    channels: Mutex<HashMap<EnvId, Arc<EnvChannel>>>,
    capacity: usize,
}

impl Hub {
    /// A hub whose channels buffer `capacity` frames per connection; a connection further behind is closed
    /// (its SDK reconnects and starts again from a fresh `put`).
    pub fn new(capacity: usize) -> Hub {
        Hub { channels: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// The channel of an environment, created on first use.
    pub fn channel(&self, id: &EnvId) -> Arc<EnvChannel> {
        let Ok(mut channels) = self.channels.lock() else {
            // A poisoned map only happens after a panic elsewhere; serve a detached channel rather than fail.
            return Arc::new(EnvChannel {
                id: id.clone(),
                frames: broadcast::channel(self.capacity).0,
                snapshot: Mutex::new(Arc::new(OnceCell::new())),
            });
        };
        channels
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(EnvChannel {
                    id: id.clone(),
                    frames: broadcast::channel(self.capacity).0,
                    snapshot: Mutex::new(Arc::new(OnceCell::new())),
                })
            })
            .clone()
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

async fn build_snapshot(store: &Store, id: &EnvId) -> Result<Snapshot, StreamError> {
    let data = store.sdk_payload(&id.project, &id.env).await?;
    let flags: BTreeMap<&str, &pennant_eval::Flag> = data.flags().map(|f| (f.key.as_str(), f)).collect();
    let segments: BTreeMap<&str, &pennant_eval::Segment> = data.segments().map(|s| (s.key.as_str(), s)).collect();
    let flags_json = serde_json::to_vec(&flags)?;
    let payload = serde_json::to_vec(&serde_json::json!({"flags": flags, "segments": segments}))?;
    let etag = format!("\"{}\"", &hex::encode(Sha1::digest(&payload))[..20]);
    let mut put = Vec::with_capacity(payload.len() + 48);
    put.extend_from_slice(b"event: put\ndata: {\"path\":\"/\",\"data\":");
    put.extend_from_slice(&payload);
    put.extend_from_slice(b"}\n\n");
    Ok(Snapshot {
        payload: Bytes::from(payload),
        flags: Bytes::from(flags_json),
        etag,
        put_frame: Bytes::from(put),
        data,
    })
}

/// An SSE frame: `event: NAME` and one `data:` line (the JSON has no newlines).
pub fn frame(event: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}
