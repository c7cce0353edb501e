//! Where the evaluator finds prerequisite flags and segments.

use std::collections::HashMap;

use serde::Deserialize;

use crate::DataError;
use crate::model::{Flag, Segment};

/// Read access to an environment's flags and segments. Implementations hand out references, so evaluation
/// never clones flag data. Deleted items (tombstones) are treated as absent by the evaluator.
pub trait Store {
    /// The flag with this key.
    fn flag(&self, key: &str) -> Option<&Flag>;
    /// The segment with this key.
    fn segment(&self, key: &str) -> Option<&Segment>;
}

type Map<T> = HashMap<String, T, foldhash::fast::RandomState>;

/// A store held in memory: an environment's whole data set.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    flags: Map<Flag>,
    segments: Map<Segment>,
}

/// LaunchDarkly's `{"flags": {key: flag}, "segments": {key: segment}}` (the `/sdk/latest-all` body and the `data`
/// of a stream's `put`), for stores that keep the items their own way.
#[derive(Debug, Default, Deserialize)]
pub struct Payload {
    /// Flags by key.
    #[serde(default)]
    pub flags: HashMap<String, Flag>,
    /// Segments by key.
    #[serde(default)]
    pub segments: HashMap<String, Segment>,
}

impl MemoryStore {
    /// Reads LaunchDarkly's `{"flags": {key: flag}, "segments": {key: segment}}` payload (the `/sdk/latest-all`
    /// body and the `data` of a streaming `put`).
    pub fn from_payload_json(bytes: &[u8]) -> Result<MemoryStore, DataError> {
        let payload: Payload = serde_json::from_slice(bytes)?;
        let mut store = MemoryStore::default();
        store.flags.extend(payload.flags);
        store.segments.extend(payload.segments);
        Ok(store)
    }

    /// Adds or replaces a flag.
    pub fn insert_flag(&mut self, flag: Flag) {
        self.flags.insert(flag.key.clone(), flag);
    }

    /// Adds or replaces a segment.
    pub fn insert_segment(&mut self, segment: Segment) {
        self.segments.insert(segment.key.clone(), segment);
    }

    /// All flags, in no particular order.
    pub fn flags(&self) -> impl Iterator<Item = &Flag> {
        self.flags.values()
    }

    /// All segments, in no particular order.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.values()
    }
}

impl Store for MemoryStore {
    #[inline]
    fn flag(&self, key: &str) -> Option<&Flag> {
        self.flags.get(key)
    }

    #[inline]
    fn segment(&self, key: &str) -> Option<&Segment> {
        self.segments.get(key)
    }
}
