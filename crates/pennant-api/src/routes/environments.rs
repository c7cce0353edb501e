//! Environments and SDK key rotation.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use pennant_store::{Environment, Page, Record, Role};
use serde::Deserialize;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::extract::{JsonBody, QueryParams, if_match};
use crate::patch::{PatchRequest, apply_json_patch};
use crate::routes::projects::{park, unpark};
use crate::routes::{CommentParam, ListParams};
use crate::state::ApiState;

pub(crate) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_environments, create_environment))
        .routes(routes!(get_environment, patch_environment, delete_environment))
        .routes(routes!(rotate_sdk_key))
        .routes(routes!(rotate_mobile_key))
}

/// A new environment: key and name, optionally colour, tags and secure mode. Credentials are generated.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEnvironment {
    /// Key.
    pub key: String,
    /// Name.
    pub name: String,
    /// Colour (hex without `#`).
    #[serde(default)]
    pub color: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Require secure-mode hashes from client-side SDKs.
    #[serde(default)]
    pub secure_mode: bool,
}

/// Key rotation options.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateKey {
    /// Keep the old key working this many seconds (0: stop at once).
    #[serde(default)]
    pub expiry_seconds: u64,
}

#[utoipa::path(get, path = "/projects/{projectKey}/environments", tag = "environments",
    params(("projectKey" = String, Path), ListParams), responses((status = 200, body = Page<Record<Environment>>)))]
async fn list_environments(
    State(state): State<ApiState>,
    principal: Principal,
    Path(project): Path<String>,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult<Json<Page<Record<Environment>>>> {
    principal.require_project(Role::Reader, &project)?;
    Ok(Json(state.store.list_environments(&project, &params.to_query()?).await?))
}

#[utoipa::path(post, path = "/projects/{projectKey}/environments", tag = "environments",
    params(("projectKey" = String, Path)), request_body = NewEnvironment,
    responses((status = 201, body = Record<Environment>), (status = 409, body = ErrorBody)))]
async fn create_environment(
    State(state): State<ApiState>,
    principal: Principal,
    Path(project): Path<String>,
    JsonBody(new): JsonBody<NewEnvironment>,
) -> ApiResult<(StatusCode, Json<Record<Environment>>)> {
    principal.require_project(Role::Writer, &project)?;
    let mut env: Environment = serde_json::from_value(serde_json::json!({"key": new.key, "name": new.name}))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(color) = new.color {
        env.color = color;
    }
    env.tags = new.tags;
    env.secure_mode = new.secure_mode;
    let created = state.store.create_environment(&principal.actor, &project, env, "").await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/projects/{projectKey}/environments/{envKey}", tag = "environments",
    params(("projectKey" = String, Path), ("envKey" = String, Path)),
    responses((status = 200, body = Record<Environment>), (status = 404, body = ErrorBody)))]
async fn get_environment(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
) -> ApiResult<Json<Record<Environment>>> {
    principal.require_project(Role::Reader, &project)?;
    Ok(Json(state.store.get_environment(&project, &key).await?))
}

#[utoipa::path(patch, path = "/projects/{projectKey}/environments/{envKey}", tag = "environments",
    params(("projectKey" = String, Path), ("envKey" = String, Path)), request_body = Object,
    responses((status = 200, body = Record<Environment>), (status = 409, body = ErrorBody)))]
async fn patch_environment(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Record<Environment>>> {
    principal.require_project(Role::Writer, &project)?;
    let request = PatchRequest::parse(body)?;
    let expected = request.expected_version(if_match(&headers)?)?;
    let Some(ops) = &request.ops else {
        return Err(ApiError::bad_request("environments take JSON Patch, not instructions"));
    };
    let mut failed = None;
    let result = state
        .store
        .update_environment(&principal.actor, &project, &key, expected, &request.comment, |env| {
            *env = apply_json_patch(env, ops).map_err(|e| park(&mut failed, e))?;
            Ok(())
        })
        .await;
    Ok(Json(unpark(result, failed)?))
}

#[utoipa::path(delete, path = "/projects/{projectKey}/environments/{envKey}", tag = "environments",
    params(("projectKey" = String, Path), ("envKey" = String, Path), CommentParam), responses((status = 204)))]
async fn delete_environment(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    QueryParams(c): QueryParams<CommentParam>,
) -> ApiResult<StatusCode> {
    principal.require_project(Role::Admin, &project)?;
    state.store.delete_environment(&principal.actor, &project, &key, c.comment.as_deref().unwrap_or("")).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotates a key; the body (optional) is a `RotateKey`.
async fn rotate(
    state: ApiState,
    principal: Principal,
    project: String,
    key: String,
    which: &str,
    body: &[u8],
) -> ApiResult<Json<Record<Environment>>> {
    principal.require_project(Role::Admin, &project)?;
    let options: RotateKey = if body.iter().all(u8::is_ascii_whitespace) {
        RotateKey::default()
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::new(ErrorCode::InvalidJson, e.to_string()))?
    };
    let expiry = options.expiry_seconds;
    let overlap_ms = i64::try_from(expiry.saturating_mul(1000)).unwrap_or(i64::MAX);
    Ok(Json(state.store.rotate_key(&principal.actor, &project, &key, which, overlap_ms, "").await?))
}

#[utoipa::path(post, path = "/projects/{projectKey}/environments/{envKey}/apiKey", tag = "environments",
    params(("projectKey" = String, Path), ("envKey" = String, Path)), request_body = RotateKey,
    responses((status = 200, body = Record<Environment>)))]
async fn rotate_sdk_key(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Record<Environment>>> {
    rotate(state, principal, project, key, "sdk", &body).await
}

#[utoipa::path(post, path = "/projects/{projectKey}/environments/{envKey}/mobileKey", tag = "environments",
    params(("projectKey" = String, Path), ("envKey" = String, Path)), request_body = RotateKey,
    responses((status = 200, body = Record<Environment>)))]
async fn rotate_mobile_key(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Record<Environment>>> {
    rotate(state, principal, project, key, "mobile", &body).await
}
