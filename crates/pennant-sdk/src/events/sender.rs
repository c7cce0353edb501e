//! Delivery: each payload is posted to `{events_uri}/bulk` as LaunchDarkly's SDKs post it (go-sdk-events
//! `event_sender.go`): `Authorization: <sdk key>`, `Content-Type: application/json`,
//! `X-LaunchDarkly-Event-Schema: 4`, a fresh `X-LaunchDarkly-Payload-ID` per payload (the same on its retry, so
//! the server can discard a duplicate), optionally gzipped.
//!
//! A 2xx is success, and its `Date` header tells the events server's clock (for debug events). 401 and 403 mean
//! the SDK key is refused: this payload and every later one are dropped, and no more events are recorded. Another
//! client error (404, 413, …) drops this payload. A network error, a timeout, or 400, 408, 429 or 5xx is retried
//! once after a second, then the payload is dropped.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, DATE};
use tokio::sync::mpsc;

use super::processor::Job;
use super::redact::Redaction;
use super::{FlushError, Shared};
use crate::config::{Config, endpoint};
use crate::source::{describe, is_recoverable};

/// `X-LaunchDarkly-Event-Schema`: contexts.
pub(crate) const EVENT_SCHEMA: &str = "4";
/// How long to wait before the one retry.
pub(crate) const RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest a post may take (shorter when the configured read timeout is).
pub(crate) const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Posts payloads, one at a time, in order.
#[derive(Debug)]
pub(crate) struct HttpSender {
    http: reqwest::Client,
    url: String,
    sdk_key: String,
    compress: bool,
    timeout: Duration,
    shared: Arc<Shared>,
    redaction: Redaction,
}

impl HttpSender {
    pub(crate) fn new(config: &Config, http: reqwest::Client, shared: Arc<Shared>, redaction: Redaction) -> HttpSender {
        HttpSender {
            http,
            url: endpoint(config.events_uri(), "bulk"),
            sdk_key: config.sdk_key().to_owned(),
            compress: config.compress_events(),
            timeout: config.read_timeout().min(MAX_REQUEST_TIMEOUT),
            shared,
            redaction,
        }
    }

    /// Delivers each job and answers whoever waits for it, until the processor is gone.
    pub(crate) async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(mut job) = jobs.recv().await {
            let outcome = if job.is_empty() { Ok(()) } else { self.deliver(&job).await };
            match &outcome {
                Err(FlushError::Failed { message }) => {
                    tracing::warn!(url = %self.url, events = job.len(), error = %message, "analytics events dropped");
                }
                Err(e) => tracing::debug!(events = job.len(), error = %e, "analytics events dropped"),
                Ok(()) => {}
            }
            if let Some(reply) = job.reply.take() {
                let _ = reply.send(outcome);
            }
        }
    }

    async fn deliver(&self, job: &Job) -> Result<(), FlushError> {
        if let Some(status) = self.shared.refused() {
            return Err(FlushError::Unauthorized { status });
        }
        let body = self.body(job).map_err(|e| FlushError::Failed { message: format!("encoding failed: {e}") })?;
        let payload_id = uuid::Uuid::new_v4().to_string();
        let mut last_error = String::new();
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(RETRY_DELAY).await;
            }
            let mut request = self
                .http
                .post(&self.url)
                .timeout(self.timeout)
                .header(AUTHORIZATION, &self.sdk_key)
                .header(CONTENT_TYPE, "application/json")
                .header("X-LaunchDarkly-Event-Schema", EVENT_SCHEMA)
                .header("X-LaunchDarkly-Payload-ID", &payload_id);
            if self.compress {
                request = request.header(CONTENT_ENCODING, "gzip");
            }
            let response = match request.body(body.clone()).send().await {
                Ok(response) => response,
                Err(e) => {
                    last_error = describe(&e);
                    continue;
                }
            };
            let status = response.status();
            if status.is_success() {
                if let Some(time) = server_time(response.headers().get(DATE)) {
                    self.shared.server_time_ms.fetch_max(time, Ordering::Relaxed);
                }
                tracing::debug!(events = job.len(), %payload_id, "analytics events delivered");
                return Ok(());
            }
            let code = status.as_u16();
            if matches!(code, 401 | 403) {
                tracing::error!(url = %self.url, status = code, "the events endpoint refused the SDK key; no more analytics events will be sent");
                self.shared.refused.store(code, Ordering::Release);
                self.shared.stopped.store(true, Ordering::Relaxed);
                return Err(FlushError::Unauthorized { status: code });
            }
            if !is_recoverable(code) {
                return Err(FlushError::Failed { message: format!("the events endpoint answered {status}") });
            }
            last_error = format!("the events endpoint answered {status}");
        }
        Err(FlushError::Failed { message: format!("{last_error} (retried once)") })
    }

    /// The JSON array, gzipped if configured.
    fn body(&self, job: &Job) -> Result<Bytes, std::io::Error> {
        let json = serde_json::to_vec(&job.payload(&self.redaction))?;
        if !self.compress {
            return Ok(Bytes::from(json));
        }
        let mut gzip = flate2::write::GzEncoder::new(Vec::with_capacity(json.len() / 4), flate2::Compression::fast());
        gzip.write_all(&json)?;
        Ok(Bytes::from(gzip.finish()?))
    }
}

/// An HTTP `Date` header (`Sun, 06 Nov 1994 08:49:37 GMT`) as Unix ms.
fn server_time(date: Option<&reqwest::header::HeaderValue>) -> Option<u64> {
    let date = chrono::DateTime::parse_from_rfc2822(date?.to_str().ok()?).ok()?;
    u64::try_from(date.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn date_headers_are_read() {
        let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(server_time(Some(&date)), Some(784_111_777_000));
        assert_eq!(server_time(Some(&HeaderValue::from_static("yesterday"))), None);
        assert_eq!(server_time(None), None);
    }
}
