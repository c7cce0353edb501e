//! Client-side (JavaScript) and mobile SDK endpoints: every flag evaluated for one context (`evalx`), by polling
//! and by streaming.
//!
//! - JavaScript SDKs name their environment by its client-side ID in the path, and get CORS headers; mobile SDKs
//!   send their mobile key in `Authorization`. Each sees only the flags made available to it
//!   (`clientSideAvailability.usingEnvironmentId` / `usingMobileKey`).
//! - The context travels as base64url JSON in the path (GET) or as the JSON body (REPORT, which must say
//!   `Content-Type: application/json`). Old-style users are accepted everywhere.
//! - In an environment with secure mode on, JavaScript requests must carry `?h=` = hex HMAC-SHA256 of the
//!   context's fully-qualified key under the environment's SDK key.
//! - `/eval` and `/meval` streams start with a `put` of the context's evalx map. On every change of the
//!   environment the connection re-evaluates against the new snapshot and sends a `patch` (one evalx entry plus
//!   `key`) for every flag whose entry changed and a `delete` (`{"key", "version"}`) for every flag it can no
//!   longer see. A burst of changes already waiting is handled with one re-evaluation. `/ping` and `/mping` send
//!   only `ping` (the SDK then refetches). A connection that falls the hub channel's capacity behind is closed,
//!   as on `/all`: its SDK reconnects and gets a fresh `put`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use pennant_eval::{AllFlagsOptions, Context, Store as _, all_flags_state};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::hub::{EnvChannel, EnvId, Snapshot, frame};
use crate::{StreamError, StreamState};

/// The client-side and mobile routes.
pub(crate) fn routes() -> Router<StreamState> {
    let browser = Router::new()
        .route("/sdk/evalx/{env_id}/contexts/{context}", get(js_evalx_get))
        .route("/sdk/evalx/{env_id}/users/{context}", get(js_evalx_get))
        .route("/sdk/evalx/{env_id}/context", any(js_evalx_report))
        .route("/sdk/evalx/{env_id}/user", any(js_evalx_report))
        .route("/sdk/goals/{env_id}", get(js_goals))
        .route("/eval/{env_id}/{context}", get(js_stream_get))
        .route("/eval/{env_id}", any(js_stream_report))
        .route("/ping/{env_id}", get(js_ping))
        .layer(cors());
    let mobile = Router::new()
        .route("/msdk/evalx/contexts/{context}", get(mobile_evalx_get))
        .route("/msdk/evalx/users/{context}", get(mobile_evalx_get))
        .route("/msdk/evalx/context", any(mobile_evalx_report))
        .route("/msdk/evalx/user", any(mobile_evalx_report))
        .route("/meval/{context}", get(mobile_stream_get))
        .route("/meval", any(mobile_stream_report))
        .route("/mping", get(mobile_ping));
    browser.merge(mobile)
}

/// CORS for the browser routes: the request's origin is echoed, preflights are cached for 5 minutes, and the
/// headers LaunchDarkly's JavaScript SDKs send are allowed.
fn cors() -> CorsLayer {
    const ALLOWED: [&str; 10] = [
        "cache-control",
        "content-type",
        "content-length",
        "accept-encoding",
        "x-launchdarkly-user-agent",
        "x-launchdarkly-payload-id",
        "x-launchdarkly-wrapper",
        "x-launchdarkly-event-schema",
        "x-launchdarkly-tags",
        "x-launchdarkly-instance-id",
    ];
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_methods([Method::GET, report(), Method::OPTIONS])
        .allow_headers(ALLOWED.map(HeaderName::from_static))
        .expose_headers([axum::http::header::DATE])
        .max_age(Duration::from_secs(300))
}

fn report() -> Method {
    // A valid token, so this cannot fail; GET keeps the function total.
    Method::from_bytes(b"REPORT").unwrap_or(Method::GET)
}

/// What a client-side request can fail with.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Rejected(StatusCode, String),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl From<pennant_store::StoreError> for ClientError {
    fn from(e: pennant_store::StoreError) -> Self {
        ClientError::Stream(StreamError::Store(e))
    }
}

