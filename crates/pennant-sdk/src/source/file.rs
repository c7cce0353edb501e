//! Flag data from local JSON files, re-read when they change.
//!
//! Each file is LaunchDarkly's `/sdk/latest-all` body (`{"flags": {key: flag}, "segments": {key: segment}}`),
//! LaunchDarkly's file-data-source shorthand `{"flagValues": {key: value}}` (a flag that is on and serves that value
//! to everyone), or both in one object. The files are merged; a key defined twice (in two files, or twice in one) is
//! an error. Every poll interval the files' modification times and lengths are compared with the last read, and all
//! files are read again when one of them changed (appeared, disappeared, was rewritten): a plain `stat` per file,
//! which works on every platform without a file-system notification library.
//!
//! Files edited by hand rarely raise the items' versions, and the client announces changes by version. So every
//! load compares each item with the previous load, and an item whose JSON differs gets a version above the one it
//! had; an item that did not change keeps its version.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pennant_eval::{Flag, Payload, Segment};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{DataSource, Shutdown, SourceFuture};
use crate::data::FlagData;
use crate::status::{DataSourceErrorInfo, DataSourceErrorKind, DataSourceState};
use crate::updates::DataSourceUpdates;

/// A file modified this recently may be modified again without its modification time changing (timestamps have a
/// granularity): it is read again at the next poll even if its time and length look the same. Re-reading identical
/// content changes nothing.
const RACY_WINDOW: Duration = Duration::from_secs(1);

/// Why the files could not be loaded. The previous data, if any, is kept.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    /// A file is missing or unreadable.
    #[error("{}: cannot be read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not JSON of the expected shape.
    #[error("{}: invalid flag data: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A flag or segment in a file is not valid LaunchDarkly JSON.
    #[error("{}: invalid {kind} {key:?}: {source}", path.display())]
    Item {
        /// The file.
        path: PathBuf,
        /// `flag` or `segment`.
        kind: Kind,
        /// Its key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The same key is defined twice.
    #[error("{kind} {key:?} is defined in both {} and {}", first.display(), second.display())]
    Duplicate {
        /// `flag` or `segment`.
        kind: Kind,
        /// The key.
        key: String,
        /// Where it was defined first.
        first: PathBuf,
        /// Where it was defined again (the same file when it is defined twice in one file).
        second: PathBuf,
    },
    /// The reading task failed (it panicked or the runtime is shutting down).
    #[error("reading the flag files failed: {0}")]
    Task(String),
}

/// Flags and segments are versioned and keyed separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Flag,
    Segment,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Flag => "flag",
            Kind::Segment => "segment",
        })
    }
}

/// One file's contents: either format, or both.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileContents {
    #[serde(default)]
    flags: Map<String, Value>,
    #[serde(default)]
    segments: Map<String, Value>,
    #[serde(default)]
    flag_values: Map<String, Value>,
}

/// What identifies a file's version without reading it: `None` when it cannot be inspected (missing).
type Signature = Option<(SystemTime, u64)>;

