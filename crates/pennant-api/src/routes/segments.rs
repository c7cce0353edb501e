//! Segments: reusable sets of contexts, one set per environment.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use pennant_store::{Page, Record, Role, SegmentDoc};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, QueryParams, if_match};
use crate::patch::{PatchRequest, apply_json_patch};
use crate::routes::instructions::{apply_segment_instructions, parse_segment_instructions};
use crate::routes::projects::{park, unpark};
use crate::routes::{CommentParam, ListParams};
use crate::state::ApiState;

pub(crate) fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(list_segments, create_segment)).routes(routes!(
        get_segment,
        patch_segment,
        delete_segment
    ))
}

#[utoipa::path(get, path = "/segments/{projectKey}/{envKey}", tag = "segments",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ListParams),
    responses((status = 200, body = Page<Record<SegmentDoc>>), (status = 404, body = ErrorBody)))]
async fn list_segments(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env)): Path<(String, String)>,
    QueryParams(params): QueryParams<ListParams>,
) -> ApiResult<Json<Page<Record<SegmentDoc>>>> {
    principal.require_project(Role::Reader, &project)?;
    Ok(Json(state.store.list_segments(&project, &env, &params.to_query()?).await?))
}

#[utoipa::path(post, path = "/segments/{projectKey}/{envKey}", tag = "segments",
    params(("projectKey" = String, Path), ("envKey" = String, Path)), request_body = SegmentDoc,
    responses((status = 201, body = Record<SegmentDoc>), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_segment(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env)): Path<(String, String)>,
    JsonBody(doc): JsonBody<SegmentDoc>,
) -> ApiResult<(StatusCode, Json<Record<SegmentDoc>>)> {
    principal.require_project(Role::Writer, &project)?;
    let created = state.store.create_segment(&principal.actor, &project, &env, doc, "").await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/segments/{projectKey}/{envKey}/{segmentKey}", tag = "segments",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ("segmentKey" = String, Path)),
    responses((status = 200, body = Record<SegmentDoc>), (status = 404, body = ErrorBody)))]
async fn get_segment(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env, key)): Path<(String, String, String)>,
) -> ApiResult<Json<Record<SegmentDoc>>> {
    principal.require_project(Role::Reader, &project)?;
    Ok(Json(state.store.get_segment(&project, &env, &key).await?))
}

#[utoipa::path(patch, path = "/segments/{projectKey}/{envKey}/{segmentKey}", tag = "segments",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ("segmentKey" = String, Path)),
    request_body(content = Object, description = "JSON Patch on the segment, as an array or \
        {\"patch\": [...], \"comment\": \"...\", \"version\": N}; or semantic patch: \
        {\"comment\": \"...\", \"instructions\": [{\"kind\": \"addIncludedTargets\", \"values\": [...]}, ...]}"),
    responses((status = 200, body = Record<SegmentDoc>), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn patch_segment(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Record<SegmentDoc>>> {
    principal.require_project(Role::Writer, &project)?;
    let request = PatchRequest::parse(body)?;
    let expected = request.expected_version(if_match(&headers)?)?;
    if request.environment_key.as_ref().is_some_and(|e| *e != env) {
        return Err(ApiError::bad_request("environmentKey differs from the environment in the path"));
    }
    let mut failed = None;
    let result = if let Some(ops) = &request.ops {
        state
            .store
            .update_segment(&principal.actor, &project, &env, &key, expected, &request.comment, |doc| {
                *doc = apply_json_patch(doc, ops).map_err(|e| park(&mut failed, e))?;
                // Tombstones are the store's business, not a patch's.
                doc.segment.deleted = false;
                doc.segment.reindex();
                Ok(())
            })
            .await
    } else {
        let instructions = parse_segment_instructions(request.instructions.as_deref().unwrap_or_default())?;
        state
            .store
            .update_segment(&principal.actor, &project, &env, &key, expected, &request.comment, |doc| {
                apply_segment_instructions(doc, &instructions).map_err(|e| park(&mut failed, e))
            })
            .await
    };
    Ok(Json(unpark(result, failed)?))
}

#[utoipa::path(delete, path = "/segments/{projectKey}/{envKey}/{segmentKey}", tag = "segments",
    params(("projectKey" = String, Path), ("envKey" = String, Path), ("segmentKey" = String, Path), CommentParam),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn delete_segment(
    State(state): State<ApiState>,
    principal: Principal,
    Path((project, env, key)): Path<(String, String, String)>,
    QueryParams(c): QueryParams<CommentParam>,
) -> ApiResult<StatusCode> {
    principal.require_project(Role::Writer, &project)?;
    state.store.delete_segment(&principal.actor, &project, &env, &key, c.comment.as_deref().unwrap_or("")).await?;
    Ok(StatusCode::NO_CONTENT)
}
