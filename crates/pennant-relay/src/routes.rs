//! The relay's HTTP routes: the SDK endpoints of `pennant-stream` over the mirror, LaunchDarkly's event routes
//! (forwarded upstream), `/status` and `/health`.
//!
//! Events are authorised locally against the configured credentials (an unknown key never reaches the upstream)
//! and checked to be a JSON array (diagnostics: an object) before they are forwarded, so a bad request gets a
//! clear error from the relay itself. With no upstream (offline) events are accepted and dropped, and counted.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::forward::{BatchKey, BodyError, Outcome, decode_body, header_text};
use crate::{Relay, Shared};

/// The relay's whole router.
pub fn router(relay: &Relay) -> Router {
    let shared = relay.shared.clone();
    let limit = shared.config.events_max_body_bytes;
    let cors = pennant_events::browser_cors();
    let browser = Router::new()
        .route("/events/bulk/{env_id}", post(client_bulk))
        .route("/events/diagnostic/{env_id}", post(client_diagnostic))
        .route("/a/{file}", get(client_gif))
        .layer(cors);
    let events = Router::new()
        .route("/bulk", post(server_bulk))
        .route("/diagnostic", post(server_diagnostic))
        .route("/mobile", post(mobile_bulk))
        .route("/mobile/events", post(mobile_bulk))
        .route("/mobile/events/bulk", post(mobile_bulk))
        .route("/mobile/events/diagnostic", post(mobile_diagnostic))
        .merge(browser)
        // The limit applies again after un-gzipping.
        .layer(DefaultBodyLimit::max(limit));
    let own = events.route("/status", get(status)).route("/health", get(health)).with_state(shared);
    Router::new().merge(pennant_stream::router(relay.stream_state())).merge(own)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(serde_json::json!({"code": code, "message": message.into()}))).into_response()
}

/// A refused credential: the status, stable code and message of the error answer.
#[derive(Debug)]
struct Refused(StatusCode, &'static str, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1, self.2)
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(serde_json::json!({"ready": shared.ready(), "environments": shared.status()})).into_response()
}

/// `200` once every environment is served, `503` before.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready() {
        axum::Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        let waiting: Vec<String> = shared.status().into_iter().filter(|e| !e.has_data).map(|e| e.name).collect();
        let body = serde_json::json!({"status": "starting", "waitingFor": waiting});
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// A batch or a diagnostic event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bulk,
    Diagnostic,
}

/// `Authorization: KEY` or `api_key KEY`, checked against the environments' keys of `kind`.
fn authorize(shared: &Shared, headers: &HeaderMap, kind: &str) -> Result<String, Refused> {
    let raw = header_text(headers, header::AUTHORIZATION.as_str()).ok_or_else(|| {
        Refused(StatusCode::UNAUTHORIZED, "unauthorized", "send the key in the Authorization header".into())
    })?;
    let key = raw.trim_start_matches("api_key ").trim();
    match shared.mirror.credential(key) {
        Some(c) if c.kind == kind => Ok(raw),
        _ => Err(Refused(StatusCode::UNAUTHORIZED, "unauthorized", format!("unknown {kind} key"))),
    }
}

async fn server_bulk(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    keyed(&shared, &headers, body, "sdk", "/bulk", Kind::Bulk).await
}

async fn server_diagnostic(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    keyed(&shared, &headers, body, "sdk", "/diagnostic", Kind::Diagnostic).await
}

async fn mobile_bulk(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    keyed(&shared, &headers, body, "mobile", "/mobile/events/bulk", Kind::Bulk).await
}

async fn mobile_diagnostic(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    keyed(&shared, &headers, body, "mobile", "/mobile/events/diagnostic", Kind::Diagnostic).await
}

async fn keyed(shared: &Arc<Shared>, headers: &HeaderMap, body: Bytes, kind: &str, path: &str, what: Kind) -> Response {
    match authorize(shared, headers, kind) {
        Ok(authorization) => forward(shared, headers, body, path.to_owned(), Some(authorization), what).await,
        Err(refused) => refused.into_response(),
    }
}

/// A client-side ID in a browser route's path. Unknown IDs are 404, as LaunchDarkly's Relay answers.
fn authorize_client(shared: &Shared, env_id: &str) -> Result<(), Refused> {
    match shared.mirror.credential(env_id) {
        Some(c) if c.kind == "client" => Ok(()),
        _ => Err(Refused(StatusCode::NOT_FOUND, "not_found", "unknown client-side ID".into())),
    }
}

