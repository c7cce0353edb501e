//! Pennant's SDK-facing service: LaunchDarkly's FDv1 streaming (`/all`) and polling (`/sdk/latest-all`,
//! `/sdk/flags…`, `/sdk/segments/…`) endpoints, fed by the store's outbox.
//!
//! Each environment has one broadcast channel of pre-encoded SSE frames: a change is encoded once and the same
//! `Bytes` goes to every connection. The environment's payload is built once per change, however many SDKs ask
//! at once, and shared by every new connection and poll.

mod bus;
mod clientside;
mod fanout;
mod hub;
mod listener;
mod mirror;
mod relay;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use pennant_store::Store;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};

pub use bus::NatsBus;
pub use hub::{EnvChannel, EnvId, Hub, HubOptions, PayloadCache, Snapshot, payload_cache};
pub use listener::serve;
pub use mirror::{Mirror, MirrorKeys, MirrorUpdate};
pub use relay::{RelayOptions, spawn_outbox_relay, spawn_outbox_relay_with};

/// What can fail while serving SDKs.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Missing, unknown or wrong-kind credential.
    #[error("{0}")]
    Unauthorized(String),
    /// No such flag or segment.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] pennant_store::StoreError),
    /// Encoding failed.
    #[error("encoding error: {0}")]
    Json(#[from] serde_json::Error),
    /// The change bus (NATS) failed.
    #[error("{0}")]
    Bus(String),
    /// The environment has no data yet (a mirrored environment before its upstream answered).
    #[error("{0}")]
    NotReady(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            StreamError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            StreamError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            StreamError::Store(pennant_store::StoreError::NotFound { .. }) => (StatusCode::NOT_FOUND, "not_found"),
            // Expected while a relay starts: the SDK retries.
            StreamError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            _ => {
                tracing::error!(error = %self, "SDK endpoint failure");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        (status, axum::Json(serde_json::json!({"code": code, "message": self.to_string()}))).into_response()
    }
}

/// Where the SDK endpoints find credentials, environments' settings and flag data.
#[derive(Debug, Clone)]
pub enum Source {
    /// Pennant's store; changes arrive through the outbox relay ([`spawn_outbox_relay`]).
    Store(Store),
    /// Environments mirrored from elsewhere, whose owner pushes their data ([`Mirror::update`]).
    Mirror(Arc<Mirror>),
}

impl From<Store> for Source {
    fn from(store: Store) -> Source {
        Source::Store(store)
    }
}

/// State of the SDK endpoints.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// Where the data comes from.
    pub source: Source,
    /// The environments' channels.
    pub hub: Arc<Hub>,
    /// Becomes `true` when the server shuts down: every stream then ends, so SDKs reconnect elsewhere.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The SDK-facing router (mounted at the root, where SDKs expect the paths).
pub fn router(state: StreamState) -> Router {
    Router::new()
        .route("/all", get(stream_all))
        .route("/flags", get(stream_flags))
        .route("/sdk/latest-all", get(latest_all))
        .route("/sdk/flags", get(all_flags))
        .route("/sdk/flags/{key}", get(one_flag))
        .route("/sdk/segments/{key}", get(one_segment))
        .merge(clientside::routes())
        .with_state(state)
}

/// The environment a server-side SDK key belongs to (`Authorization: KEY` or `Authorization: api_key KEY`).
async fn server_env(state: &StreamState, headers: &HeaderMap) -> Result<EnvId, StreamError> {
    let key = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_start_matches("api_key ").trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| StreamError::Unauthorized("send the SDK key in the Authorization header".into()))?;
    match credential(state, key).await? {
        Some(c) if c.kind == "sdk" => Ok(EnvId { project: c.project_key, env: c.env_key }),
        _ => Err(StreamError::Unauthorized("unknown SDK key".into())),
    }
}

/// The environment and kind of an SDK key, mobile key or client-side ID, if it exists.
pub(crate) async fn credential(
    state: &StreamState,
    key: &str,
) -> Result<Option<pennant_store::EnvCredential>, StreamError> {
    let store = match &state.source {
        Source::Store(store) => store,
        Source::Mirror(mirror) => return Ok(mirror.credential(key)),
    };
    if let Some(found) = state.hub.cached_credential(key) {
        return Ok(found);
    }
    let found = store.find_credential(key).await?;
    state.hub.remember_credential(key, found.clone());
    Ok(found)
}

/// Which server-side stream a connection reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// `/all`: flags and segments.
    All,
    /// `/flags`: the old stream, flags only.
    Flags,
}

