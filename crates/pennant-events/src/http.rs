//! The SDK-facing event endpoints (LaunchDarkly's events host).
//!
//! | route | credential | |
//! |---|---|---|
//! | `POST /bulk`, `POST /diagnostic` | `Authorization: <sdk-key>` (or `api_key <sdk-key>`) | server SDKs |
//! | `POST /mobile`, `/mobile/events`, `/mobile/events/bulk`, `/mobile/events/diagnostic` | mobile key | mobile SDKs |
//! | `POST /events/bulk/{envId}`, `/events/diagnostic/{envId}` (+ CORS preflight) | client-side ID in the path | browser SDKs |
//! | `GET /a/{envId}.gif?d=<base64 JSON array>` | client-side ID in the path | browser SDKs without CORS |
//!
//! A batch is read (bounded: 413), un-gzipped (`Content-Encoding: gzip`, bounded again), parsed (400 and nothing
//! queued when it is not a JSON array; bad elements are skipped and counted), de-duplicated by
//! `X-LaunchDarkly-Payload-ID` per environment within a window (202, not queued again), and queued: `202` is sent
//! only after the queue says the batch is durable; a full queue answers 503 with `Retry-After`. Diagnostic events are
//! validated and counted, not stored.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use pennant_store::{EnvCredential, Store};
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::model::{parse_batch, parse_diagnostic};
use crate::queue::{Enqueued, NewBatch, Queue, QueueError};

/// Front-door settings.
#[derive(Debug, Clone, Copy)]
pub struct EventsConfig {
    /// Largest request body, compressed or not, and largest body after un-gzipping (bytes).
    pub max_body_bytes: usize,
    /// A repeated `X-LaunchDarkly-Payload-ID` for the same environment within this window is not queued again.
    pub dedupe_window: Duration,
    /// How long a credential lookup (found or not) is reused.
    pub credential_ttl: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_body_bytes: 8 << 20,
            dedupe_window: Duration::from_secs(300),
            credential_ttl: Duration::from_secs(10),
        }
    }
}

/// Counters since start (also exported as `pennant_events_*` metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsStats {
    /// Batches queued.
    pub accepted_batches: u64,
    /// Events in queued batches.
    pub accepted_events: u64,
    /// Elements skipped inside accepted batches.
    pub skipped_events: u64,
    /// Batches refused (malformed, too large, queue full or unavailable).
    pub rejected_batches: u64,
    /// Parsed events in batches refused because the queue was full or unavailable.
    pub rejected_events: u64,
    /// Retries answered without queuing again.
    pub duplicate_batches: u64,
    /// Diagnostic events accepted.
    pub diagnostics: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted_batches: AtomicU64,
    accepted_events: AtomicU64,
    skipped_events: AtomicU64,
    rejected_batches: AtomicU64,
    rejected_events: AtomicU64,
    duplicate_batches: AtomicU64,
    diagnostics: AtomicU64,
}

/// What the event routes need. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventsState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    queue: Queue,
    config: EventsConfig,
    credentials: quick_cache::sync::Cache<String, (Option<EnvCredential>, Instant)>,
    seen: quick_cache::sync::Cache<(String, String, String), Instant>,
    counters: Counters,
}

impl EventsState {
    /// State over the store (credentials) and the queue.
    pub fn new(store: Store, queue: Queue, config: EventsConfig) -> EventsState {
        EventsState {
            inner: Arc::new(Inner {
                store,
                queue,
                config,
                credentials: quick_cache::sync::Cache::new(10_000),
                seen: quick_cache::sync::Cache::new(100_000),
                counters: Counters::default(),
            }),
        }
    }

    /// The queue batches go to.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// Counters since start.
    pub fn stats(&self) -> EventsStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EventsStats {
            accepted_batches: get(&c.accepted_batches),
            accepted_events: get(&c.accepted_events),
            skipped_events: get(&c.skipped_events),
            rejected_batches: get(&c.rejected_batches),
            rejected_events: get(&c.rejected_events),
            duplicate_batches: get(&c.duplicate_batches),
            diagnostics: get(&c.diagnostics),
        }
    }

    async fn credential(&self, key: &str) -> Result<Option<EnvCredential>, Response> {
        if let Some((found, at)) = self.inner.credentials.get(key)
            && at.elapsed() < self.inner.config.credential_ttl
        {
            return Ok(found);
        }
        let found = self.inner.store.find_credential(key).await.map_err(|e| {
            tracing::warn!(error = %e, "credential lookup failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "credential lookup failed")
        })?;
        self.inner.credentials.insert(key.to_owned(), (found.clone(), Instant::now()));
        Ok(found)
    }

    fn reject(&self, reason: &'static str, events: u64) {
        let c = &self.inner.counters;
        c.rejected_batches.fetch_add(1, Ordering::Relaxed);
        c.rejected_events.fetch_add(events, Ordering::Relaxed);
        metrics::counter!("pennant_events_rejected_batches_total", "reason" => reason).increment(1);
        if events > 0 {
            metrics::counter!("pennant_events_rejected_events_total", "reason" => reason).increment(events);
        }
    }
}

