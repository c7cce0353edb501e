//! The data source's status, as LaunchDarkly SDKs report it.

use std::time::SystemTime;

/// What state the data source is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataSourceState {
    /// Started, and has not received data yet. A failure before the first data keeps this state (with the error
    /// in [`DataSourceStatus::last_error`]).
    Initializing,
    /// Has data and is receiving updates.
    Valid,
    /// Had data, and lost its connection: the data is kept and served while it reconnects.
    Interrupted,
    /// Stopped for good: a permanent error (such as a rejected SDK key) or the client was closed.
    Off,
}

/// What kind of error the data source met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataSourceErrorKind {
    /// No connection, a timeout, or a connection that broke or ended.
    NetworkError,
    /// The server answered with an error status ([`DataSourceErrorInfo::status_code`]).
    ErrorResponse,
    /// The server sent data that could not be read.
    InvalidData,
}

/// The last error of the data source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSourceErrorInfo {
    /// What kind of error.
    pub kind: DataSourceErrorKind,
    /// The HTTP status, for [`DataSourceErrorKind::ErrorResponse`].
    pub status_code: Option<u16>,
    /// A description.
    pub message: String,
    /// When it happened.
    pub time: SystemTime,
}

impl DataSourceErrorInfo {
    /// An error of this kind, now.
    pub fn new(kind: DataSourceErrorKind, message: impl Into<String>) -> DataSourceErrorInfo {
        DataSourceErrorInfo { kind, status_code: None, message: message.into(), time: SystemTime::now() }
    }

    /// An error status from the server, now.
    pub fn response(status_code: u16, message: impl Into<String>) -> DataSourceErrorInfo {
        DataSourceErrorInfo {
            status_code: Some(status_code),
            ..DataSourceErrorInfo::new(DataSourceErrorKind::ErrorResponse, message)
        }
    }
}

/// The data source's status: its state, since when, and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSourceStatus {
    /// The state.
    pub state: DataSourceState,
    /// When the state last changed.
    pub state_since: SystemTime,
    /// The most recent error, if any (kept after recovery).
    pub last_error: Option<DataSourceErrorInfo>,
}

impl DataSourceStatus {
    pub(crate) fn initializing() -> DataSourceStatus {
        DataSourceStatus { state: DataSourceState::Initializing, state_since: SystemTime::now(), last_error: None }
    }

    /// The status after a data source reported `state` (and maybe an error), with LaunchDarkly's rules: an
    /// interruption before the first data leaves the state `Initializing`, and `Off` is final. Returns `None`
    /// when nothing changed.
    pub(crate) fn next(&self, state: DataSourceState, error: Option<DataSourceErrorInfo>) -> Option<DataSourceStatus> {
        if self.state == DataSourceState::Off {
            return None;
        }
        let state = match (self.state, state) {
            (DataSourceState::Initializing, DataSourceState::Interrupted) => DataSourceState::Initializing,
            (_, state) => state,
        };
        if state == self.state && error.is_none() {
            return None;
        }
        Some(DataSourceStatus {
            state,
            state_since: if state == self.state { self.state_since } else { SystemTime::now() },
            last_error: error.or_else(|| self.last_error.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataSourceState::*;

    fn network() -> Option<DataSourceErrorInfo> {
        Some(DataSourceErrorInfo::new(DataSourceErrorKind::NetworkError, "refused"))
    }

    #[test]
    fn an_interruption_before_the_first_data_stays_initializing() {
        let start = DataSourceStatus::initializing();
        let next = start.next(Interrupted, network()).unwrap();
        assert_eq!(next.state, Initializing);
        assert_eq!(next.state_since, start.state_since, "the state did not change");
        assert_eq!(next.last_error.as_ref().unwrap().message, "refused");
        let valid = next.next(Valid, None).unwrap();
        assert_eq!(valid.state, Valid);
        assert!(valid.last_error.is_some(), "the last error is kept after recovery");
        assert_eq!(valid.next(Interrupted, network()).unwrap().state, Interrupted);
    }

    #[test]
    fn nothing_changes_without_a_new_state_or_error_and_off_is_final() {
        let valid = DataSourceStatus::initializing().next(Valid, None).unwrap();
        assert!(valid.next(Valid, None).is_none());
        let off = valid.next(Off, Some(DataSourceErrorInfo::response(401, "unauthorized"))).unwrap();
        assert_eq!((off.state, off.last_error.as_ref().unwrap().status_code), (Off, Some(401)));
        assert!(off.next(Valid, None).is_none());
        assert!(off.next(Interrupted, network()).is_none());
    }
}