impl IntoResponse for ClientError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ClientError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ClientError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ClientError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ClientError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ClientError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ClientError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ClientError::Rejected(status, _) if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                (*status, "payload_too_large")
            }
            ClientError::Rejected(status, _) => (*status, "bad_request"),
            ClientError::Stream(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if let ClientError::Stream(e) = self {
            return e.into_response();
        }
        (status, axum::Json(json!({"code": code, "message": self.to_string()}))).into_response()
    }
}

impl From<PathRejection> for ClientError {
    fn from(r: PathRejection) -> Self {
        ClientError::BadRequest(r.body_text())
    }
}

impl From<BytesRejection> for ClientError {
    fn from(r: BytesRejection) -> Self {
        ClientError::Rejected(r.status(), r.body_text())
    }
}

/// Which SDK family asks, which decides the flags it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// JavaScript SDKs (client-side ID).
    Browser,
    /// Mobile SDKs (mobile key).
    Mobile,
}

/// The query parameters the endpoints read.
#[derive(Debug, Default)]
struct Query {
    with_reasons: bool,
    hash: Option<String>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        let mut q = Query::default();
        for pair in raw.unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "withReasons" => q.with_reasons = value.eq_ignore_ascii_case("true"),
                // Hex, so no percent-decoding is needed; anything else simply does not match.
                "h" => q.hash = Some(value.to_owned()),
                _ => {}
            }
        }
        q
    }
}

/// The environment of a client-side ID. Unknown IDs (and credentials of other kinds) are 404, as Relay does.
async fn browser_env(state: &StreamState, env_id: &str) -> Result<EnvId, ClientError> {
    match crate::credential(state, env_id).await? {
        Some(c) if c.kind == "client" => Ok(EnvId { project: c.project_key, env: c.env_key }),
        _ => Err(ClientError::NotFound(format!("unknown client-side ID {env_id:?}"))),
    }
}

/// The environment of the mobile key in `Authorization` (`KEY` or `api_key KEY`).
async fn mobile_env(state: &StreamState, headers: &HeaderMap) -> Result<EnvId, ClientError> {
    let key = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_start_matches("api_key ").trim())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ClientError::Unauthorized("send the mobile key in the Authorization header".into()))?;
    match crate::credential(state, key).await? {
        Some(c) if c.kind == "mobile" => Ok(EnvId { project: c.project_key, env: c.env_key }),
        _ => Err(ClientError::Unauthorized("unknown mobile key".into())),
    }
}

/// A context from the base64url JSON of a path segment (padding optional; the standard alphabet is tolerated).
fn context_from_base64(encoded: &str) -> Result<Context, ClientError> {
    let normalised: String = encoded.trim_end_matches('=').replace('+', "-").replace('/', "_");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(normalised.as_bytes())
        .map_err(|e| ClientError::BadRequest(format!("the context is not valid base64url: {e}")))?;
    parse_context(&bytes)
}

/// A context from a REPORT body, which must be declared JSON.
fn context_from_body(headers: &HeaderMap, body: &[u8]) -> Result<Context, ClientError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ClientError::UnsupportedMediaType("REPORT bodies must be Content-Type: application/json".into()));
    }
    parse_context(body)
}

fn parse_context(bytes: &[u8]) -> Result<Context, ClientError> {
    // The engine refuses contexts without a key (an old-style user may have an empty one, as in LaunchDarkly).
    Context::from_json(bytes).map_err(|e| ClientError::BadRequest(format!("invalid context: {e}")))
}

fn check_report(method: &Method) -> Result<(), ClientError> {
    if *method == report() {
        Ok(())
    } else {
        Err(ClientError::MethodNotAllowed(format!("{method} is not allowed here; use REPORT")))
    }
}

// ---- Secure mode ---------------------------------------------------------------------------------------------

/// The environment settings the browser routes need.
#[derive(Debug)]
struct EnvSettings {
    secure_mode: bool,
    sdk_key: String,
}

struct CachedSettings {
    channel: Weak<EnvChannel>,
    snapshot: Weak<Snapshot>,
    loaded: Instant,
    settings: Arc<EnvSettings>,
}

