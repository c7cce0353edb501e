//! Environments whose data lives elsewhere. A relay (`pennant relay`) mirrors environments of an upstream Pennant
//! or LaunchDarkly service: it receives each one's flags and segments through the SDK and pushes them here, and
//! the SDK endpoints serve them exactly as they serve the store's environments.
//!
//! Each update is a whole data set (the mirror's owner does not need to know what changed): the mirror compares it
//! with the previous one by item and version and sends connected SDKs a `patch` or `delete` for each difference,
//! as the outbox relay does for the store. So an upstream reconnection that delivers the same data again sends
//! nothing, and one that missed changes sends exactly those.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use bytes::Bytes;
use pennant_eval::{Flag, Segment};
use pennant_store::EnvCredential;
use serde_json::json;

use crate::hub::{Hub, frame};
use crate::{EnvId, StreamError};

/// An environment's credentials and settings, as the mirror's owner knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorKeys {
    /// The server-side SDK key.
    pub sdk_key: String,
    /// The mobile key, if mobile SDKs may connect.
    pub mobile_key: Option<String>,
    /// The client-side ID, if JavaScript SDKs may connect.
    pub client_side_id: Option<String>,
    /// Whether client-side requests must carry the secure-mode hash of their context.
    pub secure_mode: bool,
}

/// What an update changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorUpdate {
    /// Flags and segments added or changed (by version).
    pub upserted: usize,
    /// Flags and segments that are gone.
    pub deleted: usize,
}

#[derive(Debug)]
struct MirrorEnv {
    keys: MirrorKeys,
    /// `{"flags": …, "segments": …}`, keys in order; `None` until the first data arrives.
    payload: Option<Bytes>,
    flags: HashMap<String, u64>,
    segments: HashMap<String, u64>,
}

#[derive(Debug, Default)]
struct Inner {
    envs: HashMap<EnvId, MirrorEnv>,
    credentials: HashMap<String, EnvCredential>,
}

/// Mirrored environments: their credentials and their current data.
#[derive(Debug, Default)]
pub struct Mirror {
    inner: RwLock<Inner>,
}

/// One difference between two data sets.
enum Change<'a> {
    Flag(&'a str, &'a Flag),
    Segment(&'a str, &'a Segment),
    Deleted { kind: &'static str, key: String, version: u64 },
}

impl Mirror {
    /// An empty mirror.
    pub fn new() -> Mirror {
        Mirror::default()
    }

    /// Adds an environment (no data yet: its SDK endpoints answer 503 until the first [`Mirror::update`]). A
    /// credential that another environment uses already is refused.
    pub fn add_environment(&self, env: EnvId, keys: MirrorKeys) -> Result<(), StreamError> {
        let mut inner = self.write()?;
        if inner.envs.contains_key(&env) {
            return Err(StreamError::Internal(format!("environment {}/{} is mirrored twice", env.project, env.env)));
        }
        let credentials = [
            ("sdk", Some(&keys.sdk_key)),
            ("mobile", keys.mobile_key.as_ref()),
            ("client", keys.client_side_id.as_ref()),
        ];
        for (_, key) in &credentials {
            if let Some(key) = key
                && inner.credentials.contains_key(key.as_str())
            {
                return Err(StreamError::Internal("two mirrored environments share a credential".into()));
            }
        }
        for (kind, key) in credentials {
            if let Some(key) = key {
                let credential =
                    EnvCredential { kind: kind.to_owned(), project_key: env.project.clone(), env_key: env.env.clone() };
                inner.credentials.insert(key.clone(), credential);
            }
        }
        inner.envs.insert(env, MirrorEnv { keys, payload: None, flags: HashMap::new(), segments: HashMap::new() });
        Ok(())
    }

