//! Streaming: `GET {stream_uri}/all`, server-sent events `put` (replace everything), `patch` (upsert if newer)
//! and `delete` (tombstone if newer), reconnecting with backoff.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use eventsource_stream::{EventStream, EventStreamError};
use futures_util::StreamExt as _;
use pennant_eval::{Flag, Segment};
use reqwest::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::body::{ReadError, lines};
use super::{DataSource, Failure, Shutdown, SourceFuture, describe, invalid_data, network_failure, status_failure};
use crate::config::{Config, endpoint};
use crate::data::FlagData;
use crate::status::DataSourceState;
use crate::updates::DataSourceUpdates;

/// The streaming data source.
#[derive(Clone)]
pub(crate) struct StreamingDataSource {
    http: reqwest::Client,
    url: String,
    sdk_key: String,
    read_timeout: Duration,
    initial_reconnect_delay: Duration,
    max_reconnect_delay: Duration,
}

impl fmt::Debug for StreamingDataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingDataSource").field("url", &self.url).finish_non_exhaustive()
    }
}

impl StreamingDataSource {
    pub(crate) fn new(config: &Config, http: reqwest::Client) -> StreamingDataSource {
        StreamingDataSource {
            http,
            url: endpoint(config.stream_uri(), "all"),
            sdk_key: config.sdk_key().to_owned(),
            read_timeout: config.read_timeout(),
            initial_reconnect_delay: config.initial_reconnect_delay(),
            max_reconnect_delay: config.max_reconnect_delay(),
        }
    }

    async fn run_until_stopped(self, updates: DataSourceUpdates, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(self.initial_reconnect_delay, self.max_reconnect_delay);
        loop {
            let failure = tokio::select! {
                biased;
                () = shutdown.wait() => return,
                failure = self.connect_once(&updates, &mut backoff) => failure,
            };
            match failure {
                Failure::Stop(error) => {
                    tracing::error!(url = %self.url, error = %error.message, "stream failed for good; no more flag updates");
                    updates.update_status(DataSourceState::Off, Some(error));
                    return;
                }
                Failure::Retry(error) => {
                    tracing::warn!(url = %self.url, error = %error.message, "stream interrupted; reconnecting");
                    updates.update_status(DataSourceState::Interrupted, Some(error));
                }
            }
            let delay = backoff.next_delay(Instant::now());
            tokio::select! {
                biased;
                () = shutdown.wait() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One connection, from the request until it fails or ends.
    async fn connect_once(&self, updates: &DataSourceUpdates, backoff: &mut Backoff) -> Failure {
        let request = self
            .http
            .get(&self.url)
            .header(AUTHORIZATION, &self.sdk_key)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache")
            .send();
        let response = match tokio::time::timeout(self.read_timeout, request).await {
            Err(_) => return network_failure(format!("no response from the stream within {:?}", self.read_timeout)),
            Ok(Err(e)) => return network_failure(format!("connecting to the stream failed: {}", describe(&e))),
            Ok(Ok(response)) => response,
        };
        if !response.status().is_success() {
            return status_failure(response.status(), "the stream");
        }
        backoff.connected(Instant::now());
        tracing::debug!(url = %self.url, "stream connected");
        let events = EventStream::new(lines(response, self.read_timeout));
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if let Err(failure) = apply_event(updates, &event.event, &event.data) {
                        return failure;
                    }
                }
                Err(EventStreamError::Transport(ReadError::Timeout(d))) => {
                    return network_failure(format!("the stream sent nothing, not even a heartbeat, for {d:?}"));
                }
                Err(EventStreamError::Transport(e)) => {
                    return network_failure(format!("the stream broke: {}", describe(&e)));
                }
                Err(e) => return invalid_data(format!("the stream is not valid server-sent events: {e}")),
            }
        }
        network_failure("the server ended the stream")
    }
}

impl DataSource for StreamingDataSource {
    fn run(&self, updates: DataSourceUpdates, shutdown: Shutdown) -> SourceFuture {
        Box::pin(self.clone().run_until_stopped(updates, shutdown))
    }
}

#[derive(Deserialize)]
struct Put {
    data: FlagData,
}

#[derive(Deserialize)]
struct Patch<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Delete<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
    version: u64,
}

/// What a `patch` or `delete` path names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Flag(&'a str),
    Segment(&'a str),
}

fn target(path: &str) -> Option<Target<'_>> {
    if let Some(key) = path.strip_prefix("/flags/") {
        return (!key.is_empty()).then_some(Target::Flag(key));
    }
    path.strip_prefix("/segments/").filter(|key| !key.is_empty()).map(Target::Segment)
}

