//! The client's flag data: an immutable snapshot swapped whole on every change, so that evaluation takes no
//! lock, and the rules for applying `put`, `patch` and `delete` (only newer versions win).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pennant_eval::{Clause, Flag, Operator, Payload, Segment, Store};
use serde::Deserialize;

type Map<T> = HashMap<String, Arc<T>, foldhash::fast::RandomState>;

/// Flag data that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Not JSON of the expected shape.
    #[error("invalid flag data: {0}")]
    Json(#[from] serde_json::Error),
}

/// One environment's flags and segments, deleted ones kept as tombstones (so that an older update arriving late
/// cannot bring them back). Items are shared between snapshots, so a snapshot that differs in one flag costs one
/// pointer copy per item, not a copy of the data.
#[derive(Debug, Clone, Default)]
pub struct FlagData {
    flags: Map<Flag>,
    segments: Map<Segment>,
}

impl FlagData {
    /// Reads LaunchDarkly's `{"flags": {key: flag}, "segments": {key: segment}}` (the `/sdk/latest-all` body and
    /// the `data` of a stream's `put`). Items are stored under their map keys.
    pub fn from_payload_json(bytes: &[u8]) -> Result<FlagData, DataError> {
        Ok(serde_json::from_slice::<Payload>(bytes)?.into())
    }

    /// Adds or replaces a flag (whatever its version), under its key.
    pub fn insert_flag(&mut self, flag: Flag) {
        self.flags.insert(flag.key.clone(), Arc::new(flag));
    }

    /// Adds or replaces a segment (whatever its version), under its key.
    pub fn insert_segment(&mut self, segment: Segment) {
        self.segments.insert(segment.key.clone(), Arc::new(segment));
    }

    /// The flags that are not deleted, in no particular order.
    pub fn flags(&self) -> impl Iterator<Item = &Flag> {
        self.flags.values().map(|f| &**f).filter(|f| !f.deleted)
    }

    /// The segments that are not deleted, in no particular order.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.values().map(|s| &**s).filter(|s| !s.deleted)
    }

    /// The flag stored under `key` (tombstones too), shared: analytics counters keep it until they are sent.
    #[inline]
    pub(crate) fn flag_arc(&self, key: &str) -> Option<&Arc<Flag>> {
        self.flags.get(key)
    }

    fn flag_version(&self, key: &str) -> Option<u64> {
        self.flags.get(key).map(|f| f.version)
    }

    fn segment_version(&self, key: &str) -> Option<u64> {
        self.segments.get(key).map(|s| s.version)
    }
}

impl From<Payload> for FlagData {
    fn from(payload: Payload) -> FlagData {
        let mut data = FlagData::default();
        data.flags.extend(payload.flags.into_iter().map(|(k, v)| (k, Arc::new(v))));
        data.segments.extend(payload.segments.into_iter().map(|(k, v)| (k, Arc::new(v))));
        data
    }
}

impl<'de> Deserialize<'de> for FlagData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FlagData, D::Error> {
        Payload::deserialize(d).map(FlagData::from)
    }
}

/// Tombstones are returned too: the evaluator treats them as absent.
impl Store for FlagData {
    #[inline]
    fn flag(&self, key: &str) -> Option<&Flag> {
        self.flags.get(key).map(|f| &**f)
    }

    #[inline]
    fn segment(&self, key: &str) -> Option<&Segment> {
        self.segments.get(key).map(|s| &**s)
    }
}

/// A tombstone for a deleted flag.
fn flag_tombstone(key: &str, version: u64) -> Flag {
    Flag { key: key.to_owned(), version, deleted: true, ..Flag::default() }
}

/// A tombstone for a deleted segment (whose private fields rule out a struct literal).
#[allow(clippy::field_reassign_with_default)]
fn segment_tombstone(key: &str, version: u64) -> Segment {
    let mut segment = Segment::default();
    segment.key = key.to_owned();
    segment.version = version;
    segment.deleted = true;
    segment
}

/// The items an update changed directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Changed {
    pub(crate) flags: BTreeSet<String>,
    pub(crate) segments: BTreeSet<String>,
}

