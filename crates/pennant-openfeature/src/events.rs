//! OpenFeature's provider events (specification §5), from the SDK client's data-source status and flag changes.
//!
//! `open-feature` 0.3 does not carry provider events yet, so [`PennantProvider::events`](crate::PennantProvider::events)
//! delivers them to the application directly, with OpenFeature's types and rules: `PROVIDER_READY` when flag data is
//! valid (first data, and again after an interruption), `PROVIDER_STALE` when the connection is lost and the last data
//! is served, `PROVIDER_ERROR` when there is no data and the data source failed (or stopped), and
//! `PROVIDER_CONFIGURATION_CHANGED` with the keys of the flags whose results may have changed.

use pennant_sdk::{Client, DataSourceState, DataSourceStatus};
use tokio::sync::{broadcast, mpsc};

/// How many events wait for a slow reader (the task then waits for it; the SDK's own change buffer absorbs more).
const EVENT_BUFFER: usize = 256;

/// A provider event, as OpenFeature defines them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    /// `PROVIDER_READY`: flag data is valid.
    Ready,
    /// `PROVIDER_STALE`: the connection was lost; the last data is served.
    Stale {
        /// Why.
        message: String,
    },
    /// `PROVIDER_ERROR`: no data can be served (the data source failed before any data, or stopped).
    Error {
        /// Why.
        message: String,
    },
    /// `PROVIDER_CONFIGURATION_CHANGED`: flags changed.
    ConfigurationChanged {
        /// The flags whose evaluation results may have changed (sorted; dependents included).
        flags_changed: Vec<String>,
    },
}

impl ProviderEvent {
    /// OpenFeature's name of the event type.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderEvent::Ready => "PROVIDER_READY",
            ProviderEvent::Stale { .. } => "PROVIDER_STALE",
            ProviderEvent::Error { .. } => "PROVIDER_ERROR",
            ProviderEvent::ConfigurationChanged { .. } => "PROVIDER_CONFIGURATION_CHANGED",
        }
    }
}

/// The event a status change means, if any (`previous` is the last state an event was derived from).
fn status_event(previous: Option<DataSourceState>, status: &DataSourceStatus, has_data: bool) -> Option<ProviderEvent> {
    let message =
        || status.last_error.as_ref().map_or_else(|| "the data source stopped".to_owned(), |e| e.message.clone());
    match status.state {
        DataSourceState::Valid if previous != Some(DataSourceState::Valid) => Some(ProviderEvent::Ready),
        DataSourceState::Interrupted if previous != Some(DataSourceState::Interrupted) => {
            Some(ProviderEvent::Stale { message: message() })
        }
        // Failures before the first data: each one is news (the error changed even though the state did not).
        DataSourceState::Initializing if status.last_error.is_some() => {
            Some(ProviderEvent::Error { message: message() })
        }
        DataSourceState::Off if previous != Some(DataSourceState::Off) => Some(if has_data {
            ProviderEvent::Stale { message: message() }
        } else {
            ProviderEvent::Error { message: message() }
        }),
        _ => None,
    }
}

/// Starts the task that turns the client's notifications into events; it ends when the receiver is dropped or the
/// client stops for good.
pub(crate) fn spawn(client: &Client) -> mpsc::Receiver<ProviderEvent> {
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let mut status = client.data_source_status_receiver();
    let mut changes = client.flag_changes();
    let client = client.clone();
    tokio::spawn(async move {
        // What the application already knows: ready at once if the data is there.
        let mut last = None;
        let current = status.borrow_and_update().clone();
        if current.state == DataSourceState::Valid || client.initialized() {
            last = Some(current.state);
            if current.state == DataSourceState::Valid && tx.send(ProviderEvent::Ready).await.is_err() {
                return;
            }
        }
        loop {
            let event = tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = status.borrow_and_update().clone();
                    let event = status_event(last, &current, client.initialized());
                    last = Some(current.state);
                    event
                }
                change = changes.recv() => match change {
                    Ok(first) => {
                        // One event for the keys of one update (they arrive together).
                        let mut keys = vec![first.key];
                        while let Ok(more) = changes.try_recv() {
                            keys.push(more.key);
                        }
                        keys.sort();
                        keys.dedup();
                        Some(ProviderEvent::ConfigurationChanged { flags_changed: keys })
                    }
                    // Fell behind: which flags changed is unknown, so every one may have.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let all = client.flag_data().flags().map(|f| f.key.clone()).collect::<Vec<_>>();
                        let mut keys = all;
                        keys.sort();
                        Some(ProviderEvent::ConfigurationChanged { flags_changed: keys })
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if let Some(event) = event
                && tx.send(event).await.is_err()
            {
                return;
            }
            if last == Some(DataSourceState::Off) {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use pennant_sdk::{DataSourceErrorInfo, DataSourceErrorKind};
    use std::time::SystemTime;

    fn status(state: DataSourceState, error: Option<&str>) -> DataSourceStatus {
        DataSourceStatus {
            state,
            state_since: SystemTime::now(),
            last_error: error.map(|e| DataSourceErrorInfo::new(DataSourceErrorKind::NetworkError, e)),
        }
    }

    #[test]
    fn statuses_map_to_open_feature_events() {
        use DataSourceState::*;
        assert_eq!(status_event(None, &status(Valid, None), true), Some(ProviderEvent::Ready));
        assert_eq!(status_event(Some(Valid), &status(Valid, None), true), None, "no news");
        assert_eq!(
            status_event(Some(Valid), &status(Interrupted, Some("reset")), true),
            Some(ProviderEvent::Stale { message: "reset".into() })
        );
        assert_eq!(status_event(Some(Interrupted), &status(Valid, Some("reset")), true), Some(ProviderEvent::Ready));
        assert_eq!(
            status_event(None, &status(Initializing, Some("refused")), false),
            Some(ProviderEvent::Error { message: "refused".into() })
        );
        assert_eq!(status_event(None, &status(Initializing, None), false), None);
        assert_eq!(
            status_event(Some(Initializing), &status(Off, Some("401")), false),
            Some(ProviderEvent::Error { message: "401".into() })
        );
        assert_eq!(
            status_event(Some(Valid), &status(Off, None), true),
            Some(ProviderEvent::Stale { message: "the data source stopped".into() })
        );
        assert_eq!(ProviderEvent::Ready.kind(), "PROVIDER_READY");
    }
}
