//! The load tools' errors.

/// What can go wrong in a load run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line arguments.
    #[error("{0}")]
    Args(String),
    /// I/O (sockets, pipes, /proc).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A control message or API body that is not the expected JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The server could not be reached.
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The REST API refused a request.
    #[error("{method} {path} answered {status}: {body}")]
    Api { method: &'static str, path: String, status: u16, body: String },
    /// A malformed SSE response.
    #[error("stream: {0}")]
    Stream(#[from] crate::sse::stream::StreamError),
    /// A worker failed or answered out of turn.
    #[error("worker: {0}")]
    Worker(String),
    /// Reading the server's /proc entries failed.
    #[error("sampling the server process: {0}")]
    Sample(String),
    /// The run finished but did not pass (counts never matched, double counting, refused batches).
    #[error("{0}")]
    Failed(String),
}