    /// Replaces an environment's data with `flags` and `segments` (deleted items left out), and sends connected
    /// SDKs what changed.
    pub fn update<'a>(
        &self,
        hub: &Hub,
        env: &EnvId,
        flags: impl IntoIterator<Item = &'a Flag>,
        segments: impl IntoIterator<Item = &'a Segment>,
    ) -> Result<MirrorUpdate, StreamError> {
        let flags: BTreeMap<&str, &Flag> = flags.into_iter().map(|f| (f.key.as_str(), f)).collect();
        let segments: BTreeMap<&str, &Segment> = segments.into_iter().map(|s| (s.key.as_str(), s)).collect();
        let payload = Bytes::from(serde_json::to_vec(&json!({"flags": flags, "segments": segments}))?);
        let (changes, first) = {
            let mut inner = self.write()?;
            let mirrored = inner.envs.get_mut(env).ok_or_else(|| {
                StreamError::NotFound(format!("environment {}/{} is not mirrored", env.project, env.env))
            })?;
            let mut changes = Vec::new();
            for (key, flag) in &flags {
                if mirrored.flags.get(*key) != Some(&flag.version) {
                    changes.push(Change::Flag(key, flag));
                }
            }
            for (key, segment) in &segments {
                if mirrored.segments.get(*key) != Some(&segment.version) {
                    changes.push(Change::Segment(key, segment));
                }
            }
            // Gone: SDKs keep a tombstone, so the deletion must carry a version above the one they have.
            for (key, version) in &mirrored.flags {
                if !flags.contains_key(key.as_str()) {
                    changes.push(Change::Deleted { kind: "flags", key: key.clone(), version: version + 1 });
                }
            }
            for (key, version) in &mirrored.segments {
                if !segments.contains_key(key.as_str()) {
                    changes.push(Change::Deleted { kind: "segments", key: key.clone(), version: version + 1 });
                }
            }
            let first = mirrored.payload.is_none();
            mirrored.payload = Some(payload);
            mirrored.flags = flags.iter().map(|(k, f)| ((*k).to_owned(), f.version)).collect();
            mirrored.segments = segments.iter().map(|(k, s)| ((*k).to_owned(), s.version)).collect();
            (changes, first)
        };
        let deleted = changes.iter().filter(|c| matches!(c, Change::Deleted { .. })).count();
        let outcome = MirrorUpdate { upserted: changes.len() - deleted, deleted };
        // Before the first data nobody could connect; afterwards the new snapshot is built on the next request.
        let Some(channel) = hub.existing(env) else { return Ok(outcome) };
        channel.invalidate();
        if first {
            return Ok(outcome);
        }
        let old_style = channel.flag_connections() > 0;
        if channel.connections() == 0 && !old_style {
            return Ok(outcome);
        }
        for change in changes {
            let (frame_all, frame_flags) = change_frames(&change)?;
            channel.publish(frame_all);
            if old_style && let Some(frame_flags) = frame_flags {
                channel.publish_flags(frame_flags);
            }
            metrics::counter!("pennant_stream_changes_published_total").increment(1);
        }
        Ok(outcome)
    }

    /// An environment's current payload, `None` before its first data (or if it is not mirrored).
    pub fn payload(&self, env: &EnvId) -> Option<Bytes> {
        self.inner.read().ok()?.envs.get(env)?.payload.clone()
    }

    /// The environment and kind (`sdk`, `mobile`, `client`) of a credential.
    pub fn credential(&self, key: &str) -> Option<EnvCredential> {
        self.inner.read().ok()?.credentials.get(key).cloned()
    }

    /// An environment's secure-mode setting and SDK key.
    pub(crate) fn keys(&self, env: &EnvId) -> Option<MirrorKeys> {
        Some(self.inner.read().ok()?.envs.get(env)?.keys.clone())
    }

    fn write(&self) -> Result<std::sync::RwLockWriteGuard<'_, Inner>, StreamError> {
        self.inner.write().map_err(|_| StreamError::Internal("mirror lock poisoned".into()))
    }
}