impl Changed {
    pub(crate) fn is_empty(&self) -> bool {
        self.flags.is_empty() && self.segments.is_empty()
    }
}

/// The current snapshot; writers are serialised, readers take no lock.
#[derive(Debug, Default)]
pub(crate) struct DataStore {
    current: ArcSwap<FlagData>,
    initialized: AtomicBool,
    write: Mutex<()>,
}

impl DataStore {
    /// The current snapshot, for one evaluation (cheap, no lock, no reference count on the fast path).
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<FlagData>> {
        self.current.load()
    }

    /// The current snapshot, to keep.
    pub(crate) fn snapshot(&self) -> Arc<FlagData> {
        self.current.load_full()
    }

    /// Whether a full data set has been received.
    pub(crate) fn initialized(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }

    /// Replaces everything; returns the new snapshot and what changed (by version, presence or deletion).
    pub(crate) fn init(&self, data: FlagData) -> (Arc<FlagData>, Changed) {
        let _writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut changed = Changed::default();
        let flag_state = |d: &FlagData, k: &str| d.flags.get(k).map(|f| (f.version, f.deleted));
        for key in old.flags.keys().chain(data.flags.keys()) {
            if flag_state(&old, key) != flag_state(&data, key) {
                changed.flags.insert(key.clone());
            }
        }
        let segment_state = |d: &FlagData, k: &str| d.segments.get(k).map(|s| (s.version, s.deleted));
        for key in old.segments.keys().chain(data.segments.keys()) {
            if segment_state(&old, key) != segment_state(&data, key) {
                changed.segments.insert(key.clone());
            }
        }
        let data = Arc::new(data);
        self.current.store(data.clone());
        self.initialized.store(true, Ordering::Release);
        (data, changed)
    }

    /// Applies one change if `version` is newer than what is stored (a tombstone's version counts).
    fn apply(
        &self,
        version: u64,
        current_version: impl Fn(&FlagData) -> Option<u64>,
        change: impl FnOnce(&mut FlagData),
    ) -> Option<Arc<FlagData>> {
        let _writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        if current_version(&old).is_some_and(|v| v >= version) {
            return None;
        }
        let mut data = FlagData::clone(&old);
        change(&mut data);
        let data = Arc::new(data);
        self.current.store(data.clone());
        Some(data)
    }

    /// Adds or replaces a flag if its version is newer.
    pub(crate) fn upsert_flag(&self, key: &str, flag: Flag) -> Option<Arc<FlagData>> {
        let version = flag.version;
        self.apply(
            version,
            |d| d.flag_version(key),
            |d| {
                d.flags.insert(key.to_owned(), Arc::new(flag));
            },
        )
    }

    /// Adds or replaces a segment if its version is newer.
    pub(crate) fn upsert_segment(&self, key: &str, segment: Segment) -> Option<Arc<FlagData>> {
        let version = segment.version;
        self.apply(
            version,
            |d| d.segment_version(key),
            |d| {
                d.segments.insert(key.to_owned(), Arc::new(segment));
            },
        )
    }

    /// Replaces a flag with a tombstone if `version` is newer.
    pub(crate) fn delete_flag(&self, key: &str, version: u64) -> Option<Arc<FlagData>> {
        self.apply(
            version,
            |d| d.flag_version(key),
            |d| {
                d.flags.insert(key.to_owned(), Arc::new(flag_tombstone(key, version)));
            },
        )
    }

    /// Replaces a segment with a tombstone if `version` is newer.
    pub(crate) fn delete_segment(&self, key: &str, version: u64) -> Option<Arc<FlagData>> {
        self.apply(
            version,
            |d| d.segment_version(key),
            |d| {
                d.segments.insert(key.to_owned(), Arc::new(segment_tombstone(key, version)));
            },
        )
    }
}

/// The segments a list of clauses refers to with `segmentMatch`.
fn segment_refs(clauses: &[Clause]) -> impl Iterator<Item = &str> {
    clauses
        .iter()
        .filter(|c| c.op == Operator::SegmentMatch)
        .flat_map(|c| c.values.iter().filter_map(serde_json::Value::as_str))
}

