//! Data sources: where the client's flag data comes from. Streaming and polling speak LaunchDarkly's FDv1
//! protocol; the file data source reads local JSON files; [`TestData`](crate::TestData) is defined in code.

mod backoff;
mod body;
mod file;
mod polling;
mod streaming;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub use crate::updates::{DataSourceUpdates, Shutdown};
pub(crate) use file::FileDataSource;
pub(crate) use polling::PollingDataSource;
pub(crate) use streaming::StreamingDataSource;

use crate::status::{DataSourceErrorInfo, DataSourceErrorKind};

/// The future a data source runs as.
pub type SourceFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Something that supplies the client's flag data.
///
/// The client calls [`DataSource::run`] once when it starts and spawns the future on the Tokio runtime. The future
/// applies data through `updates` ([`DataSourceUpdates::init`] first, then upserts and deletes), reports its
/// state with [`DataSourceUpdates::update_status`] (`Valid` once it has data), and returns when `shutdown` is set
/// or when it stops for good (after reporting `Off`).
pub trait DataSource: Send + Sync + fmt::Debug + 'static {
    /// Starts supplying data.
    fn run(&self, updates: DataSourceUpdates, shutdown: Shutdown) -> SourceFuture;
}

/// Why one connection or request ended.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth retrying: network errors, timeouts, bad data, and the HTTP statuses LaunchDarkly SDKs retry.
    Retry(DataSourceErrorInfo),
    /// Permanent (401, 403, 404 and other client errors): the data source stops.
    Stop(DataSourceErrorInfo),
}

/// LaunchDarkly's rule: 400, 408, 429 and every status outside 4xx are recoverable; other 4xx are not (a bad SDK
/// key will not become good by retrying).
pub(crate) fn is_recoverable(status: u16) -> bool {
    !(400..500).contains(&status) || matches!(status, 400 | 408 | 429)
}

/// The failure an error status means.
pub(crate) fn status_failure(status: reqwest::StatusCode, what: &str) -> Failure {
    let info = DataSourceErrorInfo::response(status.as_u16(), format!("{what} answered {status}"));
    if is_recoverable(status.as_u16()) { Failure::Retry(info) } else { Failure::Stop(info) }
}

/// A network-level failure (always retried).
pub(crate) fn network_failure(message: impl Into<String>) -> Failure {
    Failure::Retry(DataSourceErrorInfo::new(DataSourceErrorKind::NetworkError, message))
}

/// Data that could not be read (retried: a fresh connection starts with a full data set).
pub(crate) fn invalid_data(message: impl Into<String>) -> Failure {
    Failure::Retry(DataSourceErrorInfo::new(DataSourceErrorKind::InvalidData, message))
}

/// An error with its causes, `outer: inner: …` (reqwest's own message hides why a request failed, such as a
/// refused connection).
pub(crate) fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The HTTP client both network data sources use: connect timeout, the SDK's `User-Agent`, TLS on rustls.
pub(crate) fn http_client(connect_timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    // The process-wide TLS provider; when one is installed already, that one is used.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("PennantRustSDK/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("sending failed")]
        Send(#[source] std::io::Error),
    }

    #[test]
    fn descriptions_include_the_causes() {
        let error = Outer::Send(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(describe(&error), "sending failed: connection refused");
    }

    #[test]
    fn http_statuses_are_classified_as_launchdarkly_sdks_do() {
        for status in [400, 408, 429, 500, 502, 503, 504, 599, 301, 302] {
            assert!(is_recoverable(status), "{status} is retried");
        }
        for status in [401, 403, 404, 405, 410, 413, 418, 499] {
            assert!(!is_recoverable(status), "{status} is permanent");
        }
        let Failure::Stop(info) = status_failure(reqwest::StatusCode::UNAUTHORIZED, "the stream") else {
            panic!("401 is permanent")
        };
        assert_eq!((info.kind, info.status_code), (DataSourceErrorKind::ErrorResponse, Some(401)));
        assert!(info.message.contains("401"), "{}", info.message);
        assert!(matches!(status_failure(reqwest::StatusCode::SERVICE_UNAVAILABLE, "x"), Failure::Retry(_)));
    }
}