/// A new stream's first frame and the channel of later ones. Subscribes before reading the snapshot, so that no
/// change committed in between is missed (SDKs ignore a patch whose version they already have).
pub(crate) async fn open_stream(
    state: &StreamState,
    env: &EnvId,
    kind: StreamKind,
) -> Result<(Bytes, tokio::sync::broadcast::Receiver<Bytes>), StreamError> {
    let channel = state.hub.channel(env);
    let updates = match kind {
        StreamKind::All => channel.subscribe(),
        StreamKind::Flags => channel.subscribe_flags(),
    };
    let snapshot = channel.snapshot(&state.source).await?;
    metrics::counter!("pennant_stream_connections_total").increment(1);
    let first = match kind {
        StreamKind::All => snapshot.put_frame.clone(),
        StreamKind::Flags => snapshot.flags_put_frame.clone(),
    };
    Ok((first, updates))
}

/// When a new stream should end: the maximum lifetime minus up to 10 % jitter, so that SDKs that connected
/// together do not all reconnect together.
pub(crate) fn stream_deadline(hub: &Hub) -> Option<tokio::time::Instant> {
    let lifetime = hub.options().max_connection_lifetime?;
    let jitter = lifetime.mul_f64(rand::random::<f64>() * 0.1);
    Some(tokio::time::Instant::now() + lifetime.saturating_sub(jitter))
}

async fn stream_all(State(state): State<StreamState>, headers: HeaderMap) -> Result<Response, StreamError> {
    sse_response(&state, &headers, StreamKind::All).await
}

async fn stream_flags(State(state): State<StreamState>, headers: HeaderMap) -> Result<Response, StreamError> {
    sse_response(&state, &headers, StreamKind::Flags).await
}

/// A server-side stream through axum: for connections whose first request was something else (the lean path in
/// [`serve`] takes the rest), and for tests without a socket.
async fn sse_response(state: &StreamState, headers: &HeaderMap, kind: StreamKind) -> Result<Response, StreamError> {
    let env = server_env(state, headers).await?;
    let (first, updates) = open_stream(state, &env, kind).await?;
    let first = tokio_stream::once(Ok::<Bytes, std::convert::Infallible>(first));
    // A connection that falls more than the channel's capacity behind ends; its SDK reconnects with a fresh put.
    let frames = BroadcastStream::new(updates).map(|frame| frame.ok());
    let closing = WatchStream::new(state.shutdown.clone()).filter(|stop| *stop).map(|_| None);
    let expiry = match stream_deadline(&state.hub) {
        Some(deadline) => tokio::time::sleep_until(deadline),
        None => tokio::time::sleep(std::time::Duration::from_secs(100 * 365 * 24 * 3600)),
    };
    let expired = Box::pin(futures_util::stream::once(async move {
        expiry.await;
        None
    }));
    let rest = frames.merge(closing).merge(expired).map_while(|frame| frame).map(Ok);
    let mut response = Response::new(Body::from_stream(first.chain(rest)));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn json_with_etag(body: Bytes, etag: &str, headers: &HeaderMap) -> Response {
    if headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(etag) {
            response.headers_mut().insert(ETAG, v);
        }
        return response;
    }
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(ETAG, v);
    }
    response
}

async fn latest_all(State(state): State<StreamState>, headers: HeaderMap) -> Result<Response, StreamError> {
    let env = server_env(&state, &headers).await?;
    let snapshot = state.hub.channel(&env).snapshot(&state.source).await?;
    Ok(json_with_etag(snapshot.payload.clone(), &snapshot.etag, &headers))
}

async fn all_flags(State(state): State<StreamState>, headers: HeaderMap) -> Result<Response, StreamError> {
    let env = server_env(&state, &headers).await?;
    let snapshot = state.hub.channel(&env).snapshot(&state.source).await?;
    Ok(json_with_etag(snapshot.flags.clone(), &snapshot.etag, &headers))
}

async fn one_flag(
    State(state): State<StreamState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Response, StreamError> {
    use pennant_eval::Store as _;
    let env = server_env(&state, &headers).await?;
    let snapshot = state.hub.channel(&env).snapshot(&state.source).await?;
    let flag = snapshot.data.flag(&key).ok_or_else(|| StreamError::NotFound(format!("flag {key:?} not found")))?;
    Ok(axum::Json(serde_json::to_value(flag)?).into_response())
}

async fn one_segment(
    State(state): State<StreamState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Response, StreamError> {
    use pennant_eval::Store as _;
    let env = server_env(&state, &headers).await?;
    let snapshot = state.hub.channel(&env).snapshot(&state.source).await?;
    let segment =
        snapshot.data.segment(&key).ok_or_else(|| StreamError::NotFound(format!("segment {key:?} not found")))?;
    Ok(axum::Json(serde_json::to_value(segment)?).into_response())
}
