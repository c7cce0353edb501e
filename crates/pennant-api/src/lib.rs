//! Pennant's management REST API under `/api/v2`: projects, environments, flags, segments, context kinds, the
//! audit changelog, members, sessions and access tokens, with an OpenAPI document generated from the handlers.
//!
//! Every handler authenticates with an API access token or a dashboard session (SDK credentials are refused),
//! checks the caller's role and project scope, and answers errors as `{"code", "message"}` with the status from
//! the one table in [`error`].

pub mod auth;
pub mod error;
pub mod extract;
pub mod insights;
pub mod patch;
pub mod routes;
pub mod state;
pub mod webhooks;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, ApiResult, ErrorCode};
pub use routes::access::hash_password;
pub use state::{ApiLimits, ApiState};
pub use webhooks::{WebhookOptions, spawn_webhook_dispatcher};

#[derive(OpenApi)]
#[openapi(
    info(title = "Pennant management API", description = "Projects, environments, flags, segments, changelog and access."),
    tags(
        (name = "projects"), (name = "environments"), (name = "flags"), (name = "segments"),
        (name = "changelog"), (name = "access"), (name = "webhooks"), (name = "insights")
    ),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

fn api_router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::projects::router())
        .merge(routes::environments::router())
        .merge(routes::flags::router())
        .merge(routes::segments::router())
        .merge(routes::changelog::router())
        .merge(routes::access::router())
        .merge(routes::webhooks::router())
        .merge(insights::router())
}

/// The OpenAPI document of `/api/v2`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api_router().split_for_parts();
    doc.servers = Some(vec![utoipa::openapi::Server::new("/api/v2")]);
    doc
}

/// The `/api/v2` router, ready to nest or serve.
pub fn router(state: ApiState) -> Router {
    let max_body = state.limits.max_body_bytes;
    let (routes, _) = api_router().split_for_parts();
    let doc = openapi();
    let api = routes
        .route("/openapi.json", axum::routing::get(move || async move { Json(doc.clone()) }))
        .fallback(|| async { ApiError::not_found("no such API endpoint").into_response() })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    Router::new().nest("/api/v2", api)
}