/// The `/all` stream's frame for a change and, for flags, the old `/flags` stream's (paths without the kind).
fn change_frames(change: &Change<'_>) -> Result<(Bytes, Option<Bytes>), StreamError> {
    Ok(match change {
        Change::Flag(key, flag) => {
            let data = serde_json::to_value(flag)?;
            let old = frame("patch", &json!({"path": format!("/{key}"), "data": data}));
            (frame("patch", &json!({"path": format!("/flags/{key}"), "data": data})), Some(old))
        }
        Change::Segment(key, segment) => {
            (frame("patch", &json!({"path": format!("/segments/{key}"), "data": segment})), None)
        }
        Change::Deleted { kind, key, version } => {
            let all = frame("delete", &json!({"path": format!("/{kind}/{key}"), "version": version}));
            let old =
                (*kind == "flags").then(|| frame("delete", &json!({"path": format!("/{key}"), "version": version})));
            (all, old)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Source;
    use std::sync::Arc;

    fn flag(key: &str, version: u64) -> Flag {
        serde_json::from_value(json!({"key": key, "version": version})).unwrap()
    }

    fn segment(key: &str, version: u64) -> Segment {
        serde_json::from_value(json!({"key": key, "version": version})).unwrap()
    }

    fn drain(rx: &mut tokio::sync::broadcast::Receiver<Bytes>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok()).map(|f| String::from_utf8(f.to_vec()).unwrap()).collect()
    }

    fn env() -> EnvId {
        EnvId { project: "relay".into(), env: "production".into() }
    }

    fn keys(sdk: &str) -> MirrorKeys {
        MirrorKeys {
            sdk_key: sdk.into(),
            mobile_key: Some(format!("mob-{sdk}")),
            client_side_id: None,
            secure_mode: true,
        }
    }

    #[tokio::test]
    async fn updates_send_connected_sdks_only_what_changed() {
        let mirror = Arc::new(Mirror::new());
        let hub = Hub::new(16);
        mirror.add_environment(env(), keys("sdk-1")).unwrap();
        let source = Source::Mirror(mirror.clone());
        let channel = hub.channel(&env());
        let not_ready = channel.snapshot(&source).await.unwrap_err();
        assert!(matches!(not_ready, StreamError::NotReady(_)), "{not_ready:?}");

        let first = mirror.update(&hub, &env(), [&flag("a", 1), &flag("b", 1)], []).unwrap();
        assert_eq!(first, MirrorUpdate { upserted: 2, deleted: 0 });
        let snapshot = channel.snapshot(&source).await.unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&snapshot.payload).unwrap();
        assert_eq!(payload["flags"]["b"]["version"], 1);

        let mut rx = channel.subscribe();
        let outcome = mirror.update(&hub, &env(), [&flag("a", 2)], [&segment("s", 1)]).unwrap();
        assert_eq!(outcome, MirrorUpdate { upserted: 2, deleted: 1 });
        let frames = drain(&mut rx);
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert!(
            frames[0].starts_with("event: patch\ndata: {\"data\":{") && frames[0].contains("\"path\":\"/flags/a\"")
        );
        assert!(frames[1].contains("\"path\":\"/segments/s\""), "{frames:?}");
        assert_eq!(frames[2], "event: delete\ndata: {\"path\":\"/flags/b\",\"version\":2}\n\n");
        // The snapshot was rebuilt from the new data.
        let snapshot = channel.snapshot(&source).await.unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&snapshot.payload).unwrap();
        assert_eq!((payload["flags"]["a"]["version"].as_u64(), payload["flags"].get("b")), (Some(2), None));

        let same = mirror.update(&hub, &env(), [&flag("a", 2)], [&segment("s", 1)]).unwrap();
        assert_eq!(same, MirrorUpdate::default());
        assert!(drain(&mut rx).is_empty(), "the same data again sends nothing");
    }

    #[test]
    fn credentials_resolve_to_their_environment_and_must_be_unique() {
        let mirror = Mirror::new();
        mirror.add_environment(env(), keys("sdk-1")).unwrap();
        let found = mirror.credential("mob-sdk-1").unwrap();
        assert_eq!((found.kind.as_str(), found.env_key.as_str()), ("mobile", "production"));
        assert_eq!(mirror.credential("sdk-1").unwrap().kind, "sdk");
        assert!(mirror.credential("sdk-2").is_none());
        assert!(mirror.keys(&env()).unwrap().secure_mode);
        let other = EnvId { project: "relay".into(), env: "test".into() };
        assert!(mirror.add_environment(other.clone(), keys("sdk-1")).is_err(), "a shared key is refused");
        assert!(mirror.add_environment(env(), keys("sdk-3")).is_err(), "an environment twice is refused");
        assert!(mirror.credential("sdk-3").is_none(), "nothing of a refused environment is kept");
        assert!(mirror.update(&Hub::new(1), &other, [], []).is_err(), "unknown environment");
    }
}