/// Applies one server-sent event. Unknown events and paths are ignored, as LaunchDarkly SDKs do; data that cannot
/// be read fails the connection (the SDK reconnects and starts again from a `put`).
pub(crate) fn apply_event(updates: &DataSourceUpdates, event: &str, data: &str) -> Result<(), Failure> {
    match event {
        "put" => {
            let put: Put = serde_json::from_str(data).map_err(|e| invalid_data(format!("malformed put: {e}")))?;
            updates.init(put.data);
            updates.update_status(DataSourceState::Valid, None);
        }
        "patch" => {
            let patch: Patch<'_> =
                serde_json::from_str(data).map_err(|e| invalid_data(format!("malformed patch: {e}")))?;
            let malformed = |e: serde_json::Error| invalid_data(format!("malformed patch of {}: {e}", patch.path));
            match target(&patch.path) {
                Some(Target::Flag(key)) => {
                    let flag: Flag = serde_json::from_str(patch.data.get()).map_err(malformed)?;
                    updates.upsert_flag(key, flag);
                }
                Some(Target::Segment(key)) => {
                    let segment: Segment = serde_json::from_str(patch.data.get()).map_err(malformed)?;
                    updates.upsert_segment(key, segment);
                }
                None => tracing::debug!(path = %patch.path, "ignoring a patch of an unknown path"),
            }
        }
        "delete" => {
            let delete: Delete<'_> =
                serde_json::from_str(data).map_err(|e| invalid_data(format!("malformed delete: {e}")))?;
            match target(&delete.path) {
                Some(Target::Flag(key)) => {
                    updates.delete_flag(key, delete.version);
                }
                Some(Target::Segment(key)) => {
                    updates.delete_segment(key, delete.version);
                }
                None => tracing::debug!(path = %delete.path, "ignoring a delete of an unknown path"),
            }
        }
        other => tracing::debug!(event = other, "ignoring an unknown stream event"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::DataSourceErrorKind;
    use pennant_eval::Store as _;

    fn updates() -> DataSourceUpdates {
        DataSourceUpdates::new()
    }

    const PUT: &str = r#"{"path":"/","data":{"flags":{"f":{"key":"f","version":3,"on":true}},
        "segments":{"s":{"key":"s","version":2,"included":["u"]}}}}"#;

    #[test]
    fn paths_name_flags_and_segments() {
        assert_eq!(target("/flags/a.b-c_d"), Some(Target::Flag("a.b-c_d")));
        assert_eq!(target("/segments/s"), Some(Target::Segment("s")));
        for path in ["/flags/", "/segments/", "/", "/other/x", "flags/x", ""] {
            assert_eq!(target(path), None, "{path}");
        }
    }

    #[test]
    fn put_replaces_everything_and_makes_the_source_valid() {
        let u = updates();
        apply_event(&u, "put", PUT).unwrap();
        assert_eq!(u.status().state, DataSourceState::Valid);
        assert!(u.shared.store.initialized());
        let data = u.shared.store.load();
        assert_eq!((data.flag("f").unwrap().version, data.segment("s").unwrap().included.len()), (3, 1));
        apply_event(&u, "put", r#"{"data":{"flags":{}}}"#).unwrap();
        assert!(u.shared.store.load().flag("f").is_none(), "a put without path, and with nothing, empties the store");
    }

    #[test]
    fn patch_and_delete_apply_only_newer_versions() {
        let u = updates();
        apply_event(&u, "put", PUT).unwrap();
        let flag = |data: &str| apply_event(&u, "patch", &format!(r#"{{"path":"/flags/f","data":{data}}}"#));
        flag(r#"{"key":"f","version":2,"on":false}"#).unwrap();
        assert!(u.shared.store.load().flag("f").unwrap().on, "an older version is ignored");
        flag(r#"{"key":"f","version":4,"on":false}"#).unwrap();
        assert!(!u.shared.store.load().flag("f").unwrap().on);
        // The data may come before the path.
        apply_event(&u, "patch", r#"{"data":{"key":"s","version":3,"included":[]},"path":"/segments/s"}"#).unwrap();
        assert!(u.shared.store.load().segment("s").unwrap().included.is_empty());

        apply_event(&u, "delete", r#"{"path":"/flags/f","version":4}"#).unwrap();
        assert!(!u.shared.store.load().flag("f").unwrap().deleted, "a delete must raise the version");
        apply_event(&u, "delete", r#"{"path":"/flags/f","version":5}"#).unwrap();
        assert!(u.shared.store.load().flag("f").unwrap().deleted);
        flag(r#"{"key":"f","version":5}"#).unwrap();
        assert!(u.shared.store.load().flag("f").unwrap().deleted, "the tombstone wins over an equal version");
        apply_event(&u, "delete", r#"{"path":"/segments/s","version":9}"#).unwrap();
        assert!(u.shared.store.load().segment("s").unwrap().deleted);
    }

    #[test]
    fn unknown_events_and_paths_are_ignored() {
        let u = updates();
        apply_event(&u, "put", PUT).unwrap();
        apply_event(&u, "ping", "").unwrap();
        apply_event(&u, "message", "whatever").unwrap();
        apply_event(&u, "patch", r#"{"path":"/other/f","data":{"anything":1}}"#).unwrap();
        apply_event(&u, "delete", r#"{"path":"/other/f","version":100}"#).unwrap();
        assert_eq!(u.shared.store.load().flag("f").unwrap().version, 3);
    }

    #[test]
    fn malformed_data_fails_the_connection_with_invalid_data() {
        let u = updates();
        for (event, data) in [
            ("put", "{"),
            ("put", r#"{"path":"/"}"#),
            ("put", r#"{"data":{"flags":[]}}"#),
            ("patch", r#"{"path":"/flags/f"}"#),
            ("patch", r#"{"path":"/flags/f","data":{"key":"f","version":"x"}}"#),
            ("patch", r#"{"path":"/segments/s","data":[]}"#),
            ("delete", r#"{"path":"/flags/f"}"#),
            ("delete", "null"),
        ] {
            match apply_event(&u, event, data) {
                Err(Failure::Retry(info)) => assert_eq!(info.kind, DataSourceErrorKind::InvalidData, "{event} {data}"),
                other => panic!("{event} {data}: {other:?}"),
            }
        }
        assert!(!u.shared.store.initialized());
    }
}
