//! Analytics events, forwarded upstream in batches.
//!
//! The relay accepts LaunchDarkly's event routes as the main service does and forwards what SDKs post to the
//! upstream events service. Batches posted within one window with the same credential, route and schema are
//! joined into one upstream request (a fleet of SDKs becomes one stream of larger requests), gzipped, with its own
//! `X-LaunchDarkly-Payload-ID` kept on its retry. An SDK's request is answered only when the upstream has taken
//! its events: `202` then; the upstream's refusal (401, 403, 404, 413) as such; `503` with `Retry-After` when the
//! upstream cannot be reached, so the SDK retries. So the relay acknowledges nothing it could still lose.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

/// How long a failed upstream request waits before its one retry (LaunchDarkly SDKs wait a second too).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What batches are joined by: the same upstream route, credential and schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BatchKey {
    /// Path on the upstream events service, e.g. `/bulk` or `/events/bulk/{client-side ID}`.
    pub(crate) path: String,
    /// The `Authorization` header to send (server and mobile routes).
    pub(crate) authorization: Option<String>,
    /// `X-LaunchDarkly-Event-Schema` as the SDK sent it.
    pub(crate) schema: Option<String>,
}

/// How a forwarded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The upstream accepted the events.
    Delivered,
    /// The upstream refused them for good (its status).
    Refused(StatusCode),
    /// The upstream could not be reached, or kept failing.
    Failed,
}

#[derive(Debug, Default)]
struct Pending {
    /// The batches' elements, comma-separated.
    elements: Vec<u8>,
    events: usize,
    waiters: Vec<oneshot::Sender<Outcome>>,
}

/// Joins batches and posts them upstream.
#[derive(Debug)]
pub(crate) struct Forwarder {
    http: reqwest::Client,
    events_uri: String,
    window: Duration,
    max_batch_bytes: usize,
    pending: Mutex<HashMap<BatchKey, Pending>>,
}

