//! The change bus between nodes. Within one process the store's own change watch wakes the outbox relay; with
//! several processes (API nodes and streaming nodes on PostgreSQL) a committed write is announced on NATS, and
//! every streaming node's relay wakes and reads the outbox from the database. The announcement carries only the
//! newest outbox ID: the database stays the source of truth, so a node that missed announcements (NATS down,
//! node partitioned) loses nothing — its relay also looks at the outbox on a timer and reads everything after
//! the last row it published, in ID order.

use std::time::Duration;

use bytes::Bytes;
use pennant_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;

use crate::StreamError;

/// A connection to NATS for change announcements.
#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    subject: String,
}

impl NatsBus {
    /// Connects (failing after `timeout` rather than waiting forever for a server that is not there).
    /// Announcements go to `<namespace>.changes`.
    pub async fn connect(url: &str, namespace: &str, timeout: Duration) -> Result<NatsBus, StreamError> {
        let connecting = async_nats::ConnectOptions::new().name("pennant").connect(url);
        let client = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| StreamError::Bus(format!("no answer from NATS at {url} within {timeout:?}")))?
            .map_err(|e| StreamError::Bus(format!("cannot connect to NATS at {url}: {e}")))?;
        Ok(NatsBus { client, subject: format!("{namespace}.changes") })
    }

    /// Announces every outbox row this process commits (API nodes).
    pub fn spawn_announcer(&self, store: Store, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut changes = store.subscribe();
            let mut announced = changes.borrow_and_update().outbox_id;
            loop {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = shutdown.changed() => {}
                }
                let newest = changes.borrow_and_update().outbox_id;
                if newest > announced {
                    let payload = Bytes::from(newest.to_string());
                    match bus.client.publish(bus.subject.clone(), payload).await {
                        Ok(()) => {
                            announced = newest;
                            metrics::counter!("pennant_bus_announcements_total").increment(1);
                        }
                        // The streaming nodes' timers catch up; the next change is announced again.
                        Err(e) => tracing::warn!(error = %e, "could not announce a change on NATS"),
                    }
                }
                if *shutdown.borrow() {
                    let _ = bus.client.flush().await;
                    break;
                }
            }
        })
    }

    /// A watch of the newest outbox ID announced by any node (streaming nodes hand it to the relay).
    pub async fn listen(&self, mut shutdown: watch::Receiver<bool>) -> Result<watch::Receiver<i64>, StreamError> {
        let mut subscriber = self
            .client
            .subscribe(self.subject.clone())
            .await
            .map_err(|e| StreamError::Bus(format!("cannot subscribe to {}: {e}", self.subject)))?;
        let (tx, rx) = watch::channel(0i64);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = subscriber.next() => {
                        let Some(message) = message else { break };
                        let id = std::str::from_utf8(&message.payload).ok().and_then(|t| t.parse::<i64>().ok());
                        match id {
                            Some(id) => {
                                metrics::counter!("pennant_bus_announcements_received_total").increment(1);
                                tx.send_modify(|newest| *newest = (*newest).max(id));
                            }
                            None => tracing::warn!("ignoring a malformed change announcement"),
                        }
                    }
                    _ = shutdown.changed() => if *shutdown.borrow() { break },
                }
            }
        });
        Ok(rx)
    }
}