/// The keys of every flag whose result may have changed: the flags changed directly, and every flag that depends
/// on a changed flag (as a prerequisite) or a changed segment (through `segmentMatch`, also nested in segments),
/// transitively, as found in `data` (the data after the change).
pub(crate) fn affected_flags(data: &FlagData, changed: &Changed) -> BTreeSet<String> {
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    enum Item<'a> {
        Flag(&'a str),
        Segment(&'a str),
    }
    // Who depends on each item.
    let mut dependents: HashMap<Item<'_>, Vec<Item<'_>>> = HashMap::new();
    for (key, flag) in &data.flags {
        let me = Item::Flag(key);
        for prerequisite in &flag.prerequisites {
            dependents.entry(Item::Flag(&prerequisite.key)).or_default().push(me);
        }
        for segment in flag.rules.iter().flat_map(|r| segment_refs(&r.clauses)) {
            dependents.entry(Item::Segment(segment)).or_default().push(me);
        }
    }
    for (key, segment) in &data.segments {
        let me = Item::Segment(key);
        for other in segment.rules.iter().flat_map(|r| segment_refs(&r.clauses)) {
            dependents.entry(Item::Segment(other)).or_default().push(me);
        }
    }
    let mut seen: std::collections::HashSet<Item<'_>> = std::collections::HashSet::new();
    let mut queue: Vec<Item<'_>> =
        changed.flags.iter().map(|k| Item::Flag(k)).chain(changed.segments.iter().map(|k| Item::Segment(k))).collect();
    while let Some(item) = queue.pop() {
        if seen.insert(item) {
            queue.extend(dependents.get(&item).into_iter().flatten().copied());
        }
    }
    seen.into_iter()
        .filter_map(|item| match item {
            Item::Flag(key) => Some(key.to_owned()),
            Item::Segment(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flag(value: serde_json::Value) -> Flag {
        serde_json::from_value(value).unwrap()
    }

    fn segment(value: serde_json::Value) -> Segment {
        serde_json::from_value(value).unwrap()
    }

    fn payload() -> FlagData {
        FlagData::from_payload_json(
            json!({
                "flags": {
                    "a": {"key": "a", "version": 1, "on": true},
                    "b": {"key": "b", "version": 1, "prerequisites": [{"key": "a", "variation": 0}]},
                    "c": {"key": "c", "version": 1, "prerequisites": [{"key": "b", "variation": 0}]},
                    "s": {"key": "s", "version": 1, "rules": [{"id": "r", "variation": 0, "clauses": [
                        {"attribute": "key", "op": "segmentMatch", "values": ["outer"]}]}]},
                    "lone": {"key": "lone", "version": 1}
                },
                "segments": {
                    "inner": {"key": "inner", "version": 1, "included": ["u"]},
                    "outer": {"key": "outer", "version": 1, "rules": [{"id": "x", "clauses": [
                        {"attribute": "key", "op": "segmentMatch", "values": ["inner"]}]}]}
                }
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn payloads_are_read_and_bad_ones_are_typed_errors() {
        let data = payload();
        assert_eq!(data.flags().count(), 5);
        assert_eq!(data.segments().count(), 2);
        assert_eq!(data.flag("b").unwrap().prerequisites[0].key, "a");
        assert!(FlagData::from_payload_json(b"{}").unwrap().flags().next().is_none(), "both maps are optional");
        assert!(matches!(FlagData::from_payload_json(b"{\"flags\": []}"), Err(DataError::Json(_))));
        assert!(FlagData::from_payload_json(b"not json").is_err());
    }

    #[test]
    fn upserts_and_deletes_apply_only_when_newer() {
        let store = DataStore::default();
        assert!(!store.initialized());
        store.init(payload());
        assert!(store.initialized());
        assert!(store.upsert_flag("a", flag(json!({"key": "a", "version": 1, "on": false}))).is_none(), "same version");
        assert!(store.load().flag("a").unwrap().on);
        assert!(store.upsert_flag("a", flag(json!({"key": "a", "version": 2, "on": false}))).is_some());
        assert!(!store.load().flag("a").unwrap().on);
        assert!(store.delete_flag("a", 2).is_none(), "a delete at the same version is ignored");
        assert!(store.delete_flag("a", 3).is_some());
        assert!(store.load().flag("a").unwrap().deleted);
        assert!(
            store.upsert_flag("a", flag(json!({"key": "a", "version": 3}))).is_none(),
            "the tombstone's version blocks a late update"
        );
        assert!(store.upsert_flag("a", flag(json!({"key": "a", "version": 4}))).is_some(), "a newer one revives it");
        assert!(store.upsert_flag("new", flag(json!({"key": "new", "version": 1}))).is_some(), "new keys are added");
        assert!(store.delete_flag("never", 1).is_some(), "deleting an unknown key leaves a tombstone");
        assert_eq!(store.load().flags().filter(|f| f.key == "never").count(), 0, "tombstones are not listed");

        assert!(store.upsert_segment("inner", segment(json!({"key": "inner", "version": 1}))).is_none());
        assert!(store.upsert_segment("inner", segment(json!({"key": "inner", "version": 5}))).is_some());
        assert!(store.delete_segment("inner", 5).is_none());
        assert!(store.delete_segment("inner", 6).is_some());
        assert!(store.load().segment("inner").unwrap().deleted);
        assert_eq!(store.load().segments().count(), 1);
    }

    #[test]
    fn a_snapshot_is_not_changed_by_later_updates() {
        let store = DataStore::default();
        store.init(payload());
        let before = store.snapshot();
        store.upsert_flag("a", flag(json!({"key": "a", "version": 9, "on": false})));
        assert!(before.flag("a").unwrap().on, "readers keep the data they loaded");
        assert!(!store.load().flag("a").unwrap().on);
    }

    #[test]
    fn init_reports_what_changed_by_version_presence_or_deletion() {
        let store = DataStore::default();
        let (_, changed) = store.init(payload());
        assert_eq!(changed.flags.len(), 5, "everything is new");
        let mut next = payload();
        next.insert_flag(flag(json!({"key": "a", "version": 2})));
        next.flags.remove("lone");
        next.insert_segment(segment_tombstone("inner", 2));
        let (_, changed) = store.init(next.clone());
        assert_eq!(changed.flags, BTreeSet::from(["a".to_owned(), "lone".to_owned()]));
        assert_eq!(changed.segments, BTreeSet::from(["inner".to_owned()]));
        let (_, changed) = store.init(next);
        assert!(changed.is_empty(), "the same data again changes nothing");
    }

    #[test]
    fn dependents_of_changed_flags_and_segments_are_affected_transitively() {
        let data = payload();
        let keys = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let flags = |v: &[&str]| Changed { flags: keys(v), segments: BTreeSet::new() };
        assert_eq!(affected_flags(&data, &flags(&["a"])), keys(&["a", "b", "c"]), "prerequisite chains");
        assert_eq!(affected_flags(&data, &flags(&["c"])), keys(&["c"]));
        assert_eq!(affected_flags(&data, &flags(&["lone"])), keys(&["lone"]));
        let segments = Changed { flags: BTreeSet::new(), segments: keys(&["inner"]) };
        assert_eq!(affected_flags(&data, &segments), keys(&["s"]), "through a segment nested in a segment");
        assert!(affected_flags(&data, &Changed::default()).is_empty());
    }

    #[test]
    fn dependency_cycles_terminate() {
        let mut data = FlagData::default();
        data.insert_flag(flag(json!({"key": "x", "prerequisites": [{"key": "y", "variation": 0}]})));
        data.insert_flag(flag(json!({"key": "y", "prerequisites": [{"key": "x", "variation": 0}]})));
        let changed = Changed { flags: BTreeSet::from(["x".to_owned()]), segments: BTreeSet::new() };
        assert_eq!(affected_flags(&data, &changed).len(), 2);
    }
}