fn signature(path: &Path) -> Signature {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn read_files(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, FileError> {
    paths
        .iter()
        .map(|path| std::fs::read(path).map_err(|source| FileError::Read { path: path.clone(), source }))
        .collect()
}

/// Whether a file changed so recently that another change might not move its signature.
fn is_racy(signatures: &[Signature], now: SystemTime) -> bool {
    signatures.iter().flatten().any(|(modified, _)| now.duration_since(*modified).map_or(true, |age| age < RACY_WINDOW))
}

/// The flag LaunchDarkly's `flagValues` shorthand stands for: on, one variation, served to everyone.
fn value_flag(key: &str, value: Value) -> Value {
    serde_json::json!({"key": key, "version": 1, "on": true, "variations": [value], "fallthrough": {"variation": 0}})
}

/// The items of the last good load: their JSON as read and the version given to each.
#[derive(Debug, Default)]
struct Loaded {
    items: HashMap<(Kind, String), (Value, u64)>,
}

/// Merges the files' contents (in the order of `paths`) into one data set; `previous` decides the versions.
/// Returns the data and the items to remember, or `None` for the data when nothing differs from `previous`.
fn merge(paths: &[PathBuf], contents: &[Vec<u8>], previous: &Loaded) -> Result<(Option<FlagData>, Loaded), FileError> {
    // Key → (JSON, index of the file), ordered so that errors name the same item on every load.
    let mut items: BTreeMap<(Kind, String), (Value, usize)> = BTreeMap::new();
    let mut add = |kind: Kind, key: String, mut value: Value, file: usize| {
        if let Some(object) = value.as_object_mut() {
            object.entry("key").or_insert_with(|| Value::String(key.clone()));
        }
        match items.entry((kind, key)) {
            std::collections::btree_map::Entry::Occupied(entry) => Err(FileError::Duplicate {
                kind,
                key: entry.key().1.clone(),
                first: paths[entry.get().1].clone(),
                second: paths[file].clone(),
            }),
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert((value, file));
                Ok(())
            }
        }
    };
    for (file, (path, bytes)) in paths.iter().zip(contents).enumerate() {
        let parsed: FileContents =
            serde_json::from_slice(bytes).map_err(|source| FileError::Json { path: path.clone(), source })?;
        for (key, flag) in parsed.flags {
            add(Kind::Flag, key, flag, file)?;
        }
        for (key, value) in parsed.flag_values {
            let flag = value_flag(&key, value);
            add(Kind::Flag, key, flag, file)?;
        }
        for (key, segment) in parsed.segments {
            add(Kind::Segment, key, segment, file)?;
        }
    }

    let unchanged = items.len() == previous.items.len()
        && items.iter().all(|(id, (value, _))| previous.items.get(id).is_some_and(|(old, _)| old == value));
    let mut loaded = Loaded::default();
    let mut payload = Payload::default();
    for ((kind, key), (value, file)) in items {
        let file_version = value.get("version").and_then(Value::as_u64).unwrap_or(0);
        let version = match previous.items.get(&(kind, key.clone())) {
            Some((old, version)) if *old == value => *version,
            Some((_, version)) => file_version.max(version + 1),
            None => file_version.max(1),
        };
        let mut versioned = value.clone();
        if let Some(object) = versioned.as_object_mut() {
            object.insert("version".into(), Value::from(version));
        }
        let invalid = |source| FileError::Item { path: paths[file].clone(), kind, key: key.clone(), source };
        match kind {
            Kind::Flag => {
                let flag: Flag = serde_json::from_value(versioned).map_err(invalid)?;
                payload.flags.insert(key.clone(), flag);
            }
            Kind::Segment => {
                let segment: Segment = serde_json::from_value(versioned).map_err(invalid)?;
                payload.segments.insert(key.clone(), segment);
            }
        }
        loaded.items.insert((kind, key), (value, version));
    }
    Ok(((!unchanged).then(|| FlagData::from(payload)), loaded))
}

/// The file data source.
#[derive(Debug, Clone)]
pub(crate) struct FileDataSource {
    paths: Vec<PathBuf>,
    interval: Duration,
}

impl FileDataSource {
    pub(crate) fn new(paths: Vec<PathBuf>, interval: Duration) -> FileDataSource {
        FileDataSource { paths, interval }
    }

    async fn run_until_stopped(self, updates: DataSourceUpdates, mut shutdown: Shutdown) {
        let mut loaded: Option<Loaded> = None;
        // The error reported last, until a good load: reading the same bad files again is no news.
        let mut reported: Option<String> = None;
        // The signatures of the last read, unless a file was racy then.
        let mut last: Option<Vec<Signature>> = None;
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.wait() => return,
                _ = ticks.tick() => {}
            }
            let paths = self.paths.clone();
            let check = tokio::task::spawn_blocking(move || {
                // Taken before reading, so that a change during the read is seen at the next poll.
                let signatures: Vec<Signature> = paths.iter().map(|p| signature(p)).collect();
                if last.as_ref() == Some(&signatures) {
                    return (last, None);
                }
                let contents = read_files(&paths);
                let remembered = (!is_racy(&signatures, SystemTime::now())).then_some(signatures);
                (remembered, Some(contents))
            });
            let (remembered, contents) = tokio::select! {
                biased;
                () = shutdown.wait() => return,
                joined = check => match joined {
                    Ok(result) => result,
                    Err(e) => (None, Some(Err(FileError::Task(e.to_string())))),
                },
            };
            last = remembered;
            let Some(contents) = contents else { continue };
            let result = contents
                .and_then(|contents| merge(&self.paths, &contents, loaded.as_ref().unwrap_or(&Loaded::default())));
            match result {
                Ok((data, items)) => {
                    if let Some(data) = data.or_else(|| loaded.is_none().then(FlagData::default)) {
                        updates.init(data);
                    }
                    loaded = Some(items);
                    reported = None;
                    updates.update_status(DataSourceState::Valid, None);
                }
                Err(error) => {
                    let message = error.to_string();
                    if reported.as_ref() != Some(&message) {
                        tracing::warn!(error = %message, "flag files not loaded; keeping the previous data");
                        let info = DataSourceErrorInfo::new(DataSourceErrorKind::InvalidData, message.clone());
                        updates.update_status(DataSourceState::Interrupted, Some(info));
                        reported = Some(message);
                    }
                }
            }
        }
    }
}

