//! Projects and their context kinds.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use pennant_store::{ContextKind, Page, Project, Record, Role};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, QueryParams, if_match};
use crate::patch::{PatchRequest, apply_json_patch};
use crate::routes::{CommentParam, ListParams};
use crate::state::ApiState;

pub(crate) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, patch_project, delete_project))
        .routes(routes!(list_context_kinds))
        .routes(routes!(put_context_kind))
}

#[utoipa::path(get, path = "/projects", tag = "projects", params(ListParams),
    responses((status = 200, body = Page<Record<Project>>), (status = 401, body = ErrorBody)))]
async fn list_projects(
    State(state): State<ApiState>,
    principal: Principal,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult<Json<Page<Record<Project>>>> {
    principal.require(Role::Reader)?;
    let mut page = state.store.list_projects(&params.to_query()?).await?;
    if !principal.projects.is_empty() {
        page.items.retain(|p| principal.can_see(&p.data.key));
        page.total_count = i64::try_from(page.items.len()).unwrap_or(i64::MAX);
    }
    Ok(Json(page))
}

#[utoipa::path(post, path = "/projects", tag = "projects", request_body = Project,
    responses((status = 201, body = Record<Project>), (status = 409, body = ErrorBody), (status = 400, body = ErrorBody)))]
async fn create_project(
    State(state): State<ApiState>,
    principal: Principal,
    JsonBody(project): JsonBody<Project>,
) -> ApiResult<(StatusCode, Json<Record<Project>>)> {
    principal.require(Role::Writer)?;
    if !principal.projects.is_empty() {
        return Err(ApiError::forbidden("a token limited to projects cannot create projects"));
    }
    let created = state.store.create_project(&principal.actor, project, "").await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/projects/{projectKey}", tag = "projects", params(("projectKey" = String, Path)),
    responses((status = 200, body = Record<Project>), (status = 404, body = ErrorBody)))]
async fn get_project(
    State(state): State<ApiState>,
    principal: Principal,
    Path(key): Path<String>,
) -> ApiResult<Json<Record<Project>>> {
    principal.require_project(Role::Reader, &key)?;
    Ok(Json(state.store.get_project(&key).await?))
}

#[utoipa::path(patch, path = "/projects/{projectKey}", tag = "projects", params(("projectKey" = String, Path)),
    request_body(content = Object, description = "JSON Patch array, or {\"patch\": [...], \"comment\": \"...\", \"version\": N}"),
    responses((status = 200, body = Record<Project>), (status = 409, body = ErrorBody)))]
async fn patch_project(
    State(state): State<ApiState>,
    principal: Principal,
    Path(key): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Record<Project>>> {
    principal.require_project(Role::Writer, &key)?;
    let request = PatchRequest::parse(body)?;
    let expected = request.expected_version(if_match(&headers)?)?;
    let Some(ops) = &request.ops else {
        return Err(ApiError::bad_request("projects take JSON Patch, not instructions"));
    };
    let mut failed = None;
    let result = state
        .store
        .update_project(&principal.actor, &key, expected, &request.comment, |project| {
            *project = apply_json_patch(project, ops).map_err(|e| park(&mut failed, e))?;
            Ok(())
        })
        .await;
    Ok(Json(unpark(result, failed)?))
}

#[utoipa::path(delete, path = "/projects/{projectKey}", tag = "projects", params(("projectKey" = String, Path), CommentParam),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_project(
    State(state): State<ApiState>,
    principal: Principal,
    Path(key): Path<String>,
    QueryParams(c): QueryParams<CommentParam>,
) -> ApiResult<StatusCode> {
    principal.require_project(Role::Admin, &key)?;
    state.store.delete_project(&principal.actor, &key, c.comment.as_deref().unwrap_or("")).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/projects/{projectKey}/context-kinds", tag = "projects", params(("projectKey" = String, Path)),
    responses((status = 200, body = [Record<ContextKind>])))]
async fn list_context_kinds(
    State(state): State<ApiState>,
    principal: Principal,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Record<ContextKind>>>> {
    principal.require_project(Role::Reader, &project)?;
    Ok(Json(state.store.list_context_kinds(&project).await?))
}

#[utoipa::path(put, path = "/projects/{projectKey}/context-kinds/{key}", tag = "projects",
    params(("projectKey" = String, Path), ("key" = String, Path)), request_body = ContextKind,
    responses((status = 200, body = Record<ContextKind>)))]
async fn put_context_kind(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, key)): Path<(String, String)>,
    JsonBody(kind): JsonBody<ContextKind>,
) -> ApiResult<Json<Record<ContextKind>>> {
    principal.require_project(Role::Writer, &project)?;
    if kind.key != key {
        return Err(ApiError::bad_request("the body's key must match the path"));
    }
    Ok(Json(state.store.put_context_kind(&principal.actor, &project, kind, "").await?))
}

/// Keeps an API error raised inside a store update closure (which must return a store error) so that the
/// handler can answer with it, code and all. The store error returned rolls the write back.
pub(crate) fn park(slot: &mut Option<ApiError>, e: ApiError) -> pennant_store::StoreError {
    let message = e.message.clone();
    *slot = Some(e);
    pennant_store::StoreError::Invalid { kind: "request", issues: vec![message] }
}

/// The parked API error if there is one, else the store's result.
pub(crate) fn unpark<T>(result: pennant_store::Result<T>, parked: Option<ApiError>) -> ApiResult<T> {
    match (result, parked) {
        (Err(_), Some(e)) => Err(e),
        (result, _) => Ok(result?),
    }
}
