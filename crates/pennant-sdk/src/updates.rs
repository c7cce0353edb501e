//! What data sources write to: the client's store, its status and its flag-change notifications.

use std::sync::Arc;

use pennant_eval::{Flag, Segment};
use tokio::sync::{broadcast, watch};

use crate::data::{Changed, DataStore, FlagData, affected_flags};
use crate::status::{DataSourceErrorInfo, DataSourceState, DataSourceStatus};

/// How many flag changes a slow listener may fall behind before it misses some
/// ([`tokio::sync::broadcast::error::RecvError::Lagged`]).
pub const FLAG_CHANGE_CAPACITY: usize = 1024;

/// A flag whose evaluation results may have changed: its own version changed (it was added, updated or deleted),
/// or a flag or segment it depends on changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FlagChange {
    /// The flag's key.
    pub key: String,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: DataStore,
    pub(crate) status: watch::Sender<DataSourceStatus>,
    pub(crate) changes: broadcast::Sender<FlagChange>,
    /// Counts the data's changes (every full data set, every applied upsert or delete).
    pub(crate) data_version: watch::Sender<u64>,
}

/// The handle a [`DataSource`](crate::DataSource) applies its data through. Cloning it is cheap.
#[derive(Debug, Clone)]
pub struct DataSourceUpdates {
    pub(crate) shared: Arc<Shared>,
}

impl DataSourceUpdates {
    pub(crate) fn new() -> DataSourceUpdates {
        DataSourceUpdates {
            shared: Arc::new(Shared {
                store: DataStore::default(),
                status: watch::Sender::new(DataSourceStatus::initializing()),
                changes: broadcast::Sender::new(FLAG_CHANGE_CAPACITY),
                data_version: watch::Sender::new(0),
            }),
        }
    }

    /// Replaces all data (a stream's `put`, a poll's response). The client counts as initialised from then on.
    pub fn init(&self, data: FlagData) {
        let (data, changed) = self.shared.store.init(data);
        // Even an identical data set is news to a watcher waiting for the first one.
        self.shared.data_version.send_modify(|v| *v += 1);
        self.notify(&data, &changed);
    }

    /// Adds or replaces a flag if `flag.version` is newer than the stored one; returns whether it was applied.
    pub fn upsert_flag(&self, key: &str, flag: Flag) -> bool {
        let applied = self.shared.store.upsert_flag(key, flag);
        self.notify_one(applied, key, true)
    }

    /// Adds or replaces a segment if `segment.version` is newer than the stored one; returns whether it was
    /// applied.
    pub fn upsert_segment(&self, key: &str, segment: Segment) -> bool {
        let applied = self.shared.store.upsert_segment(key, segment);
        self.notify_one(applied, key, false)
    }

    /// Deletes a flag (leaves a tombstone) if `version` is newer than the stored one; returns whether it was
    /// applied.
    pub fn delete_flag(&self, key: &str, version: u64) -> bool {
        let applied = self.shared.store.delete_flag(key, version);
        self.notify_one(applied, key, true)
    }

    /// Deletes a segment (leaves a tombstone) if `version` is newer than the stored one; returns whether it was
    /// applied.
    pub fn delete_segment(&self, key: &str, version: u64) -> bool {
        let applied = self.shared.store.delete_segment(key, version);
        self.notify_one(applied, key, false)
    }

    /// Reports the data source's state, and the error that caused it if any. An interruption before the first
    /// data leaves the state `Initializing`; `Off` is final.
    pub fn update_status(&self, state: DataSourceState, error: Option<DataSourceErrorInfo>) {
        self.shared.status.send_if_modified(|status| match status.next(state, error) {
            Some(next) => {
                *status = next;
                true
            }
            None => false,
        });
    }

    /// The current status.
    pub fn status(&self) -> DataSourceStatus {
        self.shared.status.borrow().clone()
    }

    fn notify_one(&self, applied: Option<Arc<FlagData>>, key: &str, is_flag: bool) -> bool {
        let Some(data) = applied else { return false };
        self.shared.data_version.send_modify(|v| *v += 1);
        let mut changed = Changed::default();
        if is_flag { &mut changed.flags } else { &mut changed.segments }.insert(key.to_owned());
        self.notify(&data, &changed);
        true
    }

    fn notify(&self, data: &FlagData, changed: &Changed) {
        if changed.is_empty() || self.shared.changes.receiver_count() == 0 {
            return;
        }
        for key in affected_flags(data, changed) {
            // Fails only when every listener has gone.
            let _ = self.shared.changes.send(FlagChange { key });
        }
    }
}