/// CORS for the browser event routes: any origin (browser SDKs run on customers' sites), with credentials and the
/// headers LaunchDarkly's JavaScript SDK sends. Shared with the relay, which serves the same routes.
pub fn browser_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            HeaderName::from_static("x-launchdarkly-user-agent"),
            HeaderName::from_static("x-launchdarkly-payload-id"),
            HeaderName::from_static("x-launchdarkly-wrapper"),
            HeaderName::from_static("x-launchdarkly-event-schema"),
            HeaderName::from_static("x-launchdarkly-tags"),
        ])
        .max_age(Duration::from_secs(300))
}

/// The event routes (see the module documentation).
pub fn router(state: EventsState) -> Router {
    let cors = browser_cors();
    let browser = Router::new()
        .route("/events/bulk/{env_id}", post(client_bulk))
        .route("/events/diagnostic/{env_id}", post(client_diagnostic))
        .route("/a/{file}", get(client_gif))
        .layer(cors);
    Router::new()
        .route("/bulk", post(server_bulk))
        .route("/diagnostic", post(server_diagnostic))
        .route("/mobile", post(mobile_bulk))
        .route("/mobile/events", post(mobile_bulk))
        .route("/mobile/events/bulk", post(mobile_bulk))
        .route("/mobile/events/diagnostic", post(mobile_diagnostic))
        .merge(browser)
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": code, "message": message.into()});
    (status, axum::Json(body)).into_response()
}

fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// The SDK key or mobile key from `Authorization`, which must be of `kind`.
async fn authorize(state: &EventsState, headers: &HeaderMap, kind: &str) -> Result<EnvCredential, Response> {
    let unauthorized = || error(StatusCode::UNAUTHORIZED, "unauthorized", format!("a valid {kind} key is required"));
    let raw = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
    let key = raw.strip_prefix("api_key ").unwrap_or(raw).trim();
    match state.credential(key).await? {
        Some(c) if c.kind == kind => Ok(c),
        _ => Err(unauthorized()),
    }
}

/// The client-side ID in a browser route's path. Unknown IDs are 404, as LaunchDarkly's Relay answers.
async fn authorize_client(state: &EventsState, env_id: &str) -> Result<EnvCredential, Response> {
    match state.credential(env_id).await? {
        Some(c) if c.kind == "client" => Ok(c),
        _ => Err(error(StatusCode::NOT_FOUND, "not_found", "unknown environment ID")),
    }
}

/// Reads the body (bounded) and un-gzips it if needed (bounded again).
async fn read_body(state: &EventsState, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let limit = state.inner.config.max_body_bytes;
    let too_large = || error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("body exceeds {limit} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if declared.is_some_and(|n: usize| n > limit) {
        state.reject("too_large", 0);
        return Err(too_large());
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some());
            state.reject(if over { "too_large" } else { "unreadable" }, 0);
            return Err(if over {
                too_large()
            } else {
                error(StatusCode::BAD_REQUEST, "unreadable", "could not read the body")
            });
        }
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity((bytes.len() * 4).min(limit));
    let read = flate2::read::MultiGzDecoder::new(&bytes[..]).take(limit as u64 + 1).read_to_end(&mut out);
    match read {
        Ok(n) if n > limit => {
            state.reject("too_large", 0);
            Err(too_large())
        }
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => {
            state.reject("malformed", 0);
            Err(error(StatusCode::BAD_REQUEST, "malformed_gzip", format!("invalid gzip body: {e}")))
        }
    }
}

fn schema(headers: &HeaderMap) -> u8 {
    headers
        .get("x-launchdarkly-event-schema")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn payload_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-launchdarkly-payload-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
}