/// How long environment settings are trusted without a change to the environment's data. Changing an
/// environment (secure mode, SDK key rotation) writes no outbox row, so this bounds how long a change takes.
const SETTINGS_TTL: Duration = Duration::from_secs(10);

/// Settings cached per environment channel, dropped when that channel's snapshot changes or after
/// `SETTINGS_TTL`. Keyed by the channel's address: the `Weak` in each entry keeps that address from being
/// reused while the entry exists, and entries of dropped channels are pruned.
fn settings_cache() -> &'static Mutex<HashMap<usize, CachedSettings>> {
    static CACHE: OnceLock<Mutex<HashMap<usize, CachedSettings>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

async fn env_settings(
    state: &StreamState,
    env: &EnvId,
    channel: &Arc<EnvChannel>,
    snapshot: &Arc<Snapshot>,
) -> Result<Arc<EnvSettings>, ClientError> {
    let id = Arc::as_ptr(channel) as usize;
    if let Ok(cache) = settings_cache().lock()
        && let Some(c) = cache.get(&id)
        && Weak::ptr_eq(&c.channel, &Arc::downgrade(channel))
        && std::ptr::eq(c.snapshot.as_ptr(), Arc::as_ptr(snapshot))
        && c.loaded.elapsed() < SETTINGS_TTL
    {
        return Ok(c.settings.clone());
    }
    let settings = Arc::new(match &state.source {
        crate::Source::Store(store) => {
            let record = store.get_environment(&env.project, &env.env).await?;
            EnvSettings { secure_mode: record.data.secure_mode, sdk_key: record.data.sdk_key }
        }
        crate::Source::Mirror(mirror) => {
            let keys = mirror.keys(env).ok_or_else(|| StreamError::NotFound("unknown environment".into()))?;
            EnvSettings { secure_mode: keys.secure_mode, sdk_key: keys.sdk_key }
        }
    });
    if let Ok(mut cache) = settings_cache().lock() {
        cache.retain(|_, c| c.channel.strong_count() > 0);
        cache.insert(
            id,
            CachedSettings {
                channel: Arc::downgrade(channel),
                snapshot: Arc::downgrade(snapshot),
                loaded: Instant::now(),
                settings: settings.clone(),
            },
        );
    }
    Ok(settings)
}

/// Refuses a browser request without the right `?h=` in an environment with secure mode on.
async fn check_secure_mode(
    state: &StreamState,
    env: &EnvId,
    channel: &Arc<EnvChannel>,
    snapshot: &Arc<Snapshot>,
    context: &Context,
    hash: Option<&str>,
) -> Result<(), ClientError> {
    let settings = env_settings(state, env, channel, snapshot).await?;
    if !settings.secure_mode {
        return Ok(());
    }
    let hash =
        hash.ok_or_else(|| ClientError::Forbidden("secure mode is on: send the context's hash as ?h=".into()))?;
    let given = hex::decode(hash).map_err(|_| ClientError::Forbidden("the secure-mode hash is not valid".into()))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(settings.sdk_key.as_bytes())
        .map_err(|e| StreamError::Internal(format!("secure-mode key: {e}")))?;
    mac.update(context.fully_qualified_key().as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&given).map_err(|_| ClientError::Forbidden("the secure-mode hash is not valid".into()))
}

// ---- Evaluation ----------------------------------------------------------------------------------------------

fn options(audience: Audience, with_reasons: bool) -> AllFlagsOptions {
    AllFlagsOptions {
        client_side_only: audience == Audience::Browser,
        mobile_only: audience == Audience::Mobile,
        with_reasons,
    }
}

/// The evalx document for one context.
fn evalx_bytes(snapshot: &Snapshot, context: &Context, options: AllFlagsOptions) -> Result<Vec<u8>, ClientError> {
    let data = &snapshot.data;
    let state = all_flags_state(data, data.flags(), context, options);
    Ok(serde_json::to_vec(&state).map_err(StreamError::Json)?)
}

/// The evalx entries for one context, by flag key.
fn evalx_map(
    snapshot: &Snapshot,
    context: &Context,
    options: AllFlagsOptions,
) -> Result<Map<String, Value>, StreamError> {
    let data = &snapshot.data;
    let state = all_flags_state(data, data.flags(), context, options);
    match serde_json::to_value(&state)? {
        Value::Object(map) => Ok(map),
        _ => Err(StreamError::Internal("the evalx document is not an object".into())),
    }
}

