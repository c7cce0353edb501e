//! Summary counters: how often each flag served each variation in a flush interval, as LaunchDarkly's `summary`
//! event reports them.
//!
//! Every evaluation is counted, so counting is on the application's hot path. The counters live in shards, each
//! a small map behind its own mutex; a thread always uses the same shard, so the mutex is uncontended unless two
//! threads share a shard. A counter is keyed by the flag's address in the flag data and the variation: the flag
//! (an `Arc` that the counter holds until the flush) carries the key and version, and there is no string to hash or
//! copy. Maps keep their capacity across flushes, so a counter that existed in the previous interval costs no
//! allocation. Unknown flags (not found, or the client not ready) are counted by key in a second map.
//!
//! At a flush the processor drains every shard into an [`Aggregate`] keyed by flag key, version and variation
//! (several flag objects, from successive data updates, may share a version) and writes the `summary` event.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pennant_eval::{Context, Flag};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// Counters a shard's maps hold without growing.
const SHARD_CAPACITY: usize = 32;

const USER_KIND: &str = "user";

/// The context kinds that evaluated a flag.
#[derive(Debug, Default, Clone)]
pub(crate) struct Kinds {
    user: bool,
    others: Vec<Box<str>>,
}

impl Kinds {
    #[inline]
    fn add(&mut self, context: &Context) {
        for kind in context.kinds() {
            if kind == USER_KIND {
                self.user = true;
            } else if !self.others.iter().any(|k| **k == *kind) {
                self.others.push(kind.into());
            }
        }
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.user.then_some(USER_KIND).into_iter().chain(self.others.iter().map(|k| &**k))
    }
}

#[derive(Debug)]
struct FlagCounter {
    flag: Arc<Flag>,
    variation: Option<usize>,
    count: u64,
    /// The application's default, at the first count.
    default: Value,
    kinds: Kinds,
}

#[derive(Debug)]
struct UnknownCounter {
    count: u64,
    default: Value,
    kinds: Kinds,
}

#[derive(Debug)]
struct Counters {
    flags: HashMap<(usize, usize), FlagCounter, foldhash::fast::RandomState>,
    unknown: HashMap<Box<str>, UnknownCounter, foldhash::fast::RandomState>,
    /// When the first counter was created since the last drain (Unix ms), or 0.
    since_ms: u64,
}

/// One shard, alone on its cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Shard(Mutex<Counters>);

/// The shared, sharded counters.
#[derive(Debug)]
pub(crate) struct Summary {
    shards: Box<[Shard]>,
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number (taken modulo the shard count).
    static THREAD_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn thread_shard() -> usize {
    THREAD_SHARD.with(|s| {
        let mut n = s.get();
        if n == usize::MAX {
            n = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            s.set(n);
        }
        n
    })
}

impl Summary {
    /// Shards for about four threads a core.
    pub(crate) fn new() -> Summary {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        Summary::with_shards((cores * 4).next_power_of_two().min(64))
    }

    /// `n` shards, rounded up to a power of two.
    pub(crate) fn with_shards(n: usize) -> Summary {
        let shards = (0..n.max(1).next_power_of_two())
            .map(|_| {
                Shard(Mutex::new(Counters {
                    flags: HashMap::with_capacity_and_hasher(SHARD_CAPACITY, Default::default()),
                    unknown: HashMap::with_hasher(Default::default()),
                    since_ms: 0,
                }))
            })
            .collect();
        Summary { shards }
    }

    #[inline]
    fn shard(&self) -> std::sync::MutexGuard<'_, Counters> {
        // The shard count is a power of two.
        let i = thread_shard() & (self.shards.len() - 1);
        // A panic while counting leaves the counters consistent enough: keep counting.
        self.shards[i].0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one evaluation of a flag that exists. `default` is called only when the counter is created.
    #[inline]
    pub(crate) fn count(
        &self,
        flag: &Arc<Flag>,
        variation: Option<usize>,
        context: &Context,
        default: &dyn Fn() -> Value,
    ) {
        let key = (Arc::as_ptr(flag) as usize, variation.map_or(0, |v| v.wrapping_add(1)));
        let mut shard = self.shard();
        let counters = &mut *shard;
        if counters.since_ms == 0 {
            counters.since_ms = super::now_ms();
        }
        let counter = counters.flags.entry(key).or_insert_with(|| FlagCounter {
            flag: flag.clone(),
            variation,
            count: 0,
            default: default(),
            kinds: Kinds::default(),
        });
        counter.count += 1;
        counter.kinds.add(context);
    }