/// Validates, de-duplicates and queues one batch.
async fn ingest(
    state: &EventsState,
    cred: EnvCredential,
    schema: u8,
    payload_id: Option<String>,
    body: Bytes,
) -> Response {
    let (events, skipped) = match parse_batch(&body) {
        Ok(batch) => (batch.events.len() as u64, batch.skipped as u64),
        Err(e) => {
            state.reject("malformed", 0);
            return error(StatusCode::BAD_REQUEST, "malformed_events", e.to_string());
        }
    };
    let c = &state.inner.counters;
    if skipped > 0 {
        c.skipped_events.fetch_add(skipped, Ordering::Relaxed);
        metrics::counter!("pennant_events_skipped_total").increment(skipped);
    }
    if events == 0 {
        return accepted();
    }
    let seen_key = payload_id.as_ref().map(|id| (cred.project_key.clone(), cred.env_key.clone(), id.clone()));
    if let Some(key) = &seen_key
        && state.inner.seen.get(key).is_some_and(|at| at.elapsed() < state.inner.config.dedupe_window)
    {
        c.duplicate_batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pennant_events_duplicate_batches_total").increment(1);
        return accepted();
    }
    let batch = NewBatch {
        project: cred.project_key,
        env: cred.env_key,
        payload_id,
        received_at_ms: pennant_store::now_ms(),
        schema,
        body,
    };
    let result = state.inner.queue.enqueue(batch).await;
    if let Some(depth) = state.inner.queue.depth_hint() {
        metrics::gauge!("pennant_events_queue_depth").set(depth as f64);
    }
    match result {
        Ok(outcome) => {
            if let Some(key) = seen_key {
                state.inner.seen.insert(key, Instant::now());
            }
            if outcome == Enqueued::Duplicate {
                c.duplicate_batches.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("pennant_events_duplicate_batches_total").increment(1);
            } else {
                c.accepted_batches.fetch_add(1, Ordering::Relaxed);
                c.accepted_events.fetch_add(events, Ordering::Relaxed);
                metrics::counter!("pennant_events_accepted_total").increment(events);
            }
            accepted()
        }
        Err(QueueError::Full { retry_after }) => {
            state.reject("queue_full", events);
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "queue_full", "the event queue is full");
            let secs = retry_after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            response
        }
        Err(e @ QueueError::TooLarge { .. }) => {
            state.reject("too_large", events);
            error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        Err(e) => {
            tracing::warn!(error = %e, "event batch not queued");
            state.reject("queue_unavailable", events);
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", e.to_string());
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

async fn diagnostic(state: &EventsState, headers: &HeaderMap, body: Body) -> Response {
    let body = match read_body(state, headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match parse_diagnostic(&body) {
        Ok(_) => {
            state.inner.counters.diagnostics.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("pennant_events_diagnostics_total").increment(1);
            accepted()
        }
        Err(e) => {
            state.reject("malformed", 0);
            error(StatusCode::BAD_REQUEST, "malformed_events", e.to_string())
        }
    }
}

async fn keyed_bulk(state: EventsState, headers: HeaderMap, body: Body, kind: &str) -> Response {
    let cred = match authorize(&state, &headers, kind).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match read_body(&state, &headers, body).await {
        Ok(body) => ingest(&state, cred, schema(&headers), payload_id(&headers), body).await,
        Err(r) => r,
    }
}

async fn server_bulk(State(state): State<EventsState>, headers: HeaderMap, body: Body) -> Response {
    keyed_bulk(state, headers, body, "sdk").await
}

async fn mobile_bulk(State(state): State<EventsState>, headers: HeaderMap, body: Body) -> Response {
    keyed_bulk(state, headers, body, "mobile").await
}

async fn server_diagnostic(State(state): State<EventsState>, headers: HeaderMap, body: Body) -> Response {
    match authorize(&state, &headers, "sdk").await {
        Ok(_) => diagnostic(&state, &headers, body).await,
        Err(r) => r,
    }
}

async fn mobile_diagnostic(State(state): State<EventsState>, headers: HeaderMap, body: Body) -> Response {
    match authorize(&state, &headers, "mobile").await {
        Ok(_) => diagnostic(&state, &headers, body).await,
        Err(r) => r,
    }
}

async fn client_bulk(
    State(state): State<EventsState>,
    Path(env_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let cred = match authorize_client(&state, &env_id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match read_body(&state, &headers, body).await {
        Ok(body) => ingest(&state, cred, schema(&headers), payload_id(&headers), body).await,
        Err(r) => r,
    }
}

async fn client_diagnostic(
    State(state): State<EventsState>,
    Path(env_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match authorize_client(&state, &env_id).await {
        Ok(_) => diagnostic(&state, &headers, body).await,
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct GifQuery {
    d: Option<String>,
}

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

async fn client_gif(
    State(state): State<EventsState>,
    Path(file): Path<String>,
    Query(query): Query<GifQuery>,
) -> Response {
    let Some(env_id) = file.strip_suffix(".gif") else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such resource");
    };
    let cred = match authorize_client(&state, env_id).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Some(d) = query.d {
        let d = d.trim();
        let decoded = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(d)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_PAD_INDIFFERENT.decode(d));
        let body = match decoded {
            Ok(b) if b.len() <= state.inner.config.max_body_bytes => Bytes::from(b),
            Ok(_) => {
                state.reject("too_large", 0);
                return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "events too large");
            }
            Err(_) => {
                state.reject("malformed", 0);
                return error(StatusCode::BAD_REQUEST, "malformed_events", "d is not base64");
            }
        };
        let response = ingest(&state, cred, 0, None, body).await;
        if response.status() != StatusCode::ACCEPTED {
            return response;
        }
    }
    ([(header::CONTENT_TYPE, "image/gif"), (header::CACHE_CONTROL, "no-cache, no-store")], PIXEL).into_response()
}