/// Tells a data source to stop: the client was closed or dropped.
#[derive(Debug, Clone)]
pub struct Shutdown(pub(crate) watch::Receiver<bool>);

impl Shutdown {
    /// Whether the data source should stop now.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until the data source should stop.
    pub async fn wait(&mut self) {
        // An error means the client is gone: stop too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::DataSourceErrorKind;
    use pennant_eval::Store as _;
    use serde_json::json;

    fn drain(rx: &mut broadcast::Receiver<FlagChange>) -> Vec<String> {
        let mut keys = Vec::new();
        while let Ok(change) = rx.try_recv() {
            keys.push(change.key);
        }
        keys.sort();
        keys
    }

    #[test]
    fn changes_are_announced_with_their_dependents_and_only_when_applied() {
        let updates = DataSourceUpdates::new();
        let mut rx = updates.shared.changes.subscribe();
        let data: FlagData = serde_json::from_value(json!({
            "flags": {
                "a": {"key": "a", "version": 1},
                "b": {"key": "b", "version": 1, "prerequisites": [{"key": "a", "variation": 0}]},
                "s": {"key": "s", "version": 1, "rules": [{"id": "r", "variation": 0, "clauses": [
                    {"attribute": "key", "op": "segmentMatch", "values": ["seg"]}]}]}
            },
            "segments": {"seg": {"key": "seg", "version": 1}}
        }))
        .unwrap();
        updates.init(data.clone());
        assert_eq!(drain(&mut rx), ["a", "b", "s"]);
        updates.init(data);
        assert!(drain(&mut rx).is_empty(), "an identical put changes nothing");

        let flag: Flag = serde_json::from_value(json!({"key": "a", "version": 2, "on": true})).unwrap();
        assert!(updates.upsert_flag("a", flag.clone()));
        assert_eq!(drain(&mut rx), ["a", "b"]);
        assert!(!updates.upsert_flag("a", flag), "an old version is ignored");
        assert!(drain(&mut rx).is_empty());

        let segment: Segment = serde_json::from_value(json!({"key": "seg", "version": 2})).unwrap();
        assert!(updates.upsert_segment("seg", segment));
        assert_eq!(drain(&mut rx), ["s"]);
        assert!(updates.delete_segment("seg", 3));
        assert_eq!(drain(&mut rx), ["s"]);
        assert!(updates.delete_flag("b", 2));
        assert_eq!(drain(&mut rx), ["b"]);
        assert!(!updates.delete_flag("b", 2));
        assert!(updates.shared.store.load().flag("b").unwrap().deleted);
    }

    #[test]
    fn data_updates_count_every_data_set_and_applied_change_only() {
        let updates = DataSourceUpdates::new();
        let mut rx = updates.shared.data_version.subscribe();
        updates.init(FlagData::default());
        assert!(rx.has_changed().unwrap(), "a first, empty data set is news");
        assert_eq!(*rx.borrow_and_update(), 1);
        let flag: Flag = serde_json::from_value(json!({"key": "a", "version": 2})).unwrap();
        assert!(updates.upsert_flag("a", flag.clone()));
        assert_eq!(*rx.borrow_and_update(), 2);
        assert!(!updates.upsert_flag("a", flag));
        assert!(!updates.delete_flag("a", 1));
        assert!(!rx.has_changed().unwrap(), "ignored changes are not news");
        assert!(updates.delete_flag("a", 3));
        assert_eq!(*rx.borrow_and_update(), 3);
    }

    #[test]
    fn status_updates_follow_launchdarkly_rules() {
        let updates = DataSourceUpdates::new();
        let mut rx = updates.shared.status.subscribe();
        let refused = DataSourceErrorInfo::new(DataSourceErrorKind::NetworkError, "refused");
        updates.update_status(DataSourceState::Interrupted, Some(refused));
        assert!(rx.has_changed().unwrap(), "the error is news even though the state stays");
        assert_eq!(rx.borrow_and_update().state, DataSourceState::Initializing);
        updates.update_status(DataSourceState::Valid, None);
        assert_eq!(rx.borrow_and_update().state, DataSourceState::Valid);
        updates.update_status(DataSourceState::Valid, None);
        assert!(!rx.has_changed().unwrap(), "no change, no notification");
        updates.update_status(DataSourceState::Off, None);
        updates.update_status(DataSourceState::Valid, None);
        assert_eq!(updates.status().state, DataSourceState::Off);
    }
}