impl Forwarder {
    pub(crate) fn new(http: reqwest::Client, events_uri: &str, window: Duration, max_batch_bytes: usize) -> Forwarder {
        Forwarder {
            http,
            events_uri: events_uri.trim_end_matches('/').to_owned(),
            window,
            max_batch_bytes,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a batch's events to the batch of `key`, which is sent when its window ends (or at once when it is
    /// large); resolves when the upstream answered.
    pub(crate) async fn submit(self: &Arc<Self>, key: BatchKey, events: &[&RawValue]) -> Outcome {
        if events.is_empty() {
            return Outcome::Delivered;
        }
        let (done, outcome) = oneshot::channel();
        let (first, full) = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let batch = pending.entry(key.clone()).or_default();
            for event in events {
                if !batch.elements.is_empty() {
                    batch.elements.push(b',');
                }
                batch.elements.extend_from_slice(event.get().as_bytes());
            }
            batch.events += events.len();
            batch.waiters.push(done);
            (batch.waiters.len() == 1, batch.elements.len() >= self.max_batch_bytes)
        };
        if full {
            let this = self.clone();
            tokio::spawn(async move { this.flush(&key).await });
        } else if first {
            let this = self.clone();
            let window = self.window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                this.flush(&key).await;
            });
        }
        // A dropped sender means the relay is going away: the SDK should retry.
        outcome.await.unwrap_or(Outcome::Failed)
    }

    /// Sends what is pending for `key`, if anything.
    async fn flush(&self, key: &BatchKey) {
        let batch = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        let Some(batch) = batch else { return };
        let mut body = Vec::with_capacity(batch.elements.len() + 2);
        body.push(b'[');
        body.extend_from_slice(&batch.elements);
        body.push(b']');
        let outcome = self.post(&key.path, key.authorization.as_deref(), key.schema.as_deref(), body, true).await;
        metrics::counter!("pennant_relay_event_batches_forwarded_total", "outcome" => outcome.label()).increment(1);
        metrics::counter!("pennant_relay_events_forwarded_total", "outcome" => outcome.label())
            .increment(batch.events as u64);
        for waiter in batch.waiters {
            let _ = waiter.send(outcome);
        }
    }

    /// Posts one request upstream (gzipped when `compress`), retried once after a failure worth retrying.
    pub(crate) async fn post(
        &self,
        path: &str,
        authorization: Option<&str>,
        schema: Option<&str>,
        body: Vec<u8>,
        compress: bool,
    ) -> Outcome {
        let (body, gzip) = if compress {
            match gzip(&body) {
                Ok(compressed) => (Bytes::from(compressed), true),
                Err(_) => (Bytes::from(body), false),
            }
        } else {
            (Bytes::from(body), false)
        };
        // One ID for both attempts: the upstream de-duplicates a retry of a request it did take.
        let payload_id = uuid::Uuid::new_v4().to_string();
        let url = format!("{}{path}", self.events_uri);
        let mut outcome = Outcome::Failed;
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(RETRY_DELAY).await;
            }
            let mut request = self
                .http
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-launchdarkly-payload-id", &payload_id)
                .body(body.clone());
            if gzip {
                request = request.header(header::CONTENT_ENCODING, "gzip");
            }
            if let Some(authorization) = authorization {
                request = request.header(header::AUTHORIZATION, authorization);
            }
            if let Some(schema) = schema {
                request = request.header("x-launchdarkly-event-schema", schema);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return Outcome::Delivered,
                Ok(response) => {
                    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                    tracing::warn!(%url, %status, "the upstream refused forwarded events");
                    if !retryable(status) {
                        return Outcome::Refused(status);
                    }
                    outcome = Outcome::Failed;
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "forwarding events failed");
                    outcome = Outcome::Failed;
                }
            }
        }
        outcome
    }
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Refused(_) => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// LaunchDarkly's rule: 400, 408, 429 and 5xx are worth retrying; other 4xx are not.
fn retryable(status: StatusCode) -> bool {
    !status.is_client_error() || matches!(status.as_u16(), 400 | 408 | 429)
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

/// A request body that could not be taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Over the limit, compressed or not.
    #[error("the body exceeds {0} bytes")]
    TooLarge(usize),
    /// `Content-Encoding: gzip` with something else.
    #[error("invalid gzip body: {0}")]
    Gzip(std::io::Error),
}

/// The body as JSON bytes: un-gzipped when the SDK compressed it, at most `limit` bytes either way.
pub(crate) fn decode_body(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, BodyError> {
    if body.len() > limit {
        return Err(BodyError::TooLarge(limit));
    }
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    if !gzipped {
        return Ok(body);
    }
    let mut out = Vec::with_capacity((body.len() * 4).min(limit));
    let read = flate2::read::MultiGzDecoder::new(&body[..]).take(limit as u64 + 1).read_to_end(&mut out);
    match read {
        Ok(n) if n > limit => Err(BodyError::TooLarge(limit)),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(BodyError::Gzip(e)),
    }
}

/// A header's value as text, if it is text.
pub(crate) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_bodies_are_decoded_within_the_limit() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let json = br#"[{"kind":"custom","key":"k","creationDate":1}]"#;
        let packed = Bytes::from(gzip(json).unwrap());
        assert_eq!(&decode_body(&headers, packed.clone(), 1024).unwrap()[..], json);
        assert!(matches!(decode_body(&headers, packed, 10), Err(BodyError::TooLarge(10))));
        assert!(matches!(decode_body(&headers, Bytes::from_static(b"not gzip"), 1024), Err(BodyError::Gzip(_))));
        assert_eq!(&decode_body(&HeaderMap::new(), Bytes::from_static(json), 1024).unwrap()[..], json);
    }

    #[test]
    fn statuses_are_retried_as_launchdarkly_sdks_do() {
        for code in [400, 408, 429, 500, 502, 503] {
            assert!(retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [401, 403, 404, 413] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