/// A resolved request: environment, its channel, and the context.
struct Resolved {
    channel: Arc<EnvChannel>,
    context: Context,
    options: AllFlagsOptions,
}

async fn resolve(
    state: &StreamState,
    env: EnvId,
    audience: Audience,
    context: Context,
    query: &Query,
) -> Result<(Resolved, broadcast::Receiver<Bytes>, Arc<Snapshot>), ClientError> {
    let channel = state.hub.channel(&env);
    // Subscribe before reading the snapshot, so that no change committed in between is missed.
    let updates = channel.subscribe();
    let snapshot = channel.snapshot(&state.source).await?;
    if audience == Audience::Browser {
        check_secure_mode(state, &env, &channel, &snapshot, &context, query.hash.as_deref()).await?;
    }
    Ok((Resolved { channel, context, options: options(audience, query.with_reasons) }, updates, snapshot))
}

async fn evalx_response(
    state: &StreamState,
    env: EnvId,
    audience: Audience,
    context: Context,
    query: &Query,
) -> Result<Response, ClientError> {
    let channel = state.hub.channel(&env);
    let snapshot = channel.snapshot(&state.source).await?;
    if audience == Audience::Browser {
        check_secure_mode(state, &env, &channel, &snapshot, &context, query.hash.as_deref()).await?;
    }
    let body = evalx_bytes(&snapshot, &context, options(audience, query.with_reasons))?;
    metrics::counter!("pennant_clientside_evalx_total").increment(1);
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

// ---- Handlers ------------------------------------------------------------------------------------------------

async fn js_evalx_get(
    State(state): State<StreamState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ClientError> {
    let Path((env_id, encoded)) = path?;
    let env = browser_env(&state, &env_id).await?;
    let context = context_from_base64(&encoded)?;
    evalx_response(&state, env, Audience::Browser, context, &Query::parse(raw.as_deref())).await
}

async fn js_evalx_report(
    State(state): State<StreamState>,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ClientError> {
    check_report(&method)?;
    let Path(env_id) = path?;
    let env = browser_env(&state, &env_id).await?;
    let context = context_from_body(&headers, &body?)?;
    evalx_response(&state, env, Audience::Browser, context, &Query::parse(raw.as_deref())).await
}

async fn js_goals(
    State(state): State<StreamState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ClientError> {
    let Path(env_id) = path?;
    browser_env(&state, &env_id).await?;
    Ok(axum::Json(json!([])).into_response())
}

async fn js_stream_get(
    State(state): State<StreamState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ClientError> {
    let Path((env_id, encoded)) = path?;
    let env = browser_env(&state, &env_id).await?;
    let context = context_from_base64(&encoded)?;
    evalx_stream(state, env, Audience::Browser, context, &Query::parse(raw.as_deref())).await
}

async fn js_stream_report(
    State(state): State<StreamState>,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ClientError> {
    check_report(&method)?;
    let Path(env_id) = path?;
    let env = browser_env(&state, &env_id).await?;
    let context = context_from_body(&headers, &body?)?;
    evalx_stream(state, env, Audience::Browser, context, &Query::parse(raw.as_deref())).await
}

async fn js_ping(
    State(state): State<StreamState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ClientError> {
    let Path(env_id) = path?;
    let env = browser_env(&state, &env_id).await?;
    Ok(ping_stream(state, env))
}

async fn mobile_evalx_get(
    State(state): State<StreamState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ClientError> {
    let env = mobile_env(&state, &headers).await?;
    let Path(encoded) = path?;
    let context = context_from_base64(&encoded)?;
    evalx_response(&state, env, Audience::Mobile, context, &Query::parse(raw.as_deref())).await
}

async fn mobile_evalx_report(
    State(state): State<StreamState>,
    method: Method,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ClientError> {
    check_report(&method)?;
    let env = mobile_env(&state, &headers).await?;
    let context = context_from_body(&headers, &body?)?;
    evalx_response(&state, env, Audience::Mobile, context, &Query::parse(raw.as_deref())).await
}

async fn mobile_stream_get(
    State(state): State<StreamState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ClientError> {
    let env = mobile_env(&state, &headers).await?;
    let Path(encoded) = path?;
    let context = context_from_base64(&encoded)?;
    evalx_stream(state, env, Audience::Mobile, context, &Query::parse(raw.as_deref())).await
}

async fn mobile_stream_report(
    State(state): State<StreamState>,
    method: Method,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ClientError> {
    check_report(&method)?;
    let env = mobile_env(&state, &headers).await?;
    let context = context_from_body(&headers, &body?)?;
    evalx_stream(state, env, Audience::Mobile, context, &Query::parse(raw.as_deref())).await
}

async fn mobile_ping(State(state): State<StreamState>, headers: HeaderMap) -> Result<Response, ClientError> {
    let env = mobile_env(&state, &headers).await?;
    Ok(ping_stream(state, env))
}

// ---- Streams -------------------------------------------------------------------------------------------------

/// `ping` with data `" "`: SDK event parsers drop events whose data is empty.
const PING: &[u8] = b"event: ping\ndata:  \n\n";
const HEARTBEAT: &[u8] = b":\n\n";

fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// What a client stream sends on a change.
enum Mode {
    /// `ping` only.
    Ping,
    /// `patch`/`delete` of the context's evalx entries.
    Evalx {
        resolved: Box<Resolved>,
        // What the connection was last sent for each flag: the entry as evaluated (`None` after a `delete`) and
        // the `version` it was sent with.
        sent: BTreeMap<String, (Option<Value>, u64)>,
    },
}

/// One client-side connection.
struct Connection {
    state: StreamState,
    channel: Arc<EnvChannel>,
    updates: broadcast::Receiver<Bytes>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    watching_shutdown: bool,
    mode: Mode,
    /// The stream ends here (the hub's maximum connection lifetime, with jitter), so that SDKs reconnect and
    /// spread over nodes, as server-side streams do.
    deadline: Option<tokio::time::Instant>,
}

impl Connection {
    /// The next bytes to send, or `None` when the stream ends (shutdown, fell behind, store failure).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            let first = tokio::select! {
                received = self.updates.recv() => match received {
                    Ok(frame) => frame,
                    // Lagged: the connection fell a whole channel behind; its SDK reconnects to a fresh put.
                    Err(RecvError::Lagged(_) | RecvError::Closed) => return None,
                },
                changed = self.shutdown.changed(), if self.watching_shutdown => {
                    if changed.is_err() {
                        self.watching_shutdown = false;
                    }
                    continue;
                }
                () = expire(self.deadline) => {
                    metrics::counter!("pennant_stream_lifetime_closed_total").increment(1);
                    return None;
                }
            };
            let mut heartbeat = first.as_ref() == HEARTBEAT;
            let mut changed = !heartbeat;
            // Whatever else is already waiting is covered by the same re-evaluation.
            loop {
                match self.updates.try_recv() {
                    Ok(frame) if frame.as_ref() == HEARTBEAT => heartbeat = true,
                    Ok(_) => changed = true,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => return None,
                }
            }
            if changed {
                match self.on_change().await {
                    Ok(Some(bytes)) => return Some(bytes),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "client-side stream could not re-evaluate; closing it");
                        return None;
                    }
                }
            }
            if heartbeat {
                return Some(Bytes::from_static(HEARTBEAT));
            }
        }
    }

    async fn on_change(&mut self) -> Result<Option<Bytes>, StreamError> {
        let Mode::Evalx { resolved, sent } = &mut self.mode else { return Ok(Some(Bytes::from_static(PING))) };
        let snapshot = self.channel.snapshot(&self.state.source).await?;
        let now = evalx_map(&snapshot, &resolved.context, resolved.options)?;
        let out = diff(&snapshot, sent, now);
        if !out.is_empty() {
            metrics::counter!("pennant_clientside_stream_updates_total").increment(1);
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

/// The `patch` and `delete` frames that bring a connection from `sent` to `now`, updating `sent`.
///
/// An entry's `version` must grow for SDKs to accept a patch, but a segment change can change a result without
/// changing the flag's version: such a patch goes out with the last sent version plus one (`flagVersion`, which
/// analytics events use, stays the flag's own).
fn diff(snapshot: &Snapshot, sent: &mut BTreeMap<String, (Option<Value>, u64)>, now: Map<String, Value>) -> Vec<u8> {
    let mut out = Vec::new();
    let removed: Vec<String> = sent
        .iter()
        .filter(|(k, (v, _))| v.is_some() && !now.contains_key(k.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    for key in removed {
        let last = sent.get(&key).map_or(0, |(_, v)| *v);
        let current = snapshot.data.flag(&key).map_or(0, |f| f.version);
        let version = current.max(last.saturating_add(1));
        out.extend_from_slice(&frame("delete", &json!({"key": key, "version": version})));
        sent.insert(key, (None, version));
    }
    for (key, entry) in now {
        let last = match sent.get(&key) {
            Some((Some(old), _)) if *old == entry => continue,
            Some((_, version)) => Some(*version),
            None => None,
        };
        let flag_version = entry.get("version").and_then(Value::as_u64).unwrap_or(0);
        let version = match last {
            Some(last) if last >= flag_version => last.saturating_add(1),
            _ => flag_version,
        };
        let mut patch = entry.clone();
        if let Value::Object(fields) = &mut patch {
            fields.insert("key".into(), Value::String(key.clone()));
            fields.insert("version".into(), json!(version));
        }
        out.extend_from_slice(&frame("patch", &patch));
        sent.insert(key, (Some(entry), version));
    }
    out
}

async fn expire(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn into_body(first: Bytes, connection: Connection) -> Body {
    let rest = futures_util::stream::unfold(connection, |mut c| async move {
        let chunk = c.next_chunk().await?;
        Some((Ok::<Bytes, Infallible>(chunk), c))
    });
    let first = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(first) });
    Body::from_stream(futures_util::StreamExt::chain(first, rest))
}

async fn evalx_stream(
    state: StreamState,
    env: EnvId,
    audience: Audience,
    context: Context,
    query: &Query,
) -> Result<Response, ClientError> {
    let (resolved, updates, snapshot) = resolve(&state, env, audience, context, query).await?;
    let entries = evalx_map(&snapshot, &resolved.context, resolved.options)?;
    let sent = entries
        .iter()
        .map(|(k, v)| (k.clone(), (Some(v.clone()), v.get("version").and_then(Value::as_u64).unwrap_or(0))))
        .collect();
    let put = frame("put", &Value::Object(entries));
    metrics::counter!("pennant_clientside_stream_connections_total").increment(1);
    let connection = Connection {
        channel: resolved.channel.clone(),
        shutdown: state.shutdown.clone(),
        deadline: crate::stream_deadline(&state.hub),
        state,
        updates,
        watching_shutdown: true,
        mode: Mode::Evalx { resolved: Box::new(resolved), sent },
    };
    Ok(sse_response(into_body(put, connection)))
}

fn ping_stream(state: StreamState, env: EnvId) -> Response {
    let channel = state.hub.channel(&env);
    let updates = channel.subscribe();
    metrics::counter!("pennant_clientside_stream_connections_total").increment(1);
    let connection = Connection {
        channel,
        shutdown: state.shutdown.clone(),
        deadline: crate::stream_deadline(&state.hub),
        state,
        updates,
        watching_shutdown: true,
        mode: Mode::Ping,
    };
    sse_response(into_body(Bytes::from_static(PING), connection))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some("withReasons=true&h=abc&x=1"));
        assert!(q.with_reasons);
        assert_eq!(q.hash.as_deref(), Some("abc"));
        let q = Query::parse(Some("withReasons=false"));
        assert!(!q.with_reasons && q.hash.is_none());
        assert!(!Query::parse(None).with_reasons);
    }

    #[test]
    fn base64_forms() {
        let json = br#"{"key":"a?b>"}"#;
        for engine in [
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
            base64::engine::general_purpose::STANDARD,
        ] {
            let context = context_from_base64(&engine.encode(json));
            assert!(matches!(context, Ok(c) if c.key() == "a?b>"));
        }
        assert!(matches!(context_from_base64("%%%"), Err(ClientError::BadRequest(_))));
    }
}