async fn client_bulk(
    State(shared): State<Arc<Shared>>,
    Path(env_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    client(&shared, &env_id, &headers, body, Kind::Bulk).await
}

async fn client_diagnostic(
    State(shared): State<Arc<Shared>>,
    Path(env_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    client(&shared, &env_id, &headers, body, Kind::Diagnostic).await
}

async fn client(shared: &Arc<Shared>, env_id: &str, headers: &HeaderMap, body: Bytes, what: Kind) -> Response {
    if let Err(refused) = authorize_client(shared, env_id) {
        return refused.into_response();
    }
    let path = match what {
        Kind::Bulk => format!("/events/bulk/{env_id}"),
        Kind::Diagnostic => format!("/events/diagnostic/{env_id}"),
    };
    forward(shared, headers, body, path, None, what).await
}

#[derive(Debug, Deserialize)]
struct GifQuery {
    d: Option<String>,
}

/// `GET /a/{envId}.gif?d=<base64 JSON array>`: browsers without CORS; forwarded as a batch, answered with a
/// transparent 1×1 GIF.
async fn client_gif(
    State(shared): State<Arc<Shared>>,
    Path(file): Path<String>,
    Query(q): Query<GifQuery>,
) -> Response {
    let Some(env_id) = file.strip_suffix(".gif") else {
        return error(StatusCode::NOT_FOUND, "not_found", "expected /a/{envId}.gif");
    };
    if let Err(refused) = authorize_client(&shared, env_id) {
        return refused.into_response();
    }
    let Some(encoded) = q.d else { return error(StatusCode::BAD_REQUEST, "malformed_events", "missing ?d=") };
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(&encoded));
    let Ok(json) = decoded else { return error(StatusCode::BAD_REQUEST, "malformed_events", "?d= is not base64") };
    let response =
        forward(&shared, &HeaderMap::new(), Bytes::from(json), format!("/events/bulk/{env_id}"), None, Kind::Bulk)
            .await;
    if response.status() != StatusCode::ACCEPTED {
        return response;
    }
    const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    ([(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"))], GIF).into_response()
}

/// Checks a request's body and forwards it; answers once the upstream has answered.
async fn forward(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: Bytes,
    path: String,
    authorization: Option<String>,
    what: Kind,
) -> Response {
    let limit = shared.config.events_max_body_bytes;
    let json = match decode_body(headers, body, limit) {
        Ok(json) => json,
        Err(e @ BodyError::TooLarge(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        Err(e @ BodyError::Gzip(_)) => return error(StatusCode::BAD_REQUEST, "malformed_gzip", e.to_string()),
    };
    let schema = header_text(headers, "x-launchdarkly-event-schema");
    let Some(forwarder) = &shared.forwarder else {
        // Offline: nowhere to send them. Accepted so that SDKs do not retry, and counted.
        metrics::counter!("pennant_relay_events_dropped_offline_total").increment(1);
        return StatusCode::ACCEPTED.into_response();
    };
    let outcome = match what {
        Kind::Diagnostic => {
            if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json).is_err() {
                return error(StatusCode::BAD_REQUEST, "malformed_events", "a diagnostic event is a JSON object");
            }
            forwarder.post(&path, authorization.as_deref(), schema.as_deref(), json.to_vec(), true).await
        }
        Kind::Bulk => {
            let events: Vec<&RawValue> = match serde_json::from_slice(&json) {
                Ok(events) => events,
                Err(e) => return error(StatusCode::BAD_REQUEST, "malformed_events", format!("not a JSON array: {e}")),
            };
            // A retry of a request the upstream already took (its answer was lost) is not forwarded again.
            let seen = header_text(headers, "x-launchdarkly-payload-id")
                .map(|id| (format!("{path} {}", authorization.as_deref().unwrap_or("")), id));
            if let Some(seen) = &seen
                && shared.delivered.get(seen).is_some()
            {
                return StatusCode::ACCEPTED.into_response();
            }
            let key = BatchKey { path, authorization, schema };
            let outcome = forwarder.submit(key, &events).await;
            if let (Outcome::Delivered, Some(seen)) = (outcome, seen) {
                shared.delivered.insert(seen, ());
            }
            outcome
        }
    };
    match outcome {
        Outcome::Delivered => StatusCode::ACCEPTED.into_response(),
        Outcome::Refused(status) => {
            error(status, "upstream_refused", format!("the upstream events service answered {status}"))
        }
        Outcome::Failed => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "the upstream events service cannot be reached; retry later",
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}
