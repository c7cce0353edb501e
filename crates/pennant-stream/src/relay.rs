//! Turns committed outbox rows into `patch` and `delete` frames for connected SDKs, in commit order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pennant_store::{OutboxRow, Store, StoreError};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::hub::{EnvId, Hub, frame};

/// How the relay and heartbeats behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Longest wait between looks at the outbox when nothing is announced (changes by other processes).
    pub poll_interval: Duration,
    /// Outbox rows read per round.
    pub batch: u32,
    /// Interval of SSE comment heartbeats on every stream.
    pub heartbeat: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions { poll_interval: Duration::from_secs(1), batch: 1000, heartbeat: Duration::from_secs(60) }
    }
}

/// Starts the relay: from the outbox row committed last when it starts, it publishes every later change.
pub fn spawn_outbox_relay(
    store: Store,
    hub: Arc<Hub>,
    shutdown: watch::Receiver<bool>,
    options: RelayOptions,
) -> JoinHandle<()> {
    spawn_outbox_relay_with(store, hub, shutdown, options, None)
}

/// Like [`spawn_outbox_relay`], also woken by announcements of other nodes' commits (see [`crate::NatsBus`]).
pub fn spawn_outbox_relay_with(
    store: Store,
    hub: Arc<Hub>,
    mut shutdown: watch::Receiver<bool>,
    options: RelayOptions,
    announcements: Option<watch::Receiver<i64>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut announcements = announcements;
        let mut changes = store.subscribe();
        let mut last = changes.borrow_and_update().outbox_id;
        let mut heartbeat = tokio::time::interval(options.heartbeat);
        heartbeat.tick().await;
        loop {
            match relay_round(&store, &hub, last, options.batch).await {
                Ok(Some(id)) => {
                    last = id;
                    continue; // There may be more.
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "outbox relay could not read the outbox; retrying"),
            }
            let announced = async {
                match announcements.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = changes.changed() => {}
                () = announced => {}
                _ = tokio::time::sleep(options.poll_interval) => {}
                _ = heartbeat.tick() => {
                    for channel in hub.all() {
                        channel.heartbeat();
                    }
                }
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
    })
}

/// Publishes the rows after `last`; returns the newest ID handled, if any.
async fn relay_round(store: &Store, hub: &Hub, last: i64, batch: u32) -> Result<Option<i64>, StoreError> {
    let rows = store.outbox_after(last, batch).await?;
    let Some(newest) = rows.last().map(|r| r.id) else { return Ok(None) };
    // Write coalescing: a burst of changes to one item in this batch goes out once, as its latest state, in the
    // position of its last change.
    let mut seen = HashSet::new();
    let mut latest: Vec<&OutboxRow> = Vec::with_capacity(rows.len());
    for row in rows.iter().rev() {
        if seen.insert((&row.project_key, &row.env_key, &row.kind, &row.key)) {
            latest.push(row);
        } else {
            metrics::counter!("pennant_stream_coalesced_changes_total").increment(1);
        }
    }
    latest.reverse();
    for row in latest {
        let id = EnvId { project: row.project_key.clone(), env: row.env_key.clone() };
        let Some(channel) = hub.existing(&id) else { continue };
        channel.invalidate();
        let old_style = row.kind == "flag" && channel.flag_connections() > 0;
        if channel.connections() == 0 && !old_style {
            continue;
        }
        let (frame, flags_frame) = change_frames(store, row, old_style).await?;
        tracing::debug!(outbox_id = row.id, "publishing a change");
        channel.publish(frame);
        if let Some(frame) = flags_frame {
            channel.publish_flags(frame);
        }
        metrics::counter!("pennant_stream_changes_published_total").increment(1);
    }
    Ok(Some(newest))
}

/// The `/all` frame of a change and, when asked, the old `/flags` stream's frame (paths without the kind).
async fn change_frames(
    store: &Store,
    row: &OutboxRow,
    old_style: bool,
) -> Result<(bytes::Bytes, Option<bytes::Bytes>), StoreError> {
    let path = format!("/{}s/{}", row.kind, row.key);
    let old_path = format!("/{}", row.key);
    let found = match row.kind.as_str() {
        "flag" => match store.get_flag(&row.project_key, &row.key).await {
            Ok(record) => record.data.render(&row.env_key, record.version).map(serde_json::to_value),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        },
        _ => match store.get_segment(&row.project_key, &row.env_key, &row.key).await {
            Ok(record) => Some(serde_json::to_value(&record.data.segment)),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        },
    };
    Ok(match found {
        Some(Ok(data)) => {
            let old = old_style.then(|| frame("patch", &json!({"path": old_path, "data": data})));
            (frame("patch", &json!({"path": path, "data": data})), old)
        }
        Some(Err(e)) => return Err(StoreError::Corrupt(e.to_string())),
        None => {
            let old = old_style.then(|| frame("delete", &json!({"path": old_path, "version": row.version})));
            (frame("delete", &json!({"path": path, "version": row.version})), old)
        }
    })
}