    /// Counts one evaluation of a flag that was not found (or of any flag before the client had data).
    pub(crate) fn count_unknown(&self, flag_key: &str, context: &Context, default: &dyn Fn() -> Value) {
        let mut shard = self.shard();
        let counters = &mut *shard;
        if counters.since_ms == 0 {
            counters.since_ms = super::now_ms();
        }
        if !counters.unknown.contains_key(flag_key) {
            let counter = UnknownCounter { count: 0, default: default(), kinds: Kinds::default() };
            counters.unknown.insert(flag_key.into(), counter);
        }
        if let Some(counter) = counters.unknown.get_mut(flag_key) {
            counter.count += 1;
            counter.kinds.add(context);
        }
    }

    /// Moves every counter into `aggregate`, leaving the shards empty (with their capacity).
    pub(crate) fn drain_into(&self, aggregate: &mut Aggregate) {
        for shard in &self.shards {
            let mut counters = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            if counters.since_ms != 0 {
                aggregate.start_ms = Some(aggregate.start_ms.map_or(counters.since_ms, |s| s.min(counters.since_ms)));
                counters.since_ms = 0;
            }
            for (_, c) in counters.flags.drain() {
                let value = match c.variation {
                    Some(i) => c.flag.variations.get(i).cloned().unwrap_or(Value::Null),
                    None => c.default.clone(),
                };
                let key = CounterKey { version: Some(c.flag.version), variation: c.variation };
                aggregate.add(&c.flag.key, key, value, c.count, c.default, &c.kinds);
            }
            for (flag_key, c) in counters.unknown.drain() {
                let key = CounterKey { version: None, variation: None };
                aggregate.add(&flag_key, key, c.default.clone(), c.count, c.default, &c.kinds);
            }
        }
    }
}

/// A counter's identity in the `summary` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CounterKey {
    /// The flag's version; `None` for an unknown flag.
    pub(crate) version: Option<u64>,
    /// The variation served; `None` when the default was.
    pub(crate) variation: Option<usize>,
}

#[derive(Debug, Default)]
pub(crate) struct FlagSummary {
    /// The application's default in one of the evaluations (they normally all pass the same).
    pub(crate) default: Value,
    pub(crate) context_kinds: BTreeSet<String>,
    /// Counter → (value, count).
    pub(crate) counters: BTreeMap<CounterKey, (Value, u64)>,
}

/// The counters of one flush interval, by flag key.
#[derive(Debug, Default)]
pub(crate) struct Aggregate {
    /// When the first evaluation counted was (Unix ms).
    pub(crate) start_ms: Option<u64>,
    pub(crate) flags: BTreeMap<String, FlagSummary>,
}

impl Aggregate {
    fn add(&mut self, flag_key: &str, key: CounterKey, value: Value, count: u64, default: Value, kinds: &Kinds) {
        let summary = match self.flags.get_mut(flag_key) {
            Some(s) => s,
            None => self.flags.entry(flag_key.to_owned()).or_insert(FlagSummary { default, ..FlagSummary::default() }),
        };
        for kind in kinds.names() {
            if !summary.context_kinds.contains(kind) {
                summary.context_kinds.insert(kind.to_owned());
            }
        }
        summary.counters.entry(key).or_insert((value, 0)).1 += count;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The `summary` event for these counters, ending at `end_ms`.
    pub(crate) fn event(&self, end_ms: u64) -> SummaryEvent<'_> {
        SummaryEvent { aggregate: self, start_ms: self.start_ms.unwrap_or(end_ms).min(end_ms), end_ms }
    }
}

/// Serialises as LaunchDarkly's `summary` event.
#[derive(Debug)]
pub(crate) struct SummaryEvent<'a> {
    aggregate: &'a Aggregate,
    start_ms: u64,
    end_ms: u64,
}

impl Serialize for SummaryEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("kind", "summary")?;
        map.serialize_entry("startDate", &self.start_ms)?;
        map.serialize_entry("endDate", &self.end_ms)?;
        map.serialize_entry("features", &Features(&self.aggregate.flags))?;
        map.end()
    }
}

struct Features<'a>(&'a BTreeMap<String, FlagSummary>);

impl Serialize for Features<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (key, summary) in self.0 {
            map.serialize_entry(key, &FeatureOut(summary))?;
        }
        map.end()
    }
}

struct FeatureOut<'a>(&'a FlagSummary);

impl Serialize for FeatureOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("default", &self.0.default)?;
        map.serialize_entry("contextKinds", &self.0.context_kinds)?;
        map.serialize_entry("counters", &CountersOut(&self.0.counters))?;
        map.end()
    }
}

struct CountersOut<'a>(&'a BTreeMap<CounterKey, (Value, u64)>);

impl Serialize for CountersOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (key, (value, count)) in self.0 {
            seq.serialize_element(&CounterOut { key: *key, value, count: *count })?;
        }
        seq.end()
    }
}

struct CounterOut<'a> {
    key: CounterKey,
    value: &'a Value,
    count: u64,
}