impl DataSource for FileDataSource {
    fn run(&self, updates: DataSourceUpdates, shutdown: Shutdown) -> SourceFuture {
        Box::pin(self.clone().run_until_stopped(updates, shutdown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pennant_eval::Store as _;
    use serde_json::json;

    fn paths(n: usize) -> Vec<PathBuf> {
        (0..n).map(|i| PathBuf::from(format!("/flags/{i}.json"))).collect()
    }

    fn bytes(value: Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    #[test]
    fn both_formats_merge_and_flag_values_become_flags_served_to_everyone() {
        let files = [
            bytes(json!({"flags": {"a": {"key": "a", "version": 4, "on": false, "variations": [1]}},
                "segments": {"s": {"key": "s", "version": 2, "included": ["u"]}}})),
            bytes(json!({"flagValues": {"b": "blue", "c": {"x": 1}}, "flags": {"d": {"version": 1}}})),
        ];
        let (data, _) = merge(&paths(2), &files, &Loaded::default()).unwrap();
        let data = data.unwrap();
        assert_eq!(data.flags().count(), 4);
        assert_eq!(data.flag("a").unwrap().version, 4, "a file's version is kept");
        assert_eq!(data.segment("s").unwrap().version, 2);
        let b = data.flag("b").unwrap();
        assert!(b.on);
        assert_eq!((b.variations.as_slice(), b.version), (&[json!("blue")][..], 1));
        assert_eq!(data.flag("d").unwrap().key, "d", "a missing key is the map's key");
    }

    #[test]
    fn changed_items_get_a_higher_version_and_unchanged_ones_keep_theirs() {
        let p = paths(1);
        let (_, first) = merge(&p, &[bytes(json!({"flagValues": {"a": 1, "b": 2}}))], &Loaded::default()).unwrap();
        let (data, second) = merge(&p, &[bytes(json!({"flagValues": {"a": 1, "b": 3}}))], &first).unwrap();
        let data = data.unwrap();
        assert_eq!((data.flag("a").unwrap().version, data.flag("b").unwrap().version), (1, 2));
        let (data, _) = merge(&p, &[bytes(json!({"flagValues": {"a": 1, "b": 3}}))], &second).unwrap();
        assert!(data.is_none(), "identical files are no change");
        let (data, _) = merge(&p, &[bytes(json!({"flagValues": {"a": 1}}))], &second).unwrap();
        assert!(data.unwrap().flag("b").is_none(), "a removed item is a change");
    }

    #[test]
    fn duplicates_and_invalid_items_name_the_files() {
        let p = paths(2);
        let files = [bytes(json!({"flagValues": {"a": 1}})), bytes(json!({"flags": {"a": {"key": "a"}}}))];
        let error = merge(&p, &files, &Loaded::default()).unwrap_err();
        assert_eq!(error.to_string(), "flag \"a\" is defined in both /flags/0.json and /flags/1.json");
        let one = [bytes(json!({"flagValues": {"a": 1}, "flags": {"a": {}}}))];
        let error = merge(&p[..1], &one, &Loaded::default()).unwrap_err();
        assert!(matches!(error, FileError::Duplicate { ref first, ref second, .. } if first == second), "{error}");
        let files = [bytes(json!({})), bytes(json!({"segments": {"s": {"key": "s", "included": 5}}}))];
        let error = merge(&p, &files, &Loaded::default()).unwrap_err().to_string();
        assert!(error.starts_with("/flags/1.json: invalid segment \"s\""), "{error}");
        let error = merge(&p, &[b"{".to_vec(), bytes(json!({}))], &Loaded::default()).unwrap_err().to_string();
        assert!(error.starts_with("/flags/0.json: invalid flag data"), "{error}");
        let error = merge(&p[..1], &[bytes(json!({"flags": []}))], &Loaded::default()).unwrap_err();
        assert!(matches!(error, FileError::Json { .. }), "{error}");
    }

    #[test]
    fn recently_modified_files_are_racy() {
        let now = SystemTime::now();
        assert!(is_racy(&[None, Some((now - Duration::from_millis(10), 3))], now));
        assert!(is_racy(&[Some((now + Duration::from_secs(5), 3))], now), "a time in the future too");
        assert!(!is_racy(&[None, Some((now - Duration::from_secs(5), 3))], now));
    }
}