impl Serialize for CounterOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        if let Some(variation) = self.key.variation {
            map.serialize_entry("variation", &variation)?;
        }
        match self.key.version {
            Some(version) => map.serialize_entry("version", &version)?,
            None => map.serialize_entry("unknown", &true)?,
        }
        map.serialize_entry("value", self.value)?;
        map.serialize_entry("count", &self.count)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flag(key: &str, version: u64) -> Arc<Flag> {
        Arc::new(
            serde_json::from_value(json!({"key": key, "version": version, "on": true, "variations": ["a", "b", "c"],
                "fallthrough": {"variation": 0}}))
            .unwrap(),
        )
    }

    fn drain(summary: &Summary) -> Value {
        let mut aggregate = Aggregate::default();
        summary.drain_into(&mut aggregate);
        let mut event = serde_json::to_value(aggregate.event(u64::MAX)).unwrap();
        assert!(event["startDate"].as_u64().unwrap() > 0);
        event["startDate"] = json!(0);
        event
    }

    #[test]
    fn counts_by_flag_version_and_variation_with_unknown_flags() {
        let summary = Summary::with_shards(4);
        let user = Context::user("u");
        let org = Context::from_value(json!({"kind": "org", "key": "o"})).unwrap();
        let multi =
            Context::from_value(json!({"kind": "multi", "device": {"key": "d"}, "user": {"key": "u"}})).unwrap();
        let v1 = flag("f", 1);
        let d = || json!("default");
        for _ in 0..3 {
            summary.count(&v1, Some(0), &user, &d);
        }
        summary.count(&v1, Some(2), &org, &d);
        summary.count(&v1, None, &multi, &d);
        // The same version in another flag object (a later `put` of the same data) shares the counters.
        let v1_again = flag("f", 1);
        summary.count(&v1_again, Some(0), &user, &d);
        let v2 = flag("f", 2);
        summary.count(&v2, Some(1), &user, &d);
        summary.count_unknown("missing", &user, &|| json!(false));
        summary.count_unknown("missing", &org, &|| json!(true));

        let event = drain(&summary);
        assert_eq!(
            event,
            json!({"kind": "summary", "startDate": 0, "endDate": u64::MAX, "features": {
                "f": {"default": "default", "contextKinds": ["device", "org", "user"], "counters": [
                    {"version": 1, "value": "default", "count": 1},
                    {"variation": 0, "version": 1, "value": "a", "count": 4},
                    {"variation": 2, "version": 1, "value": "c", "count": 1},
                    {"variation": 1, "version": 2, "value": "b", "count": 1}]},
                "missing": {"default": false, "contextKinds": ["org", "user"], "counters": [
                    {"unknown": true, "value": false, "count": 2}]}}})
        );
        // Drained: the next interval starts empty.
        let mut aggregate = Aggregate::default();
        summary.drain_into(&mut aggregate);
        assert!(aggregate.is_empty() && aggregate.start_ms.is_none());
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let summary = Arc::new(Summary::with_shards(2));
        let f = flag("f", 7);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (summary, f) = (summary.clone(), f.clone());
                std::thread::spawn(move || {
                    let user = Context::user(&format!("u{t}"));
                    for i in 0..1000 {
                        summary.count(&f, Some(i % 2), &user, &|| json!(null));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let event = drain(&summary);
        let counters = event["features"]["f"]["counters"].as_array().unwrap();
        let counts: Vec<u64> = counters.iter().map(|c| c["count"].as_u64().unwrap()).collect();
        assert_eq!(counts, [4000, 4000]);
    }

    #[test]
    fn the_summary_parses_at_the_front_door() {
        let summary = Summary::with_shards(1);
        summary.count(&flag("f", 3), Some(1), &Context::user("u"), &|| json!("x"));
        summary.count_unknown("gone", &Context::user("u"), &|| json!(1.5));
        let mut aggregate = Aggregate::default();
        summary.drain_into(&mut aggregate);
        let body = serde_json::to_vec(&[aggregate.event(super::super::now_ms())]).unwrap();
        let batch = pennant_events::parse_batch(&body).unwrap();
        assert_eq!(batch.skipped, 0);
        let pennant_events::Event::Summary(s) = &batch.events[0] else { panic!("not a summary") };
        assert_eq!(s.features.len(), 2);
        let f = s.features.iter().find(|f| f.key == "f").unwrap();
        assert_eq!((f.counters[0].variation, f.counters[0].version, f.counters[0].count), (Some(1), Some(3), 1));
        assert_eq!(f.context_kinds, ["user"]);
        let gone = s.features.iter().find(|f| f.key == "gone").unwrap();
        assert!(gone.counters[0].unknown);
        assert!(s.start_date <= s.end_date);
    }
}
